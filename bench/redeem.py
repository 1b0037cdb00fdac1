"""Redeem latency against a local Nutshell mint (FakeWallet): prints p50/p99 and throughput.

    .venv/bin/python bench/redeem.py [--n 200] [--fee-ppk 0] [--amount 100]

Starts its own mint on loopback, mints N tokens from a consumer wallet, then times
``check_offline`` + ``redeem`` for each, one after another (the service serialises redeems anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paygressd.logging import setup_logging
from paygressd.payments.service import PaymentService
from tests.support.mint import ConsumerWallet, run_mint


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(n: int, fee_ppk: int, amount: int) -> None:
    with tempfile.TemporaryDirectory(prefix="paygressd-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        async with run_mint(root / "mint", input_fee_ppk=fee_ppk) as mint:
            ready = time.perf_counter() - t0
            consumer = await ConsumerWallet.open(mint.url, root / "consumer")
            tokens = [await consumer.token(amount) for _ in range(n)]
            await consumer.close()
            svc = PaymentService(root / "provider", [mint.url])
            await svc.start()
            offline: list[float] = []
            redeem: list[float] = []
            t_all = time.perf_counter()
            for raw in tokens:
                a = time.perf_counter()
                tok = svc.check_offline(raw)
                b = time.perf_counter()
                await svc.redeem(tok)
                c = time.perf_counter()
                offline.append((b - a) * 1000)
                redeem.append((c - b) * 1000)
            total = time.perf_counter() - t_all
            balance = await svc.balance()
            await svc.close()
    proofs = len(tokens[0]) // 370 if tokens else 0  # rough: a V4 proof with DLEQ is ~370 chars
    print(f"mint ready in {ready:.2f} s; {n} tokens of {amount} sat (~{proofs} proofs each), input fee {fee_ppk} ppk")
    print(f"check_offline  p50 {statistics.median(offline):7.2f} ms   p99 {pct(offline, 0.99):7.2f} ms")
    print(f"redeem (swap)  p50 {statistics.median(redeem):7.2f} ms   p99 {pct(redeem, 0.99):7.2f} ms"
          f"   max {max(redeem):7.2f} ms")
    print(f"throughput     {n / total:7.1f} redeems/s (sequential); wallet balance {balance}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--fee-ppk", type=int, default=0)
    ap.add_argument("--amount", type=int, default=100)
    a = ap.parse_args()
    setup_logging("warning")
    asyncio.run(main(a.n, a.fee_ppk, a.amount))

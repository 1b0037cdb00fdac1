"""Boot-to-SSH time of the mini and full guests through KvmBackend, with the accelerator used.

    .venv/bin/python bench/boot.py [--flavour mini|full|both] [--runs N] [--accel auto|kvm|tcg]

"ready" = wait_ready() returned (serial marker + SSH banner); "ssh" = first successful password login.
Run it alone: on a 2-core box parallel work skews TCG timings a lot.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paygressd.vm.backend import VmRequest
from paygressd.vm.kvm import KvmBackend
from tests.support.guest import kvm_section, missing_reason, ssh_run

PW = "BenchBoot4Pass7Word"


async def one(flavour: str, accel: str, root: Path) -> tuple[str, float, float]:
    b = KvmBackend(kvm_section(flavour, root, accel=accel), state_dir=root.parent)
    await b.start()
    r = b.reserve(2000 if flavour == "full" else 1000, 1024 if flavour == "full" else 512, 10)
    t0 = time.monotonic()
    try:
        await b.create(VmRequest(r, PW, "bench"))
        if not await b.wait_ready(r.vmid, 600):
            raise SystemExit(f"{flavour}: not ready after 600 s")
        ready = time.monotonic() - t0
        p = await asyncio.to_thread(ssh_run, "127.0.0.1", r.port, "root", PW, "true", deadline=120)
        if p.returncode != 0:
            raise SystemExit(f"{flavour}: ssh failed: {p.stderr.strip()}")
        return b.accel, ready, time.monotonic() - t0
    finally:
        await b.delete(r.vmid)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavour", choices=["mini", "full", "both"], default="both")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    args = ap.parse_args()
    flavours = ["mini", "full"] if args.flavour == "both" else [args.flavour]
    with tempfile.TemporaryDirectory(prefix="paygressd-bench-") as tmp:
        for fl in flavours:
            why = missing_reason(fl)
            if why:
                print(f"{fl:4}  skipped: {why}")
                continue
            for i in range(args.runs):
                accel, ready, ssh = await one(fl, args.accel, Path(tmp) / f"vm-{fl}-{i}")
                print(f"{fl:4}  run {i + 1}  accel={accel}  ready {ready:6.1f} s  first ssh login {ssh:6.1f} s",
                      flush=True)


if __name__ == "__main__":
    asyncio.run(main())

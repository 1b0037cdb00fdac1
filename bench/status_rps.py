"""Status requests through a local relay: max requests/s, p50/p99 latency at 100 req/s, idle RSS.

    .venv/bin/python bench/status_rps.py [--seconds 10] [--rate 100] [--clients 64]

The provider (NostrTransport + Inbox + a status handler that answers from the request) runs in its own
process, like the daemon; the relay (nostr-sdk LocalRelay) and the load generator share this one. Requests
are real NIP-04 kind-4 DMs from many consumer keys; each reply is matched to its request by the echoed
pod_id. The per-requester rate limit is raised for the run (it is a per-consumer guard, not a throughput cap).
Target: >= 200 status requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nostr_sdk import (  # noqa: E402
    ClientBuilder,
    Filter,
    Keys,
    Kind,
    PublicKey,
    RelayUrl,
    ReqTarget,
    Timestamp,
    nip04_decrypt,
    uniffi_set_event_loop,
)

from paygressd.nostr import events  # noqa: E402
from paygressd.wire.models import StatusRequest  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- provider process


async def serve(relay_url: str, db: str, secret_hex: str) -> None:
    from paygressd.logging import setup_logging
    from paygressd.nostr.inbox import Inbox
    from paygressd.nostr.transport import Inbound, NostrTransport
    from paygressd.store import Store
    from paygressd.wire.dispatch import Request
    from paygressd.wire.models import StatusReply, WireModel, rfc3339

    setup_logging("warning")
    keys = Keys.parse(secret_hex)
    store = Store(Path(db))
    transport = NostrTransport(keys, [relay_url], store)

    async def handler(inbound: Inbound, request: Request) -> WireModel:
        assert isinstance(request, StatusRequest)
        now = int(time.time())
        return StatusReply(pod_id=request.pod_id, status="Running", expires_at=rfc3339(now + 600),
                           time_remaining_seconds=600, cpu_millicores=1000, memory_mb=1024,
                           ssh_host="127.0.0.1", ssh_port=31000, ssh_username="root")

    inbox = Inbox(transport, handler, max_concurrent=32, request_max_age=120, rate_limit_requests=1_000_000,
                  rate_limit_window=60)
    await transport.start()
    print("ready", flush=True)
    await inbox.run()


# ---------------------------------------------------------------- load generator


class Load:
    def __init__(self, relay_url: str, provider_hex: str, clients: int) -> None:
        self.relay_url = relay_url
        self.provider_hex = provider_hex
        self.keys = [Keys.generate() for _ in range(clients)]
        self.by_hex = {str(k.public_key().to_hex()): k for k in self.keys}
        self.pending: dict[str, tuple[float, asyncio.Future[float]]] = {}
        self.client: Any = None
        self.seq = 0
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.client = ClientBuilder().build()
        await self.client.add_relay(RelayUrl.parse(self.relay_url))
        await self.client.connect(timedelta(seconds=5))
        stream = self.client.notifications()
        flt = (Filter().kinds([Kind(4)]).author(PublicKey.parse(self.provider_hex))
               .pubkeys([k.public_key() for k in self.keys]).since(Timestamp.from_secs(int(time.time()) - 5)))
        await self.client.subscribe(ReqTarget.auto([flt]))
        self.reader = asyncio.create_task(self._read(stream))

    async def _read(self, stream: Any) -> None:
        while (n := await stream.next()) is not None:
            if not n.is_new_event():
                continue
            ev = n.event
            to = next((t.to_vec()[1] for t in ev.tags() if t.to_vec()[0] == "p"), None)
            key = self.by_hex.get(to) if to else None
            if key is None:
                continue
            body = json.loads(nip04_decrypt(key.secret_key(), ev.author(), ev.content()))
            entry = self.pending.pop(body.get("pod_id", ""), None)
            if entry and not entry[1].done():
                entry[1].set_result(time.monotonic() - entry[0])

    async def one(self, wait: float = 30.0) -> float | None:
        self.seq += 1
        pod_id = f"bench-{self.seq}"
        key = self.keys[self.seq % len(self.keys)]
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pending[pod_id] = (time.monotonic(), fut)
        event = events.nip04_dm_event(key, self.provider_hex, StatusRequest(pod_id=pod_id).to_json())
        await self.client.send_event(event)
        try:
            return await asyncio.wait_for(fut, wait)
        except TimeoutError:
            self.pending.pop(pod_id, None)
            return None


async def closed_loop(load: Load, seconds: float, workers: int) -> tuple[int, float]:
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            if await load.one() is not None:
                done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done, time.monotonic() - start


async def open_loop(load: Load, seconds: float, rate: float) -> tuple[list[float], int]:
    tasks = []
    start = time.monotonic()
    n = int(seconds * rate)
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(load.one()))
    results = await asyncio.gather(*tasks)
    lat = [r for r in results if r is not None]
    return lat, n - len(lat)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> None:
    from tests.support.relay import TestRelay

    uniffi_set_event_loop(asyncio.get_running_loop())
    relay = TestRelay()
    await relay.start()
    provider = Keys.generate()
    provider_hex = str(provider.public_key().to_hex())
    tmp = tempfile.mkdtemp(prefix="paygressd-bench-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", relay.url, os.path.join(tmp, "db.sqlite3"),
        provider.secret_key().to_hex(), stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", line
        await asyncio.sleep(2)
        idle_rss = rss_mb(proc.pid)
        load = Load(relay.url, provider_hex, args.clients)
        await load.start()
        # Warm-up, then saturation with many concurrent consumers.
        await closed_loop(load, 2, 16)
        done, elapsed = await closed_loop(load, args.seconds, args.clients)
        rps = done / elapsed
        latencies, lost = await open_loop(load, args.seconds, args.rate)
        busy_rss = rss_mb(proc.pid)
        print(f"status throughput: {rps:.0f} requests/s ({done} in {elapsed:.1f}s, {args.clients} concurrent "
              f"consumers; target >= 200/s)")
        print(f"latency at {args.rate:.0f}/s for {args.seconds:.0f}s: p50 {pct(latencies, 50) * 1000:.1f} ms, "
              f"p99 {pct(latencies, 99) * 1000:.1f} ms, mean {statistics.mean(latencies) * 1000:.1f} ms, "
              f"unanswered {lost}")
        print(f"provider RSS: idle {idle_rss:.1f} MB, after load {busy_rss:.1f} MB")
        await load.client.shutdown()
    finally:
        proc.terminate()
        await proc.wait()
        await relay.stop()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        asyncio.run(serve(sys.argv[2], sys.argv[3], sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--clients", type=int, default=64)
    asyncio.run(main(parser.parse_args()))

"""Payment-to-SSH latency and the daemon's own spawn overhead, sequential and 5 at once, with real parts.

    .venv/bin/python bench/spawn.py [--n 5] [--concurrent 5] [--accel tcg|kvm|auto] [--json]

Starts a LocalRelay, a Nutshell mint (FakeWallet, fee 0) and ``paygressd run`` as a subprocess with the mini
guest, all on loopback. Each spawn is a real NIP-04 request carrying a real token, answered with access details;
the consumer then logs in with sshpass + ssh and runs one command.

- payment → SSH: consumer starts sending the spawn DM → first successful SSH command in the VM (this host's
  clock); "reply" is the same start → access details received (the daemon replies once the guest is ready).
- daemon overhead, from the daemon's JSON log (<work>/daemon.log, ``timestamp`` field): ``spawn received``
  (handler start, t0), ``spawn paid`` (after the swap; carries ``redeem_ms``), ``vm started`` (t2, after
  overlay + seed ISO + qemu launch; carries ``seconds`` spent in backend.create).
  "incl. mint" = t2 − t0; "excl. mint" = t2 − t0 − redeem_ms (target p50 < 300 ms).
- sequential spawns wait until the previous VM's lease ran out and it was removed, so each starts on a quiet
  host; the concurrent phase sends all requests at once from separate consumers.

Everything (VMs, daemon, mint, relay, temp dir) is removed at the end, also on Ctrl-C. Run it alone: on a
2-core box parallel work skews TCG timings a lot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nostr_sdk import Keys

from paygressd.consumer import Consumer
from paygressd.devkit.daemon import read_json_log
from paygressd.logging import setup_logging
from paygressd.vm.kvm import KvmBackend
from paygressd.wire.models import AccessDetails
from tests.support.daemon import DaemonConfig, DaemonProcess, TierSpec
from tests.support.guest import kvm_section, missing_reason, ssh_run
from tests.support.mint import ConsumerWallet, run_mint
from tests.support.relay import TestRelay

PW = "BenchSpawn4Pass7Word"
TIER = "bench"
RATE_MSATS = 1000  # 1 sat per second of lease


@dataclass
class Sample:
    vmid: int
    port: int
    reply_s: float  # DM send start → access details received
    ssh_s: float  # DM send start → first successful SSH command
    relay_in_ms: float = float("nan")  # DM send start → daemon handler start (relay + inbox)
    incl_mint_ms: float = float("nan")  # spawn received → vm started
    redeem_ms: float = float("nan")
    excl_mint_ms: float = float("nan")
    create_ms: float = float("nan")  # backend.create: overlay + seed ISO + qemu launch
    sent_at: float = 0.0  # wall clock, to line up with the daemon log
    ssh_at: float = 0.0  # monotonic


def pct(values: list[float], q: float) -> float:
    vals = sorted(v for v in values if v == v)
    if not vals:
        return float("nan")
    return vals[min(len(vals) - 1, round(q * (len(vals) - 1)))]


def _ts(value: object) -> float:
    return datetime.fromisoformat(str(value)).timestamp()


def attach_daemon_times(samples: list[Sample], lines: list[dict[str, Any]]) -> None:
    """Fill the daemon-side figures of each sample from the log lines of its phase (vmids are unique there)."""
    received = {e["event_id"]: _ts(e["timestamp"]) for e in lines if e.get("event") == "spawn received"}
    for s in samples:
        paid = next((e for e in lines if e.get("event") == "spawn paid" and e.get("vmid") == s.vmid), None)
        started = next((e for e in lines if e.get("event") == "vm started" and e.get("vmid") == s.vmid), None)
        if paid is None or started is None or paid.get("event_id") not in received:
            continue
        t0 = received[paid["event_id"]]
        t2 = _ts(started["timestamp"])
        s.relay_in_ms = (t0 - s.sent_at) * 1000
        s.incl_mint_ms = (t2 - t0) * 1000
        s.redeem_ms = float(paid.get("redeem_ms", float("nan")))
        s.excl_mint_ms = s.incl_mint_ms - s.redeem_ms
        s.create_ms = float(started.get("seconds", float("nan"))) * 1000


async def spawn_once(consumer: Consumer, provider: str, token: str) -> Sample:
    sent_at = time.time()
    m0 = time.monotonic()
    reply = await consumer.spawn(provider, token, tier=TIER, ssh_password=PW, lookback=0, timeout=180)
    m_reply = time.monotonic()
    if not isinstance(reply, AccessDetails):
        raise RuntimeError(f"spawn failed: {reply!r}")
    proc = await asyncio.to_thread(ssh_run, "127.0.0.1", reply.node_port, "root", PW, "uname -r", deadline=120)
    m_ssh = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"ssh into {reply.pod_npub} failed (rc {proc.returncode}): {proc.stderr.strip()}")
    return Sample(vmid=int(reply.pod_npub.removeprefix("container-")), port=reply.node_port,
                  reply_s=m_reply - m0, ssh_s=m_ssh - m0, sent_at=sent_at, ssh_at=m_ssh)


def _any_vm(vm_root: Path) -> bool:
    return vm_root.exists() and any(p.is_dir() for p in vm_root.iterdir())


async def wait_no_vms(vm_root: Path, within: float) -> None:
    """Until the daemon has expired and removed every VM (leases are short in the sequential phase)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not _any_vm(vm_root):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"VMs still present in {vm_root} after {within:.0f} s")


def summarize(samples: list[Sample]) -> dict[str, Any]:
    def stat(attr: str) -> dict[str, float]:
        vals = [getattr(s, attr) for s in samples]
        return {"p50": pct(vals, 0.5), "p99": pct(vals, 0.99), "max": pct(vals, 1.0)}

    return {k: stat(k) for k in ("ssh_s", "reply_s", "relay_in_ms", "incl_mint_ms", "redeem_ms", "excl_mint_ms",
                                 "create_ms")}


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    relay = TestRelay()
    await relay.start()
    daemon: DaemonProcess | None = None
    consumers: list[Consumer] = []
    wallet: ConsumerWallet | None = None
    vm_root = work / "provider" / "state" / "vm"
    try:
        async with run_mint(work / "mint", input_fee_ppk=0) as mint:
            slots = max(args.n, args.concurrent) + 2
            # 250 millicores so 5+ VMs fit the CPU capacity check on a 2-core host (qemu still gets 1 vCPU).
            cfg = DaemonConfig(
                work=work / "provider", relays=[relay.url], mints=[mint.url],
                tiers=[TierSpec(id=TIER, name="Bench", description="mini guest, 512 MB", cpu_millicores=250,
                                memory_mb=512, rate_msats_per_sec=RATE_MSATS)],
                minimum_duration_seconds=10, ssh_ready_timeout_seconds=100,
                vmid_range=(2000, 2000 + slots - 1), accel=args.accel,
            )
            daemon = DaemonProcess(cfg.write())
            await daemon.start()
            listening = await daemon.wait_log("paygressd listening", 5)
            accel = str(listening.get("accel"))
            provider = cfg.pubkey_hex
            wallet = await ConsumerWallet.open(mint.url, work / "consumer-wallet")
            consumers = [Consumer(Keys.generate(), [relay.url]) for _ in range(max(1, args.concurrent))]
            for c in consumers:
                await c.start()

            # Warm-up (not counted): first imports, wallet keysets and page cache in the daemon.
            warm = await spawn_once(consumers[0], provider, await wallet.token(args.seq_lease))
            if not args.json:
                print(f"warm-up spawn: ssh after {warm.ssh_s:.1f} s (not counted)", file=sys.stderr, flush=True)

            sequential: list[Sample] = []
            for i in range(args.n):
                await wait_no_vms(vm_root, args.seq_lease + 60)
                token = await wallet.token(args.seq_lease)
                offset = daemon.log_path.stat().st_size
                s = await spawn_once(consumers[0], provider, token)
                await asyncio.sleep(0.3)  # the "vm started" line precedes the reply; let the file settle anyway
                attach_daemon_times([s], read_json_log(daemon.log_path, offset))
                sequential.append(s)
                if not args.json:
                    print(f"sequential {i + 1}/{args.n}: ssh {s.ssh_s:.1f} s, overhead excl. mint "
                          f"{s.excl_mint_ms:.0f} ms", file=sys.stderr, flush=True)

            concurrent: list[Sample] = []
            wall = float("nan")
            if args.concurrent > 0:
                await wait_no_vms(vm_root, args.seq_lease + 60)
                tokens = [await wallet.token(args.conc_lease) for _ in range(args.concurrent)]
                offset = daemon.log_path.stat().st_size
                m0 = time.monotonic()
                concurrent = list(await asyncio.gather(
                    *(spawn_once(c, provider, t) for c, t in zip(consumers, tokens, strict=True))))
                wall = max(s.ssh_at for s in concurrent) - m0
                await asyncio.sleep(0.3)
                attach_daemon_times(concurrent, read_json_log(daemon.log_path, offset))
                if not args.json:
                    print(f"concurrent x{args.concurrent}: all reachable by SSH after {wall:.1f} s",
                          file=sys.stderr, flush=True)
            return {
                "accel": accel,
                "n_sequential": args.n,
                "n_concurrent": args.concurrent,
                "sequential": summarize(sequential) if sequential else None,
                "concurrent": summarize(concurrent) if concurrent else None,
                "concurrent_wall_s": wall,
                "samples": {"sequential": [asdict(s) for s in sequential],
                            "concurrent": [asdict(s) for s in concurrent]},
            }
    finally:
        for c in consumers:
            await c.close()
        if wallet is not None:
            await wallet.close()
        if daemon is not None and daemon.proc is not None:
            try:
                await daemon.stop(timeout=60)
            except Exception:
                daemon.kill()
        # The daemon leaves paid VMs running on purpose; nothing of ours may outlive the benchmark.
        await KvmBackend(kvm_section("mini", vm_root)).reconcile([])
        await relay.stop()


def print_table(r: dict[str, Any]) -> None:
    def row(label: str, st: dict[str, float], unit: str, scale: float = 1.0, fmt: str = ".0f") -> str:
        return (f"  {label:<44} p50 {st['p50'] * scale:{fmt}} {unit:<3} p99/max {st['p99'] * scale:{fmt}} / "
                f"{st['max'] * scale:{fmt}} {unit}")

    print(f"spawn benchmark: mini guest, 512 MB, accel={r['accel']}, mint FakeWallet fee 0, LocalRelay, loopback")
    for phase, n in (("sequential", r["n_sequential"]), ("concurrent", r["n_concurrent"])):
        st = r[phase]
        if st is None:
            continue
        title = f"{n} sequential spawns (idle host each)" if phase == "sequential" else f"{n} spawns sent at once"
        print(title)
        print(row("payment DM sent -> first SSH command", st["ssh_s"], "s", fmt=".1f"))
        print(row("payment DM sent -> access details reply", st["reply_s"], "s", fmt=".1f"))
        print(row("DM sent -> daemon handler (relay, inbox)", st["relay_in_ms"], "ms"))
        print(row("daemon: received -> qemu started, incl. mint", st["incl_mint_ms"], "ms"))
        print(row("  of which mint swap (redeem)", st["redeem_ms"], "ms"))
        print(row("  of which backend.create (disk, ISO, qemu)", st["create_ms"], "ms"))
        print(row("daemon: received -> qemu started, excl. mint", st["excl_mint_ms"], "ms"))
    if r["concurrent"] is not None and r["sequential"] is not None:
        seq = r["sequential"]["ssh_s"]["p50"]
        print(f"  wall time until all {r['n_concurrent']} reachable by SSH: {r['concurrent_wall_s']:.1f} s "
              f"(vs {r['n_concurrent']} x sequential p50 = {r['n_concurrent'] * seq:.1f} s if serialized)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5, help="sequential spawns (default 5)")
    ap.add_argument("--concurrent", type=int, default=5, help="spawns sent at once (default 5; 0 = skip)")
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="tcg")
    ap.add_argument("--seq-lease", type=int, default=25, help="seconds paid per sequential spawn (default 25)")
    ap.add_argument("--conc-lease", type=int, default=180, help="seconds paid per concurrent spawn (default 180)")
    ap.add_argument("--json", action="store_true", help="print the figures (and every sample) as JSON")
    args = ap.parse_args()
    if args.seq_lease < 10 or args.conc_lease < 10:
        ap.error("leases must be >= 10 s (the configured minimum)")
    why = missing_reason("mini")
    if why is not None:
        print(f"skipped: {why}", file=sys.stderr)
        return 2
    setup_logging("error")  # the final clean-up logs what it kills; keep stdout for the figures
    work = Path(tempfile.mkdtemp(prefix="paygressd-bench-spawn-"))
    try:
        result = asyncio.run(run(args, work))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

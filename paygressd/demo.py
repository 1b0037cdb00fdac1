"""``paygressd demo``: one whole rental on this machine, with real parts on loopback, narrated step by step.

It starts an in-process nostr-sdk LocalRelay, a Nutshell mint (FakeWallet, fee 0), paygressd itself as a
subprocess (mini guest, accel auto) and a consumer that speaks NIP-04 exactly like paygress-cli 0.1.9; then the
consumer lists the offer, pays, spawns, logs in over SSH, tops up, checks status and lets the lease run out.
Everything it started is stopped and removed again, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO, TypeVar

from nostr_sdk import Keys

from paygressd.consumer import Consumer, ConsumerError, ProviderListing, precheck_spawn, random_password
from paygressd.devkit.daemon import DaemonConfig, DaemonProcess, TierSpec
from paygressd.devkit.guest import (
    ENV_GUEST_DIR,
    ImageBuildError,
    build_images_streaming,
    guest_dir,
    images_complete,
    images_present,
    kvm_section,
    ssh_run_async,
    tools_missing,
)
from paygressd.devkit.mint import ConsumerWallet, MintProcess
from paygressd.devkit.ports import port_free
from paygressd.devkit.relay import DevRelay
from paygressd.logging import setup_logging
from paygressd.vm import host
from paygressd.vm.kvm import KvmBackend
from paygressd.wire.models import AccessDetails, ErrorReply, StatusReply, TopUpReply

# A short lease so the whole story fits in about 1.5 minutes: 1 sat/s, 30 s minimum, 45 s bought, 10 s more.
RATE_MSATS_PER_SEC = 1000
MINIMUM_SECONDS = 30
SPAWN_SATS = 45
TOPUP_SATS = 10
TIER = "basic"
SSH_USER = "demo"
TICK_SECONDS = 10.0  # progress line interval when stdout is not a terminal


class DemoError(Exception):
    """A step failed; str() is the user-facing explanation."""


M = TypeVar("M", AccessDetails, TopUpReply, StatusReply)


def _expect(reply: object, model: type[M], what: str, within: int) -> M:
    """The consumer's reply as ``model``, or a DemoError that says what came back instead."""
    if reply is None:
        raise DemoError(f"no reply to the {what} request within {within} s")
    if isinstance(reply, ErrorReply):
        raise DemoError(f"{what} refused: {reply.error_type}: {reply.message}")
    if not isinstance(reply, model):
        raise DemoError(f"unexpected {what} reply: {reply!r}")
    return reply


@dataclass(frozen=True)
class DemoOptions:
    images: Path | None = None
    keep: bool = False


def default_images(explicit: str | None) -> tuple[Path, bool]:
    """The guest image cache and whether the user chose it (--images, then $PAYGRESSD_GUEST_DIR)."""
    if explicit:
        return Path(explicit).expanduser(), True
    if os.environ.get(ENV_GUEST_DIR):
        return guest_dir(), True
    return guest_dir(), False


# ---------------------------------------------------------------- output


class Printer:
    """Timed step lines; a ticking status line on a terminal, a periodic one elsewhere."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.tty = out.isatty()
        self._ticker_shown = False

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _clear_ticker(self) -> None:
        if self._ticker_shown:
            self.out.write("\r\x1b[K")
            self._ticker_shown = False

    def step(self, name: str, text: str) -> None:
        self._clear_ticker()
        self.out.write(f"[{self.elapsed():5.1f}s] {name}: {text}\n")
        self.out.flush()

    def detail(self, text: str) -> None:
        self._clear_ticker()
        self.out.write(f"          {text}\n")
        self.out.flush()

    def tick(self, name: str, text: str) -> None:
        if self.tty:
            self.out.write(f"\r\x1b[K[{self.elapsed():5.1f}s] {name}: {text}")
            self._ticker_shown = True
        else:
            self.out.write(f"[{self.elapsed():5.1f}s] {name}: {text}\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self._clear_ticker()
        self.out.flush()
        print(f"paygressd demo: {text}", file=sys.stderr, flush=True)

    @contextlib.asynccontextmanager
    async def ticking(self, name: str, status: Callable[[float], str]) -> AsyncIterator[None]:
        """While the body runs, show ``status(seconds_waited)``: every 0.5 s on a terminal, else every 10 s."""
        started = time.monotonic()

        async def loop() -> None:
            interval = 0.5 if self.tty else TICK_SECONDS
            while True:
                await asyncio.sleep(interval)
                self.tick(name, status(time.monotonic() - started))

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._clear_ticker()


# ---------------------------------------------------------------- the daemon's log, for progress lines

# Daemon log events worth showing while the consumer waits for a reply, as (step, text) makers.
SPAWN_STAGES: Mapping[str, Callable[[dict[str, object]], str]] = {
    "spawn received": lambda e: "provider received the request",
    "token redeemed": lambda e: f"provider redeemed the token at the mint ({e.get('amount')} {e.get('unit')})",
    "qemu_started": lambda e: f"qemu started (vm {e.get('vmid')}, accel {e.get('accel')}); guest booting",
    "spawn done": lambda e: "guest booted and SSH is up" if e.get("ready") else "guest not ready in time; replying",
}


class LogFollower:
    """Prints selected daemon log events once each, as they appear."""

    def __init__(self, daemon: DaemonProcess, printer: Printer) -> None:
        self.daemon = daemon
        self.printer = printer
        self.seen = 0
        self.last: str | None = None

    def skip_past(self) -> None:
        self.seen = len(self.daemon.events())

    def poll(self, step: str, stages: Mapping[str, Callable[[dict[str, object]], str]]) -> None:
        events = self.daemon.events()
        for e in events[self.seen:]:
            fmt = stages.get(str(e.get("event")))
            if fmt is not None:
                self.last = fmt(e)
                self.printer.step(step, self.last)
        self.seen = len(events)

    @contextlib.asynccontextmanager
    async def following(self, step: str, stages: Mapping[str, Callable[[dict[str, object]], str]]
                        ) -> AsyncIterator[None]:
        self.skip_past()

        async def loop() -> None:
            while True:
                await asyncio.sleep(0.3)
                self.poll(step, stages)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.poll(step, stages)


# ---------------------------------------------------------------- the demo


def _mentions(pid: int, work: Path) -> bool:
    """The process runs from, or names a file in, the demo's work dir (mint, daemon, qemu, accel probe)."""
    proc = Path(f"/proc/{pid}")
    try:
        if str(work).encode() in (proc / "cmdline").read_bytes():
            return True
        return os.readlink(proc / "cwd").startswith(str(work))
    except OSError:
        return False


def kill_strays(work: Path) -> list[int]:
    """SIGKILL every process still tied to the work dir: the last resort after the orderly stops."""
    killed: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            # Checked through the pidfd's pinned process, so a recycled pid is never hit.
            if _mentions(pid, work):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed.append(pid)
        except OSError:
            pass
        finally:
            os.close(fd)
    return killed


def _ts(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def _clock(rfc3339: str) -> str:
    return datetime.fromisoformat(rfc3339).astimezone().strftime("%H:%M:%S")


class Demo:
    def __init__(self, opts: DemoOptions, printer: Printer) -> None:
        self.opts = opts
        self.p = printer
        self.images, self.images_explicit = (opts.images, True) if opts.images else default_images(None)
        self.tmp: Path | None = None
        self.relay: DevRelay | None = None
        self.mint: MintProcess | None = None
        self.config: DaemonConfig | None = None
        self.daemon: DaemonProcess | None = None
        self.wallet: ConsumerWallet | None = None
        self.consumer: Consumer | None = None
        self.cleaning = False
        self.daemon_listening = False

    @property
    def vm_root(self) -> Path | None:
        return None if self.config is None else self.config.work / "state" / "vm"

    # ------------------------------------------------------------ steps

    async def run(self) -> None:
        why = tools_missing()
        if why is not None:
            raise DemoError(f"{why}; run deploy/setup-dev.sh (as root) first")
        await self.ensure_images()
        self.tmp = Path(tempfile.mkdtemp(prefix="paygressd-demo-"))
        self.p.step("setup", f"work dir {self.tmp}")
        await self.start_parts()
        listing = await self.list_offer()
        access, password = await self.spawn(listing)
        await self.login(access, password)
        expires = await self.topup(access)
        await self.status(access)
        await self.expire(access, expires)

    async def ensure_images(self) -> None:
        d = self.images
        if images_complete("mini", d) or (self.images_explicit and images_present("mini", d)):
            self.p.step("images", f"mini guest images found in {d} (cached)")
            return
        self.p.step("images", f"building the mini guest images in {d} (first run only; a few minutes)")
        lines = 0
        last = ""

        def on_line(line: str) -> None:
            nonlocal lines, last
            lines += 1
            # The builder's own step lines look like "[12:34:56] what"; everything else is tool chatter.
            if (line.startswith("[") and "] " in line[:12]) or line.startswith("cached:"):
                self.p.step("images", line.split("] ", 1)[-1])
            elif line.strip():
                last = line.strip()

        def building(s: float) -> str:
            return f"building… {s:.0f}s, {lines} lines of builder output" + (f" (last: {last[:60]})" if last else "")

        try:
            async with self.p.ticking("images", building):
                await build_images_streaming("mini", d, on_line)
        except ImageBuildError as exc:
            raise DemoError(f"building the guest images failed: {exc}") from exc
        if not images_present("mini", d):
            raise DemoError(f"the image builder finished but the mini images are not in {d}")
        self.p.step("images", "built and cached for next time")

    async def start_parts(self) -> None:
        assert self.tmp is not None
        self.relay = DevRelay()
        await self.relay.start()
        self.p.step("relay", f"nostr-sdk LocalRelay listening on {self.relay.url} (in-process)")

        self.mint = MintProcess(self.tmp / "mint", input_fee_ppk=0, new_session=True)
        try:
            await self.mint.start()
        except RuntimeError as exc:
            raise DemoError(f"the Nutshell mint did not start: {exc}") from exc
        self.p.step("mint", f"Nutshell mint (FakeWallet Lightning, fee 0) at {self.mint.url}")

        self.config = DaemonConfig(
            work=self.tmp / "provider", relays=[self.relay.url], mints=[self.mint.url], name="paygressd-demo",
            images=self.images, accel="auto", minimum_duration_seconds=MINIMUM_SECONDS,
            heartbeat_interval_seconds=5, tiers=[TierSpec(id=TIER, rate_msats_per_sec=RATE_MSATS_PER_SEC)],
        )
        path = self.config.write()
        self.daemon = DaemonProcess(path, new_session=True)
        self.daemon.launch()
        try:
            async with self.p.ticking("paygressd", lambda s: f"starting (probing the accelerator)… {s:.0f}s"):
                ready = await self.daemon.wait_log("paygressd listening", 90)
            self.daemon_listening = True
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError(f"paygressd did not start: {str(exc).splitlines()[0]}") from exc
        backend = next((e for e in self.daemon.events() if e.get("event") == "kvm_backend_started"), {})
        self.p.step("paygressd", f"running as pid {self.daemon.proc.pid if self.daemon.proc else '?'}, "
                                 f"provider {self.config.pubkey_hex[:16]}…, config {path}")
        self.p.step("paygressd", f"accel = {ready.get('accel')} ({backend.get('accel_reason', 'no reason logged')})")

        self.wallet = await ConsumerWallet.open(self.mint.url, self.tmp / "consumer-wallet")
        keys = Keys.generate()
        self.consumer = Consumer(keys, [self.relay.url])
        await self.consumer.start()
        self.p.step("consumer", f"consumer {keys.public_key().to_bech32()[:20]}… with its own Nutshell wallet"
                                " (NIP-04, like paygress-cli 0.1.9)")

    async def list_offer(self) -> ProviderListing:
        assert self.consumer is not None and self.config is not None
        me = self.config.pubkey_hex
        deadline = time.monotonic() + 30
        listing: ProviderListing | None = None
        async with self.p.ticking("offer", lambda s: f"waiting for the offer and a heartbeat… {s:.0f}s"):
            while time.monotonic() < deadline:
                found = [x for x in await self.consumer.list_offers() if x.provider_hex == me]
                listing = found[0] if found else None
                if listing is not None and listing.online:
                    break
                await asyncio.sleep(1.0)
        if listing is None or not listing.online:
            raise DemoError("the provider's offer (kind 38383) with a fresh heartbeat did not show up within 30 s")
        o = listing.offer
        self.p.step("offer", f"listed: {o.hostname} ({listing.provider_hex[:16]}…), "
                             f"{'online' if listing.online else 'offline'}, isolation {o.isolation_level}")
        for spec in o.specs:
            self.p.detail(f"tier {spec.id}: {spec.description}; {spec.cpu_millicores} mCPU, {spec.memory_mb} MB;"
                          f" price {spec.rate_msats_per_sec} msat/s ({spec.rate_msats_per_sec * 60 / 1000:g} sat/min)")
        self.p.detail(f"accepted mints: {', '.join(o.whitelisted_mints)}")
        return listing

    async def spawn(self, listing: ProviderListing) -> tuple[AccessDetails, str]:
        assert self.consumer is not None and self.wallet is not None and self.mint is not None
        assert self.daemon is not None
        try:
            precheck_spawn(listing, TIER, self.mint.url)
        except ConsumerError as exc:
            raise DemoError(f"spawn refused before paying: {exc}") from exc
        token = await self.wallet.token(SPAWN_SATS)
        self.p.step("pay", f"minted {SPAWN_SATS} sat at the demo mint (FakeWallet settles the invoice):"
                           f" token {token[:12]}… ({len(token)} chars)")
        password = random_password()
        self.p.step("spawn", f"asking for tier {TIER!r} as user {SSH_USER!r} with a password we chose"
                             f" ({SPAWN_SATS} sat = {SPAWN_SATS * 1000 // RATE_MSATS_PER_SEC} s)")
        follower = LogFollower(self.daemon, self.p)

        def waiting(s: float) -> str:
            return f"waiting for the reply… {s:.0f}s" + (f" ({follower.last})" if follower.last else "")

        async with follower.following("spawn", SPAWN_STAGES), self.p.ticking("spawn", waiting):
            reply = await self.consumer.spawn(listing.provider_hex, token, tier=TIER, ssh_user=SSH_USER,
                                              ssh_password=password, lookback=0)
        reply = _expect(reply, AccessDetails, "spawn", 120)
        self.p.step("spawn", f"access details received ({reply.pod_npub}, port {reply.node_port}),"
                             f" lease until {_clock(reply.expires_at)}")
        self.p.detail(f"ssh -p {reply.node_port} root@{reply.host_address or '127.0.0.1'}   (password {password})")
        return reply, password

    async def login(self, access: AccessDetails, password: str) -> None:
        host_addr = access.host_address or "127.0.0.1"
        async with self.p.ticking("ssh", lambda s: f"logging in… {s:.0f}s"):
            proc = await ssh_run_async(host_addr, access.node_port, "root", password, "uname -a", deadline=60)
        if proc.returncode != 0:
            raise DemoError(f"ssh login failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
        self.p.step("ssh", "logged in as root with the chosen password; `uname -a` in the VM says:")
        for line in proc.stdout.strip().splitlines():
            self.p.detail(f"| {line}")

    async def topup(self, access: AccessDetails) -> str:
        assert self.consumer is not None and self.wallet is not None and self.config is not None
        token = await self.wallet.token(TOPUP_SATS)
        reply = await self.consumer.topup(self.config.pubkey_hex, access.pod_npub, token, lookback=0)
        reply = _expect(reply, TopUpReply, "top-up", 60)
        self.p.step("topup", f"paid {TOPUP_SATS} sat more: {reply.message}; lease now until"
                             f" {_clock(reply.new_expires_at)}")
        return reply.new_expires_at

    async def status(self, access: AccessDetails) -> None:
        assert self.consumer is not None and self.config is not None
        reply = _expect(await self.consumer.status(self.config.pubkey_hex, access.pod_npub, lookback=0),
                        StatusReply, "status", 30)
        self.p.step("status", f"{reply.status}, {reply.time_remaining_seconds} s left, ssh port {reply.ssh_port},"
                              f" {reply.cpu_millicores} mCPU / {reply.memory_mb} MB")

    async def expire(self, access: AccessDetails, expires_at: str) -> None:
        assert self.consumer is not None and self.config is not None and self.vm_root is not None
        end = _ts(expires_at)
        vmid = int(access.pod_npub.removeprefix("container-"))
        vm_root = self.vm_root

        def gone() -> bool:
            return (vmid not in host.scan_qemus(vm_root) and not (vm_root / str(vmid)).exists()
                    and port_free(access.node_port))

        self.p.step("expire", f"letting the lease run out at {_clock(expires_at)}")
        async with self.p.ticking("expire", lambda s: f"lease ends in {max(0.0, end - time.time()):.0f}s"
                                  if time.time() < end else "lease over; waiting for the provider to stop the VM"):
            while time.time() < end + 30:
                if time.time() >= end and gone():
                    break
                await asyncio.sleep(0.5)
        if not gone():
            raise DemoError(f"the VM {access.pod_npub} was still there 30 s after its lease ended")
        self.p.step("expired", f"{access.pod_npub} is gone: qemu stopped, its disk removed, port"
                               f" {access.node_port} closed ({time.time() - end:.1f}s after the lease ended)")
        reply = await self.consumer.status(self.config.pubkey_hex, access.pod_npub, lookback=0)
        if not isinstance(reply, StatusReply) or reply.status != "Expired":
            raise DemoError(f"status after expiry is not 'Expired': {reply!r}")
        self.p.step("expired", f"status says {reply.status}, {reply.time_remaining_seconds} s left")

    # ------------------------------------------------------------ cleanup

    async def cleanup(self) -> list[str]:
        """Stop everything that was started, in reverse order; returns what could not be cleaned up."""
        problems: list[str] = []
        if self.daemon is not None or self.mint is not None or self.relay is not None:
            self.p.step("cleanup", "stopping paygressd (it finishes a request in flight), the mint, the relay and"
                                   " any VM")

        async def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:
                problems.append(f"{what}: {exc}")

        if self.consumer is not None:
            await attempt("consumer", self.consumer.close)
        if self.wallet is not None:
            await attempt("consumer wallet", self.wallet.close)
        if self.daemon is not None:
            await attempt("paygressd", self._stop_daemon)
        if self.mint is not None:
            await attempt("mint", self.mint.stop)
        removed: list[int] = []
        if self.vm_root is not None and self.config is not None:
            vm_root = self.vm_root

            async def sweep() -> None:
                # A fresh backend that wants no VM removes every qemu and VM dir under the demo's vm_root.
                kvm = kvm_section("mini", vm_root, images=self.config.work / "images" if self.config else None)
                report = await KvmBackend(kvm).reconcile([])
                removed.extend(report.removed)
                if host.scan_qemus(vm_root):
                    raise RuntimeError(f"qemu processes still running under {vm_root}")

            if vm_root.exists() or host.scan_qemus(vm_root):
                await attempt("VMs", sweep)
        strays: list[int] = []
        if self.tmp is not None:
            work = self.tmp
            await attempt("stray processes", lambda: strays.extend(kill_strays(work)))
        if self.relay is not None:
            await attempt("relay", self.relay.stop)
        kept = ""
        if self.tmp is not None:
            if self.opts.keep:
                kept = f"; work dir kept: {self.tmp}"
            else:
                await attempt("work dir", lambda: shutil.rmtree(self.tmp) if self.tmp else None)
        vms = f"{len(removed)} leftover VM(s) removed" if removed else "no VM left"
        if strays:
            vms += f", {len(strays)} stray process(es) killed"
        self.p.step("cleanup", f"paygressd stopped, mint stopped, relay shut down, {vms}"
                               + (kept or ", work dir removed"))
        return problems

    async def _stop_daemon(self) -> None:
        assert self.daemon is not None
        if self.daemon.proc is None:
            return
        if not self.daemon_listening:
            # Still starting (the accel probe can take 20 s before it looks at SIGTERM): it has answered no
            # request and holds no lease, so nothing is lost by killing it; the stray sweep gets its probe.
            self.daemon.kill()
            return
        try:
            await self.daemon.stop(timeout=40)
        except Exception:
            self.daemon.kill()
            raise

    def daemon_log_tail(self, n: int = 25) -> str:
        if self.daemon is None:
            return ""
        return "\n".join(self.daemon.log_text().splitlines()[-n:])


# ---------------------------------------------------------------- entry points


async def _run(opts: DemoOptions, printer: Printer) -> int:
    demo = Demo(opts, printer)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    caught: list[int] = []

    def on_signal(signum: int) -> None:
        if demo.cleaning or caught:
            printer.error("cleaning up, please wait")
            return
        caught.append(signum)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    rc = 1
    try:
        await demo.run()
        rc = 0
    except asyncio.CancelledError:
        if not caught:
            raise
        task.uncancel()
        name = signal.Signals(caught[0]).name
        printer.error(f"interrupted by {name}; stopping everything the demo started")
        rc = 130 if caught[0] == signal.SIGINT else 143
    except DemoError as exc:
        printer.error(f"FAILED: {exc}")
    except Exception as exc:
        printer.error(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        demo.cleaning = True
        if rc == 1:
            tail = demo.daemon_log_tail()
            if tail:
                print(f"--- last lines of the paygressd log ---\n{tail}\n---", file=sys.stderr, flush=True)
        problems = await demo.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    for problem in problems:
        printer.error(f"cleanup: {problem}")
    if rc == 0:
        if problems:
            return 1
        printer.step("done", f"a whole rental in {printer.elapsed():.0f}s: offer, pay, spawn, ssh, top-up,"
                             " status, expiry")
    return rc


def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> int:
    setup_logging("error")  # the demo narrates; in-process library logs would only interleave
    return asyncio.run(_run(opts, Printer(out)))


def cmd_demo(args: argparse.Namespace) -> int:
    images, _ = default_images(args.images)
    return run_demo(DemoOptions(images=images if args.images else None, keep=args.keep))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="rent a VM end to end on this machine (relay, mint, paygressd, consumer; all on loopback)",
        description="Start a local relay, a Nutshell mint (FakeWallet), paygressd and a consumer on loopback, and"
        " walk through one rental: list the offer, pay, spawn, log in over SSH, top up, status, expiry."
        " Cleans up everything it started, also on Ctrl-C.",
    )
    p.add_argument("--images", metavar="DIR",
                   help="guest image cache (built on first use); default: $PAYGRESSD_GUEST_DIR, else"
                   " <checkout>/.cache/guest or ~/.cache/paygressd/guest")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases) for inspection")
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """``paygressd demo`` on its own (also usable before the subcommand is wired into the main CLI)."""
    parser = argparse.ArgumentParser(prog="paygressd")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130

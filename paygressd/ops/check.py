"""``paygressd check``: a preflight of everything the daemon needs, one line per check.

Each check is a small function returning a ``CheckResult`` so it can be tested alone; ``run_checks``
composes them. Nothing here changes state: no key is written, no VM started (the accel probe boots a
throw-away guest with no disk), no token redeemed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from paygressd.config import Config, ConfigError, KvmSection, Tier, load_config
from paygressd.core.keys import KeyFileError, load_keys
from paygressd.vm import host
from paygressd.vm.accel import PROBE_TIMEOUT_KERNEL, kvm_device_usable, kvm_modules, probe, qemu_version
from paygressd.vm.qemu import effective_disk_gb

GiB = 2**30
# A clock before this date is certainly wrong (this release did not exist yet).
BUILD_DATE = datetime(2026, 11, 1, tzinfo=UTC)
CLOCK_WARN_SECONDS = 30.0
CLOCK_FAIL_SECONDS = 90.0
NETWORK_TIMEOUT = 5.0
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NOSTR_REPLIES = frozenset({"EOSE", "EVENT", "CLOSED", "NOTICE", "AUTH"})
_MAX_FRAME = 1 << 20


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    # Facts other checks use (not printed): "clock_offset" (server time - local time, s), "virtual_size" (bytes).
    facts: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def line(self) -> str:
        return f"{self.status.value:<4} {self.name}: {self.detail}"


def ok(name: str, detail: str, **facts: float) -> CheckResult:
    return CheckResult(name, Status.OK, detail, facts)


def warn(name: str, detail: str, **facts: float) -> CheckResult:
    return CheckResult(name, Status.WARN, detail, facts)


def fail(name: str, detail: str, **facts: float) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail, facts)


# ---------------------------------------------------------------------------------------------- config, key


def check_config(path: Path) -> tuple[CheckResult, Config | None]:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        # the message already names the file and the key; several problems go on several lines
        return fail("config", str(exc).replace("\n", "\n     ")), None
    return ok("config", f"{path} is valid ({len(cfg.tier)} tier(s), {len(cfg.nostr.relays)} relay(s), "
                        f"{len(cfg.cashu.mints)} mint(s))"), cfg


def check_key(path: Path) -> CheckResult:
    try:
        keys = load_keys(path)
    except KeyFileError as exc:
        return fail("key", str(exc))
    pk = keys.public_key()
    return ok("key", f"{path}: {pk.to_bech32()} (hex {pk.to_hex()})")


# ---------------------------------------------------------------------------------------------- qemu, accel


async def check_qemu(binary: str) -> CheckResult:
    try:
        version = await qemu_version(binary)
    except OSError as exc:
        return fail("qemu", f"{binary} is not usable: {exc.strerror if exc.strerror else exc}")
    return ok("qemu", f"{binary}: {version}")


async def check_qemu_img(binary: str = "qemu-img") -> CheckResult:
    try:
        out = await _run([binary, "--version"])
    except OSError as exc:
        return fail("qemu-img", f"{binary} is not usable (apt install qemu-utils): {exc.strerror or exc}")
    return ok("qemu-img", out.decode(errors="replace").splitlines()[0].strip())


async def check_accel(kvm: KvmSection, kvm_timeout: float = PROBE_TIMEOUT_KERNEL) -> CheckResult:
    """Boot the probe guest now (no cache) under what the config asks for; for "auto" KVM and TCG side by side."""
    name = "accel"
    if kvm.accel == "tcg":
        works, why = await probe(kvm.qemu_binary, "tcg", kvm)
        if works:
            return ok(name, f"TCG (software emulation), as accel = \"tcg\" asks: {why}")
        return fail(name, f"TCG does not boot the guest: {why}")
    usable, dev_why = kvm_device_usable()
    tcg_probe = asyncio.create_task(probe(kvm.qemu_binary, "tcg", kvm)) if kvm.accel == "auto" else None
    try:
        if usable:
            kvm_ok, kvm_why = await probe(kvm.qemu_binary, "kvm", kvm, within=kvm_timeout)
        else:
            kvm_ok, kvm_why = False, dev_why
    except BaseException:
        if tcg_probe is not None:
            tcg_probe.cancel()
        raise
    modules = ", ".join(kvm_modules()) or "none"
    if kvm.accel == "kvm":
        if kvm_ok:
            return ok(name, f"KVM (hardware acceleration): {kvm_why}")
        return fail(name, f"accel = \"kvm\" but KVM does not boot the guest here: {kvm_why} (kernel modules: "
                          f"{modules}); set accel = \"auto\" to fall back to TCG")
    assert tcg_probe is not None
    tcg_ok, tcg_why = await tcg_probe
    if kvm_ok:
        return ok(name, f"KVM (hardware acceleration): {kvm_why}")
    if tcg_ok:
        return warn(name, f"TCG fallback (software emulation): KVM unusable here because {kvm_why} "
                          f"(kernel modules: {modules}); guests run 10-20x slower. TCG: {tcg_why}")
    return fail(name, f"neither accelerator boots the guest. KVM: {kvm_why}. TCG: {tcg_why}")


# ---------------------------------------------------------------------------------------------- images


async def check_base_image(path: Path, qemu_img: str = "qemu-img") -> CheckResult:
    name = "base image"
    problem = _unreadable(path)
    if problem is not None:
        return fail(name, problem)
    try:
        info = json.loads(await _run([qemu_img, "info", "--output=json", str(path)]))
    except OSError as exc:
        return fail(name, f"{path}: qemu-img cannot read it: {exc.strerror or exc}")
    except ValueError:
        return fail(name, f"{path}: qemu-img printed no JSON")
    fmt = str(info.get("format", ""))
    size = info.get("virtual-size")
    vsize = size if isinstance(size, int) else 0
    if fmt not in ("qcow2", "raw"):
        return fail(name, f"{path} has format {fmt!r}; paygressd needs qcow2 or raw")
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict) and data.get("corrupt") is True:
        return fail(name, f"{path}: qcow2 image is marked corrupt (qemu-img check -r all)")
    if info.get("encrypted") is True:
        return fail(name, f"{path} is encrypted; VMs cannot boot it unattended")
    backing = info.get("backing-filename")
    if fmt == "raw" and not _looks_like_disk(path):
        # qemu-img calls any file "raw": look for a partition table or a filesystem before trusting it
        return fail(name, f"{path} is no disk image: no partition table and no ext filesystem in it")
    extra = f", backing file {backing}" if backing else ""
    return ok(name, f"{path}: {fmt}, virtual size {vsize / GiB:.1f} GB{extra}", virtual_size=float(vsize))


def _unreadable(path: Path) -> str | None:
    if not path.is_file():
        return f"{path} does not exist (build one: deploy/build-guest-image.sh)"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by uid {os.geteuid()}"
    return None


def _looks_like_disk(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(2048)
    except OSError:
        return False
    mbr = len(head) >= 512 and head[510:512] == b"\x55\xaa"
    ext = len(head) >= 1082 and head[1080:1082] == b"\x53\xef"
    return mbr or ext


def check_kernel(path: Path) -> CheckResult:
    try:
        with path.open("rb") as f:
            head = f.read(0x210)
    except OSError as exc:
        return fail("kernel", f"{path}: cannot read: {exc.strerror or exc}")
    if head[0x202:0x206] != b"HdrS":
        return fail("kernel", f"{path} is not a Linux kernel (bzImage): no boot header")
    return ok("kernel", f"{path}: Linux bzImage")


_INITRD_MAGIC = {
    b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ": "xz", b"\x02\x21\x4c\x18": "lz4",
    b"BZh": "bzip2", b"\x5d\x00\x00": "lzma", b"070701": "cpio", b"070702": "cpio",
}


def check_initrd(path: Path) -> CheckResult:
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        return fail("initrd", f"{path}: cannot read: {exc.strerror or exc}")
    kind = next((k for magic, k in _INITRD_MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return fail("initrd", f"{path} is not an initramfs (neither cpio nor a known compression)")
    return ok("initrd", f"{path}: {kind} initramfs")


# ---------------------------------------------------------------------------------------------- host


def check_ports(address: str, port_range: tuple[int, int]) -> CheckResult:
    lo, hi = port_range
    total = hi - lo + 1
    taken = [p for p in range(lo, hi + 1) if not host.port_bindable(address, p)]
    free = total - len(taken)
    where = f"{address}:{lo}-{hi}"
    if free == 0:
        return fail("ports", f"none of {total} SSH ports on {where} can be bound ({_bind_error(address, lo)})")
    if taken:
        shown = ", ".join(map(str, taken[:5])) + (", ..." if len(taken) > 5 else "")
        return warn("ports", f"{free} of {total} SSH ports on {where} bindable; taken: {shown} "
                             "(by running VMs or other services)")
    return ok("ports", f"all {total} SSH ports on {where} bindable")


def _bind_error(address: str, port: int) -> str:
    """Why a bind fails, for the message (host.port_bindable only says whether)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return "in use"


def check_disk(vm_root: Path, tiers: Sequence[Tier], base_virtual_bytes: int = 0) -> CheckResult:
    """Free space for overlays: each grows up to its tier's disk_gb (never less than the base image)."""
    where = vm_root
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        _, free = host.disk_bytes(where)
    except OSError as exc:
        return fail("disk", f"{vm_root}: cannot stat: {exc.strerror or exc}")
    biggest = max(tiers, key=lambda t: effective_disk_gb(t.disk_gb, base_virtual_bytes))
    need = effective_disk_gb(biggest.disk_gb, base_virtual_bytes)
    free_gb = free / GiB
    fits = int(free_gb // need)
    detail = f"{free_gb:.1f} GB free under {vm_root}; the largest tier ({biggest.id}) needs {need} GB per lease"
    if fits < 1:
        return fail("disk", detail + ": not enough for one lease")
    return ok("disk", f"{detail}: room for {fits}")


# ---------------------------------------------------------------------------------------------- network


async def check_relay(url: str, within: float = NETWORK_TIMEOUT, tls: ssl.SSLContext | None = None) -> CheckResult:
    """WebSocket handshake plus one NIP-01 REQ that the relay must answer (EOSE, CLOSED, NOTICE or AUTH).

    ``tls`` replaces the system trust store for wss:// (tests use their own certificate)."""
    name = f"relay {url}"
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(within):
            answer, date = await _nostr_roundtrip(url, tls)
    except TimeoutError:
        return fail(name, f"no answer within {within:g} s")
    except (OSError, ssl.SSLError) as exc:
        return fail(name, f"cannot connect: {_os_error(exc)}")
    except ProtocolError as exc:
        return fail(name, str(exc))
    ms = (time.monotonic() - t0) * 1000
    facts = _clock_fact(date, t0)
    return ok(name, f"answered {answer} in {ms:.0f} ms", **facts)


async def check_mint(url: str, within: float = NETWORK_TIMEOUT, tls: ssl.SSLContext | None = None) -> CheckResult:
    """GET <mint>/v1/keysets (NUT-02): reachable, and at least one active keyset in a unit we take."""
    name = f"mint {url}"
    t0 = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=within, follow_redirects=False, verify=tls or True) as client:
            resp = await client.get(f"{url}/v1/keysets")
    except httpx.TimeoutException:
        return fail(name, f"no answer within {within:g} s")
    except httpx.HTTPError as exc:
        return fail(name, f"cannot connect: {_httpx_error(exc)}")
    facts = _clock_fact(resp.headers.get("date"), t0)
    if resp.status_code != 200:
        return fail(name, f"GET /v1/keysets answered HTTP {resp.status_code}", **facts)
    try:
        keysets = resp.json()["keysets"]
        active = [k for k in keysets if k.get("active", True)]
        units = sorted({str(k["unit"]) for k in active})
    except (ValueError, KeyError, TypeError, AttributeError):
        return fail(name, "GET /v1/keysets did not return a NUT-02 keyset list", **facts)
    ms = (time.monotonic() - t0) * 1000
    if not active:
        return fail(name, "the mint has no active keyset", **facts)
    if not {"sat", "msat"} & set(units):
        return warn(name, f"keysets only in {', '.join(units)}; paygressd accepts sat and msat tokens", **facts)
    return ok(name, f"{len(active)} active keyset(s) ({', '.join(units)}) in {ms:.0f} ms", **facts)


def check_clock(offsets: Sequence[tuple[str, float]], now: float | None = None,
                build_date: datetime = BUILD_DATE) -> CheckResult:
    """Heartbeats and request ages are judged by wall-clock time: compare ours with the servers' Date headers."""
    t = time.time() if now is None else now
    if t < build_date.timestamp():
        local = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return fail("clock", f"local time {local} is before this release ({build_date:%Y-%m-%d}): the clock is wrong")
    if not offsets:
        return warn("clock", "no mint or relay sent a Date header: cannot compare the clock (is NTP running?)")
    median = statistics.median(o for _, o in offsets)
    worst = max(offsets, key=lambda x: abs(x[1]))
    detail = (f"local clock is {abs(median):.0f} s {'behind' if median > 0 else 'ahead of'} "
              f"{len(offsets)} server(s) (median; largest {worst[1]:+.0f} s from {worst[0]})")
    if abs(median) > CLOCK_FAIL_SECONDS:
        return fail("clock", detail + ": fix NTP, consumers will see stale heartbeats and refused requests")
    if abs(median) > CLOCK_WARN_SECONDS:
        return warn("clock", detail + ": check NTP")
    return ok("clock", f"within {abs(median):.0f} s of {len(offsets)} server(s)")


def _clock_fact(date_header: str | None, t0: float) -> dict[str, float]:
    """server - local, local taken halfway through the exchange (Date has 1 s resolution anyway)."""
    if not date_header:
        return {}
    try:
        server = parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return {}
    local = time.time() - (time.monotonic() - t0) / 2
    return {"clock_offset": server - local}


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"  # its errno is OpenSSL's, not an OS one
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's strerror is "Connect call failed (...)"; say why instead
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _httpx_error(exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            return _os_error(cause)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


class ProtocolError(Exception):
    """The peer answered, but not as a Nostr relay would."""


async def _nostr_roundtrip(url: str, tls: ssl.SSLContext | None = None) -> tuple[str, str | None]:
    """Open a WebSocket (RFC 6455, by hand: no extra dependency), send one REQ, wait for the relay's reply.

    Returns the reply's type and the handshake's Date header (None when the relay sends none).
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    hostname = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    ctx = (tls or ssl.create_default_context()) if secure else None
    reader, writer = await asyncio.open_connection(hostname, port, ssl=ctx,
                                                   server_hostname=hostname if secure else None)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "User-Agent: paygressd-check\r\n\r\n").encode())
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("oversized HTTP response to the WebSocket handshake") from exc
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("connection closed during the WebSocket handshake") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
        status = status_line.split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            raise ProtocolError(f"no WebSocket upgrade: the server answered {status_line.strip()!r}")
        want = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != want:
            raise ProtocolError("bad Sec-WebSocket-Accept in the handshake")
        sub = "paygressd-check-" + os.urandom(4).hex()
        writer.write(_ws_frame(json.dumps(["REQ", sub, {"kinds": [38383], "limit": 0}]).encode()))
        await writer.drain()
        while True:
            message = await _ws_read_text(reader, writer)
            try:
                kind = json.loads(message)[0]
            except (ValueError, IndexError, KeyError, TypeError):
                raise ProtocolError("the relay sent something that is not a Nostr message") from None
            if kind in _NOSTR_REPLIES:
                with contextlib.suppress(OSError):
                    writer.write(_ws_frame(json.dumps(["CLOSE", sub]).encode()))
                    writer.write(_ws_frame(b"", opcode=0x8))
                return str(kind), headers.get("date")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client frame: FIN set, masked (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _ws_read_text(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """The next complete text message; pings are answered, a close frame is an error."""
    parts: list[bytes] = []
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            if n > _MAX_FRAME:
                raise ProtocolError("the relay sent an oversized frame")
            mask = await reader.readexactly(4) if b1 & 0x80 else b""
            data = await reader.readexactly(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise ProtocolError("the relay closed the WebSocket without answering the REQ")
            if opcode == 0x9:
                writer.write(_ws_frame(data, opcode=0xA))
                continue
            if opcode in (0x1, 0x0):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode("utf-8", errors="replace")
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("the relay closed the connection without answering the REQ") from exc


# ---------------------------------------------------------------------------------------------- metrics


def check_metrics(cfg: Config) -> CheckResult | None:
    """Only when [metrics] is enabled: a loopback address (the endpoint has no authentication) that is free."""
    if not cfg.metrics.enabled:
        return None
    from paygressd.ops.metrics import MetricsConfigError, parse_listen

    try:
        address, port = parse_listen(cfg.metrics.listen)
    except MetricsConfigError as exc:
        return fail("metrics", str(exc))
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            reason = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            return warn("metrics", f"{cfg.metrics.listen} cannot be bound now ({reason}); fine if the daemon "
                                   "is running and serving it")
    return ok("metrics", f"http://{cfg.metrics.listen}/metrics will be served (loopback only)")


# ---------------------------------------------------------------------------------------------- composition


async def run_checks(
    config_file: Path,
    *,
    key_file: Path | None = None,
    network_within: float = NETWORK_TIMEOUT,
    kvm_timeout: float = PROBE_TIMEOUT_KERNEL,
    emit: Callable[[CheckResult], None] = lambda r: None,
) -> list[CheckResult]:
    """Every check, in a fixed order; each result is handed to ``emit`` as soon as its turn comes."""
    results: list[CheckResult] = []

    def add(r: CheckResult | None) -> None:
        if r is not None:
            results.append(r)
            emit(r)

    first, cfg = check_config(config_file)
    add(first)
    if cfg is None:
        return results
    kvm = cfg.kvm
    # the slow ones run in the background while the quick ones are printed
    accel = asyncio.create_task(check_accel(kvm, kvm_timeout))
    network = asyncio.gather(
        *(check_relay(u, network_within) for u in cfg.nostr.relays),
        *(check_mint(u, network_within) for u in cfg.cashu.mints),
    )
    try:
        add(check_key(key_file or cfg.provider.key_file))
        add(await check_qemu(kvm.qemu_binary))
        add(await check_qemu_img())
        image = await check_base_image(kvm.base_image)
        add(image)
        if kvm.kernel is not None:
            add(check_kernel(kvm.kernel))
        if kvm.initrd is not None:
            add(check_initrd(kvm.initrd))
        add(check_ports(kvm.listen_address, kvm.ssh_port_range))
        add(check_disk(kvm.vm_root, cfg.tier, int(image.facts.get("virtual_size", 0))))
        add(check_metrics(cfg))
        reachable = await network
        for r in reachable:
            add(r)
        add(check_clock([(r.name, r.facts["clock_offset"]) for r in reachable if "clock_offset" in r.facts]))
        add(await accel)
    finally:
        accel.cancel()
        network.cancel()
        with contextlib.suppress(BaseException):
            await accel
        with contextlib.suppress(BaseException):
            await network
    return results


async def _run(argv: list[str]) -> bytes:
    exe = shutil.which(argv[0])
    if exe is None:
        raise FileNotFoundError(errno.ENOENT, "not found on PATH", argv[0])
    proc = await asyncio.create_subprocess_exec(
        exe, *argv[1:], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise OSError(f"exit {proc.returncode}: {msg[-1] if msg else 'no message'}")
    return out

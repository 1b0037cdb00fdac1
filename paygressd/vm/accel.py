"""Does KVM really work here? Boot a probe guest once and remember the verdict.

/dev/kvm existing proves little: on PVM hosts (kvm_pvm, nested KVM without VMX/SVM) KVM initialises fine
and a stock kernel then spins in its decompressor forever. So "auto" boots the configured kernel with no
root device under KVM and waits for its "Kernel panic" line (about 2 s under TCG, well under 1 s with
working KVM); on silence it falls back to TCG, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from paygressd.config import KvmSection
from paygressd.logging import get_logger

log = get_logger(__name__)

PROBE_TIMEOUT_KERNEL = 20.0  # seconds; TCG needs ~2 s for the same probe on this 2-core box
PROBE_TIMEOUT_DISK = 90.0  # booting the image's own bootloader + kernel takes longer
CACHE_NAME = ".accel-probe.json"
_KERNEL_LINES = (b"Kernel panic", b"VFS: Unable to mount root")
_DISK_LINES = (b"Linux version", b"Kernel panic", b"login:", b"cloud-init")


@dataclass(frozen=True)
class AccelVerdict:
    accel: str  # "kvm" or "tcg": what VMs will use
    kvm_works: bool | None  # None: not probed (forced by config, or no usable /dev/kvm)
    reason: str
    cached: bool = False


def kvm_device_usable(dev: Path = Path("/dev/kvm")) -> tuple[bool, str]:
    if not dev.exists():
        return False, f"{dev} does not exist (no KVM module loaded, or no nested virtualisation)"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, f"{dev} is not readable and writable by uid {os.geteuid()}"
    return True, f"{dev} is usable"


def kvm_modules() -> list[str]:
    try:
        return sorted(m for m in os.listdir("/sys/module") if m.startswith("kvm"))
    except OSError:
        return []


async def qemu_version(binary: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "--version", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"{binary} --version failed: {out.decode(errors='replace').strip()}")
    return out.decode(errors="replace").splitlines()[0].strip()


def probe_argv(binary: str, accel: str, kvm: KvmSection) -> tuple[list[str], tuple[bytes, ...], float]:
    """qemu argv for the probe, the serial lines that prove the guest kernel runs, and the deadline."""
    base = [binary, "-nodefaults", "-no-user-config", "-machine", "q35", "-accel", accel, "-m", "256", "-smp", "1",
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-sandbox", "on"]
    if kvm.kernel is not None:
        # no initrd, no root: the kernel runs all of its init and then panics; panic=-1 + -no-reboot ends qemu
        return [*base, "-kernel", str(kvm.kernel), "-append", "console=ttyS0 panic=-1 loglevel=1"], \
            _KERNEL_LINES, PROBE_TIMEOUT_KERNEL
    # BIOS-booted cloud image: boot it read-only (-snapshot) and wait for its kernel on the serial console
    return [*base, "-snapshot", "-drive", f"file={kvm.base_image},if=virtio", "-nic", "none"], \
        _DISK_LINES, PROBE_TIMEOUT_DISK


async def probe(binary: str, accel: str, kvm: KvmSection, within: float | None = None) -> tuple[bool, str]:
    """Boot the probe guest under `accel`; (True, why) when its kernel got far enough in time."""
    argv, lines, deadline = probe_argv(binary, accel, kvm)
    deadline = within if within is not None else deadline
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = b""
    try:
        async with asyncio.timeout(deadline):
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    break
                seen = (seen + chunk)[-8192:]
                if any(x in seen for x in lines):
                    return True, f"guest kernel booted under {accel} in {loop.time() - t0:.1f} s"
    except TimeoutError:
        return False, (f"guest kernel under {accel} printed nothing useful within {deadline:.0f} s "
                       "(hangs: e.g. kvm_pvm runs only PVM-enabled guest kernels)")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        err = await proc.stderr.read()
        await proc.wait()
    msg = err.decode(errors="replace").strip().splitlines()
    return False, f"qemu under {accel} exited with {proc.returncode} before the guest kernel ran: " + (
        msg[-1] if msg else "no message")


def _cache_key(version: str, kvm: KvmSection) -> dict[str, object]:
    target = kvm.kernel if kvm.kernel is not None else kvm.base_image
    try:
        st = target.stat()
        ident: object = [str(target), st.st_size, st.st_mtime_ns]
    except OSError:
        ident = [str(target), None, None]
    return {"qemu": version, "guest": ident, "host_kernel": os.uname().release, "kvm_modules": kvm_modules()}


async def detect_accel(kvm: KvmSection, cache_dir: Path | None = None, *, force_probe: bool = False) -> AccelVerdict:
    """Which accelerator VMs get: config "kvm"/"tcg" is obeyed; "auto" probes (cached by qemu/kernel/host)."""
    if kvm.accel == "tcg":
        return AccelVerdict("tcg", None, "accel = \"tcg\" in the config")
    usable, why = kvm_device_usable()
    if kvm.accel == "kvm":
        return AccelVerdict("kvm", None, f"accel = \"kvm\" in the config ({why})")
    if not usable:
        verdict = AccelVerdict("tcg", False, why)
        log.warning("kvm_unavailable_using_tcg", reason=why)
        return verdict
    version = await qemu_version(kvm.qemu_binary)
    key = _cache_key(version, kvm)
    cache = (cache_dir / CACHE_NAME) if cache_dir is not None else None
    if cache is not None and not force_probe:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                v = data["verdict"]
                return AccelVerdict(str(v["accel"]), bool(v["kvm_works"]), str(v["reason"]), cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    ok, reason = await probe(kvm.qemu_binary, "kvm", kvm)
    verdict = AccelVerdict("kvm" if ok else "tcg", ok, reason)
    if not ok:
        log.warning("kvm_does_not_boot_guests_falling_back_to_tcg", reason=reason,
                    hint="VMs will be 10-20x slower; set accel = \"tcg\" to skip this probe")
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps({"key": key, "verdict": asdict(verdict) | {"cached": False}}))
            os.replace(tmp, cache)
        except OSError as exc:
            log.warning("accel_cache_not_written", path=str(cache), error=str(exc))
    return verdict


async def check_accel(kvm: KvmSection) -> list[tuple[bool, str]]:
    """For `paygressd check`: probe both accelerators now (no cache) and say what works and why."""
    results: list[tuple[bool, str]] = []
    usable, why = kvm_device_usable()
    if usable:
        ok, reason = await probe(kvm.qemu_binary, "kvm", kvm)
        results.append((ok, "kvm: " + reason))
    else:
        results.append((False, "kvm: " + why))
    ok, reason = await probe(kvm.qemu_binary, "tcg", kvm)
    results.append((ok, "tcg: " + reason))
    return results

"""Host facts and process handling at the edge: resources, ports, /proc, signals via pidfd."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

from paygressd.vm.qemu import VmPaths, is_our_qemu, vmid_of_cmdline


def cpu_millicores_total() -> int:
    try:
        return len(os.sched_getaffinity(0)) * 1000
    except AttributeError:  # pragma: no cover - Linux always has it
        return (os.cpu_count() or 1) * 1000


def memory_mb_total(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise OSError("MemTotal missing from /proc/meminfo")


def disk_bytes(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the filesystem holding path."""
    usage = shutil.disk_usage(path)
    return usage.total, usage.free


def allocated_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def port_bindable(address: str, port: int) -> bool:
    """Can qemu's forward listen here? SO_REUSEADDR like slirp, so TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            s.listen(1)
        except OSError:
            return False
    return True


def read_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def scan_qemus(vm_root: Path) -> dict[int, int]:
    """vmid -> pid of every live paygress qemu whose VM lives under vm_root (pidfiles can be stale or gone)."""
    found: dict[int, int] = {}
    for pid in _pids():
        vmid = vmid_of_cmdline(read_cmdline(pid), vm_root)
        if vmid is not None:
            found[vmid] = pid
    return found


def find_qemu(vm_root: Path, vmid: int) -> int | None:
    """The live qemu of this VM: the pidfile's pid if /proc confirms it is ours, else a /proc scan."""
    paths = VmPaths.for_vm(vm_root, vmid)
    pid = read_pidfile(paths.pidfile)
    if pid is not None and is_our_qemu(read_cmdline(pid), paths, vmid):
        return pid
    return scan_qemus(vm_root).get(vmid)


def signal_verified(pid: int, paths: VmPaths, vmid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal pid only if it is this VM's qemu. A pidfd pins the process between check and kill, so a
    recycled pid can never be hit (§8 item 20). False when there was nothing (of ours) to signal."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not is_our_qemu(read_cmdline(pid), paths, vmid):
            return False
        try:
            signal.pidfd_send_signal(fd, sig)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return False
            raise
        return True
    finally:
        os.close(fd)


def alive(pid: int, paths: VmPaths, vmid: int) -> bool:
    # a zombie has an empty cmdline, so it counts as gone
    return is_our_qemu(read_cmdline(pid), paths, vmid)


async def wait_gone(pid: int, paths: VmPaths, vmid: int, within: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while alive(pid, paths, vmid):
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.1)
    return True


async def ssh_banner(host: str, port: int, wait: float = 3.0) -> bool:
    """True when something speaking SSH-2.0 answers (slirp accepts TCP before the guest's sshd is up)."""
    writer = None
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port)
            line = await reader.readline()
            return line.startswith(b"SSH-2.0-")
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def marker_seen(serial: Path, marker: bytes) -> bool:
    try:
        with serial.open("rb") as f:
            return marker in f.read(8 << 20)  # the marker comes at boot; ignore later chatter
    except OSError:
        return False

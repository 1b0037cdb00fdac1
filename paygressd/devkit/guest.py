"""Guest images and SSH logins for code that boots real qemu guests (VM tests, end-to-end tests, demo).

Images come from deploy/build-guest-image.sh. Where they are cached: $PAYGRESSD_GUEST_DIR, else
<source tree>/.cache/guest when running from a checkout, else ~/.cache/paygressd/guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import paygressd
from paygressd.config import KvmSection
from paygressd.devkit.ports import free_port_block

SOURCE_ROOT = Path(paygressd.__file__).resolve().parents[1]
BUILD_SCRIPT = SOURCE_ROOT / "deploy" / "build-guest-image.sh"
MINI_FILES = ("vmlinuz", "mini-initrd.gz", "base-mini.qcow2")
FULL_FILES = ("vmlinuz", "initrd.img", "base.qcow2", "append.txt")
ENV_GUEST_DIR = "PAYGRESSD_GUEST_DIR"


def in_checkout() -> bool:
    return BUILD_SCRIPT.is_file() and (SOURCE_ROOT / "pyproject.toml").is_file()


def guest_dir() -> Path:
    env = os.environ.get(ENV_GUEST_DIR)
    if env:
        return Path(env)
    if in_checkout():
        return SOURCE_ROOT / ".cache" / "guest"
    return Path.home() / ".cache" / "paygressd" / "guest"


def images_present(flavour: str, where: Path | None = None) -> bool:
    d = where or guest_dir()
    files = MINI_FILES if flavour == "mini" else FULL_FILES
    return all((d / f).is_file() for f in files)


def images_complete(flavour: str, where: Path | None = None) -> bool:
    """Present and finished: the builder writes its stamp last, so an interrupted build does not count."""
    d = where or guest_dir()
    return images_present(flavour, d) and (d / "stamp").is_file()


def build_images(what: str = "all", where: Path | None = None) -> Path:
    """Run the project's image builder (root, Debian mirror; ~2 min the first time, cached afterwards)."""
    d = where or guest_dir()
    subprocess.run([str(BUILD_SCRIPT), str(d), what], check=True)
    return d


class ImageBuildError(RuntimeError):
    pass


async def build_images_streaming(what: str, where: Path, on_line: Callable[[str], None],
                                 script: Path = BUILD_SCRIPT) -> None:
    """Run the image builder, handing each output line to ``on_line``; on failure raise with its last lines.

    The builder runs in its own process group so that a cancelled build takes mmdebstrap down with it.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            str(script), str(where), what, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        raise ImageBuildError(f"cannot run the image builder {script}: {exc.strerror or exc}"
                              " (or pass --images DIR with prebuilt images)") from exc
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=30)
    try:
        while raw := await proc.stdout.readline():
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            on_line(line)
        rc = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 10)
        raise
    if rc != 0:
        raise ImageBuildError(f"{script.name} exited with {rc}:\n" + "\n".join(tail))


def tools_missing() -> str | None:
    """Which host tools for booting and logging in to a guest are missing, or None."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        return "qemu-system-x86_64 / qemu-img not installed"
    if shutil.which("sshpass") is None or shutil.which("ssh") is None:
        return "sshpass / ssh not installed"
    return None


def missing_reason(flavour: str) -> str | None:
    """Why a real boot cannot run here, or None when it can."""
    tools = tools_missing()
    if tools is not None:
        return tools
    if not images_present(flavour):
        return f"{flavour} guest images missing in {guest_dir()} (run deploy/build-guest-image.sh {guest_dir()} all)"
    return None


def kvm_section(flavour: str, vm_root: Path, *, ports: tuple[int, int] | None = None,
                vmids: tuple[int, int] = (1000, 1009), accel: str = "tcg",
                qemu_user: str | None = "nobody", images: Path | None = None) -> KvmSection:
    """A [kvm] config for the mini (busybox+dropbear) or full (Debian + cloud-init) guest on loopback."""
    d = images or guest_dir()
    if flavour == "mini":
        base, initrd, cmdline = d / "base-mini.qcow2", d / "mini-initrd.gz", "console=ttyS0"
    else:
        base, initrd = d / "base.qcow2", d / "initrd.img"
        cmdline = (d / "append.txt").read_text().strip()
    return KvmSection.model_validate({
        "base_image": base, "kernel": d / "vmlinuz", "initrd": initrd, "cmdline": cmdline,
        "vm_root": vm_root, "vmid_range": vmids, "ssh_port_range": ports or free_port_block(10),
        "listen_address": "127.0.0.1", "accel": accel, "qemu_user": qemu_user,
        "reserved_memory_mb": 0,
    })


SSH_RETRY_CODES = (5, 6, 255)  # sshpass: 5 = wrong password, 6 = host key; 255 = ssh connection failure


def ssh_argv(host: str, port: int, user: str, cmd: str, connect_timeout: int = 10) -> list[str]:
    """Password login with sshpass + OpenSSH (no keys); the password goes through $SSHPASS, never argv."""
    return ["sshpass", "-e", "ssh", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "LogLevel=ERROR", "-p", str(port), f"{user}@{host}", cmd]


def ssh_run(host: str, port: int, user: str, password: str, cmd: str, *, deadline: float = 60.0,
            connect_timeout: int = 10) -> subprocess.CompletedProcess[str]:
    """Log in with the password for real (sshpass + OpenSSH, no keys) and run cmd.

    Retries while the guest is still coming up (connection refused/reset, banner timeouts, and "Permission
    denied" while cloud-init has not set the password yet) until `deadline` seconds have passed; then
    returns the last attempt, so a caller can assert on rc/stderr.
    """
    argv = ssh_argv(host, port, user, cmd, connect_timeout)
    env = dict(os.environ, SSHPASS=password)
    end = time.monotonic() + deadline
    while True:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=connect_timeout + 60)
        if proc.returncode not in SSH_RETRY_CODES or time.monotonic() >= end:
            return proc
        time.sleep(1.0)


async def ssh_run_async(host: str, port: int, user: str, password: str, cmd: str, *, deadline: float = 60.0,
                        connect_timeout: int = 10) -> subprocess.CompletedProcess[str]:
    """``ssh_run`` for an event loop: cancelling it kills the ssh client at once (no thread left behind)."""
    argv = ssh_argv(host, port, user, cmd, connect_timeout)
    env = dict(os.environ, SSHPASS=password)
    end = time.monotonic() + deadline
    while True:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), connect_timeout + 60)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        rc = proc.returncode if proc.returncode is not None else -1
        result = subprocess.CompletedProcess(argv, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        if rc not in SSH_RETRY_CODES or time.monotonic() >= end:
            return result
        await asyncio.sleep(1.0)

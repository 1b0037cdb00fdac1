"""Guest images and SSH logins for tests that boot real qemu guests (VM suite, end-to-end, demo).

Images come from deploy/build-guest-image.sh, found via $PAYGRESSD_GUEST_DIR (default <repo>/.cache/guest).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from paygressd.config import KvmSection

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "build-guest-image.sh"
MINI_FILES = ("vmlinuz", "mini-initrd.gz", "base-mini.qcow2")
FULL_FILES = ("vmlinuz", "initrd.img", "base.qcow2", "append.txt")


def guest_dir() -> Path:
    return Path(os.environ.get("PAYGRESSD_GUEST_DIR", str(REPO / ".cache" / "guest")))


def images_present(flavour: str, where: Path | None = None) -> bool:
    d = where or guest_dir()
    files = MINI_FILES if flavour == "mini" else FULL_FILES
    return all((d / f).is_file() for f in files)


def build_images(what: str = "all", where: Path | None = None) -> Path:
    """Run the project's image builder (root, Debian mirror; ~2 min the first time, cached afterwards)."""
    d = where or guest_dir()
    subprocess.run([str(BUILD_SCRIPT), str(d), what], check=True)
    return d


def missing_reason(flavour: str) -> str | None:
    """Why a real boot cannot run here, or None when it can."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        return "qemu-system-x86_64 / qemu-img not installed"
    if shutil.which("sshpass") is None or shutil.which("ssh") is None:
        return "sshpass / ssh not installed"
    if not images_present(flavour):
        return f"{flavour} guest images missing in {guest_dir()} (run deploy/build-guest-image.sh {guest_dir()} all)"
    return None


def free_port_block(count: int, start: int = 32000, end: int = 60000) -> tuple[int, int]:
    """A run of `count` consecutive loopback ports nobody listens on right now (for ssh_port_range)."""
    port = start + (os.getpid() * 7) % 2000  # spread parallel test runs apart
    while port + count < end:
        if all(_bindable(p) for p in range(port, port + count)):
            return port, port + count - 1
        port += count
    raise RuntimeError("no free port block")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kvm_section(flavour: str, vm_root: Path, *, ports: tuple[int, int] | None = None,
                vmids: tuple[int, int] = (1000, 1009), accel: str = "tcg",
                qemu_user: str | None = "nobody") -> KvmSection:
    """A [kvm] config for the mini (busybox+dropbear) or full (Debian + cloud-init) guest on loopback."""
    d = guest_dir()
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


def ssh_run(host: str, port: int, user: str, password: str, cmd: str, *, deadline: float = 60.0,
            connect_timeout: int = 10) -> subprocess.CompletedProcess[str]:
    """Log in with the password for real (sshpass + OpenSSH, no keys) and run cmd.

    Retries while the guest is still coming up (connection refused/reset, banner timeouts, and "Permission
    denied" while cloud-init has not set the password yet) until `deadline` seconds have passed; then
    returns the last attempt, so a caller can assert on rc/stderr. The password goes through the
    environment (SSHPASS), never argv.
    """
    argv = ["sshpass", "-e", "ssh", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "LogLevel=ERROR", "-p", str(port), f"{user}@{host}", cmd]
    env = dict(os.environ, SSHPASS=password)
    end = time.monotonic() + deadline
    while True:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=connect_timeout + 60)
        # sshpass: 5 = wrong password, 6 = host key, 255 = ssh connection failure; anything else is the command's
        if proc.returncode not in (5, 6, 255) or time.monotonic() >= end:
            return proc
        time.sleep(1.0)

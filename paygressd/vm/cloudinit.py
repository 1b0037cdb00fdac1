"""NoCloud seed for a guest: user-data, meta-data and the ISO (pycdlib; no genisoimage at runtime)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pycdlib

from paygressd.vm.qemu import READY_MARKER, vm_name

_PASSWORD = re.compile(r"^[A-Za-z0-9]{8,128}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SSHD_DROPIN = "/etc/ssh/sshd_config.d/01-paygress.conf"
READY_SCRIPT = "/var/lib/cloud/scripts/per-boot/99-paygress-ready"


def _q(s: str) -> str:
    """A YAML scalar: JSON strings are valid YAML, so nothing in s can change the document's structure."""
    return json.dumps(s)


def user_data(vmid: int, password: str, guest_user: str | None) -> str:
    """#cloud-config that really lets the consumer in, as root and as their own user, with the password.

    - sshd drop-in first in lexical order (sshd keeps the FIRST value it reads, so it beats e.g. Ubuntu's
      60-cloudimg-settings.conf `PasswordAuthentication no` and Debian's `prohibit-password` default);
    - chpasswd.users (cloud-init >= 22.3; the older `list` string is deprecated), one quoted flow mapping
      per line: the mini guest's /init parses exactly that shape. Quoted, because an all-digit or `0x…`
      password would otherwise be read by YAML as a number;
    - the readiness marker goes out from a per-boot script, which cloud-init runs in its final stage (after
      users, passwords and the drop-in) on every boot, so a VM restarted with the same seed reports too.
    """
    if not _PASSWORD.fullmatch(password):
        raise ValueError("password must be 8-128 ASCII letters or digits")
    if guest_user is not None and (not _USER.fullmatch(guest_user) or guest_user == "root"):
        raise ValueError("guest user must be a non-root POSIX user name")
    name = vm_name(vmid)
    lines = [
        "#cloud-config",
        "disable_root: false",
        "ssh_pwauth: true",
        # sudo warns "unable to resolve host" unless the hostname is in /etc/hosts
        "manage_etc_hosts: true",
    ]
    if guest_user is not None:
        lines += [
            "users:",
            f"  - name: {_q(guest_user)}",
            "    groups: [sudo]",
            f"    sudo: {_q('ALL=(ALL) NOPASSWD:ALL')}",
            "    shell: /bin/bash",
            "    lock_passwd: false",
        ]
    lines += [
        "chpasswd:",
        "  expire: false",
        "  users:",
    ]
    for user in ("root", guest_user):
        if user is not None:
            lines.append(f"    - {{name: {_q(user)}, password: {_q(password)}, type: text}}")
    ready = (
        "#!/bin/sh\n"
        "# sshd must have read the password-login drop-in before the host is told the guest is ready\n"
        "systemctl try-reload-or-restart ssh.service sshd.service >/dev/null 2>&1 || true\n"
        f'echo "{READY_MARKER} instance={name} uptime=$(cut -d" " -f1 /proc/uptime)" > /dev/ttyS0\n'
    )
    lines += [
        "write_files:",
        f"  - path: {SSHD_DROPIN}",
        "    owner: root:root",
        f"    permissions: {_q('0644')}",
        f"    content: {_q('PermitRootLogin yes' + chr(10) + 'PasswordAuthentication yes' + chr(10))}",
        f"  - path: {READY_SCRIPT}",
        "    owner: root:root",
        f"    permissions: {_q('0755')}",
        f"    content: {_q(ready)}",
    ]
    return "\n".join(lines) + "\n"


def meta_data(vmid: int) -> str:
    name = vm_name(vmid)
    return f"instance-id: {name}\nlocal-hostname: {name}\n"


def seed_iso_bytes(files: dict[str, str]) -> bytes:
    """ISO9660 + Joliet + Rock Ridge, volume id "cidata" (what cloud-init's NoCloud and `findfs` look for)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        for i, (name, text) in enumerate(sorted(files.items())):
            data = text.encode()
            iso9660 = f"/F{i}.;1"  # the 8.3 name is never used: Linux prefers the Rock Ridge name
            iso.add_fp(io.BytesIO(data), len(data), iso9660, rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
        # 150 zero sectors, like genisoimage's default -pad: without them the guest's isofs/findfs
        # did not find the (tiny) seed at all (tested with the mini guest)
        return out.getvalue() + bytes(150 * 2048)
    finally:
        iso.close()


def write_seed_iso(path: Path, vmid: int, password: str, guest_user: str | None) -> None:
    """Write the seed with mode 0600 from the first byte: it holds the password in clear (§8 item 22)."""
    data = seed_iso_bytes({"user-data": user_data(vmid, password, guest_user), "meta-data": meta_data(vmid)})
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def read_seed_iso(path: Path) -> dict[str, str]:
    """Rock Ridge names and contents of a seed ISO (tests and `paygressd check`)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out: dict[str, str] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue().decode()
        return out
    finally:
        iso.close()


def volume_id(path: Path) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        return str(iso.pvd.volume_identifier.decode().strip())
    finally:
        iso.close()

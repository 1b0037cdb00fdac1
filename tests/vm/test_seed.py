"""cloud-init user-data/meta-data and the seed ISO, read back the way a guest would see it."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from paygressd.vm.cloudinit import (
    READY_SCRIPT,
    SSHD_DROPIN,
    meta_data,
    read_seed_iso,
    seed_iso_bytes,
    user_data,
    volume_id,
    write_seed_iso,
)
from paygressd.vm.qemu import READY_MARKER

PW = "Q7xkP2mN9vR4tL8s"
# the line shape deploy/build-guest-image.sh's mini /init reads with sed
CHPASSWD = re.compile(r'^    - \{name: "([a-z_][a-z0-9_-]*)", password: "([A-Za-z0-9]*)", type: text\}$', re.M)


def test_user_data_lets_root_and_the_user_in_with_the_password() -> None:
    ud = user_data(1004, PW, "alice")
    assert ud.startswith("#cloud-config\n")
    assert "\ndisable_root: false\n" in ud
    assert "\nssh_pwauth: true\n" in ud
    # chpasswd users: exactly these two lines (the mini guest's /init parses this shape)
    assert CHPASSWD.findall(ud) == [("root", PW), ("alice", PW)]
    assert "\nmanage_etc_hosts: true\n" in ud
    assert "  expire: false\n" in ud
    assert '  - name: "alice"\n    groups: [sudo]\n    sudo: "ALL=(ALL) NOPASSWD:ALL"\n' in ud
    assert "    lock_passwd: false\n" in ud
    # sshd drop-in: sorts before Ubuntu's 60-cloudimg-settings.conf and opens root password logins
    assert f"  - path: {SSHD_DROPIN}\n" in ud
    assert SSHD_DROPIN.rsplit("/", 1)[1] < "60-cloudimg-settings.conf"
    assert json.dumps("PermitRootLogin yes\nPasswordAuthentication yes\n") in ud


def test_readiness_marker_is_a_per_boot_script_on_the_serial_console() -> None:
    ud = user_data(1004, PW, None)
    assert f"  - path: {READY_SCRIPT}\n" in ud
    assert "/per-boot/" in READY_SCRIPT  # runs in cloud-init's final stage, on every boot (restarts too)
    line = next(ln for ln in ud.splitlines() if ln.startswith("    content: ") and READY_MARKER in ln)
    script = json.loads(line.removeprefix("    content: "))
    assert script.startswith("#!/bin/sh\n")
    assert "try-reload-or-restart ssh.service" in script  # sshd reads the drop-in before we say ready
    assert f"{READY_MARKER} instance=paygress-1004" in script and "> /dev/ttyS0" in script


def test_no_user_means_root_only() -> None:
    ud = user_data(1004, PW, None)
    assert "\nusers:" not in ud  # no extra account
    assert CHPASSWD.findall(ud) == [("root", PW)]


@pytest.mark.parametrize("bad", ["short", "has space here", "quote'quote12", "new\nline12345", "colon:colon12"])
def test_passwords_that_could_break_the_yaml_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        user_data(1, bad, None)


@pytest.mark.parametrize("bad", ["root", "Alice", "a b", "x\n", "-x", "a" * 33, 'a"b'])
def test_bad_user_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        user_data(1, PW, bad)


def test_user_data_is_valid_yaml_if_a_parser_is_available() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(user_data(1004, "0x1234567890ab", "alice"))
    assert doc["chpasswd"]["users"] == [{"name": "root", "password": "0x1234567890ab", "type": "text"},
                                        {"name": "alice", "password": "0x1234567890ab", "type": "text"}]
    assert doc["users"][0]["name"] == "alice"
    assert doc["write_files"][0]["content"] == "PermitRootLogin yes\nPasswordAuthentication yes\n"


def test_meta_data() -> None:
    assert meta_data(1004) == "instance-id: paygress-1004\nlocal-hostname: paygress-1004\n"


def test_seed_iso_reads_back_with_nocloud_names_and_label(tmp_path: Path) -> None:
    p = tmp_path / "seed.iso"
    write_seed_iso(p, 1004, PW, "alice")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600  # it holds the password in clear
    assert volume_id(p) == "cidata"
    files = read_seed_iso(p)
    assert files == {"user-data": user_data(1004, PW, "alice"), "meta-data": meta_data(1004)}
    assert not list(tmp_path.glob("*.tmp"))


def test_seed_iso_has_joliet_and_padding() -> None:
    data = seed_iso_bytes({"user-data": "#cloud-config\n", "meta-data": "instance-id: x\n"})
    assert data[0x8001:0x8006] == b"CD001"  # primary volume descriptor
    assert b"c\x00i\x00d\x00a\x00t\x00a" in data[0x8800:0x9000]  # Joliet SVD, UCS-2 "cidata"
    assert data[-150 * 2048:] == bytes(150 * 2048)
    assert len(data) % 2048 == 0

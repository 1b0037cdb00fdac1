"""The shipped unit under a real systemd (252, Debian 12): boot the full guest and run the unit there.

The daemon itself is not in the guest (no venv there), so a probe takes ExecStart's place and reports what
the daemon would meet inside the sandbox. Everything else is the shipped unit byte for byte.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import guest_dir, missing_reason

pytestmark = [pytest.mark.vm, pytest.mark.full_guest]

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "paygressd.service"
BOOT_DEADLINE = 600.0

# Runs as the service, in its sandbox. A daemonized child stands in for a tenant's qemu.
PROBE = r"""#!/usr/bin/python3
import grp, json, mmap, os, socket, stat, subprocess
r = {"uid": os.getuid(), "groups": os.getgroups(), "kvm_gid": grp.getgrnam("kvm").gr_gid}
cred = os.path.join(os.environ.get("CREDENTIALS_DIRECTORY", "/nonexistent"), "nostr.key")
st = os.stat(cred)
r["cred_path"] = cred
r["cred_mode"] = stat.S_IMODE(st.st_mode)
r["cred_uid"] = st.st_uid
r["cred_text"] = open(cred).read().strip()
def can(f):
    try:
        f(); return True
    except OSError:
        return False
r["write_state"] = can(lambda: open("/var/lib/paygressd/vm/probe", "w").close())
r["write_etc"] = can(lambda: open("/etc/probe", "w").close())
r["write_opt"] = can(lambda: open("/opt/probe", "w").close())
r["read_disk_key"] = can(lambda: open("/etc/paygressd/nostr.key").read())
r["wx_mmap"] = can(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
r["meminfo"] = can(lambda: open("/proc/meminfo").read())
r["inet"] = can(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
r["inet6"] = can(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close())
r["netlink"] = can(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
# Own session, like qemu -daemonize (not setsid(1): it forks when already a group leader and its pid dies).
child = subprocess.Popen(["sleep", "100000"], stdin=subprocess.DEVNULL, start_new_session=True)
r["child"] = child.pid
with open("/var/lib/paygressd/probe.json", "w") as fh:
    json.dump(r, fh)
os.execvp("sleep", ["sleep", "infinity"])
"""

RUNCMD = r"""exec > /dev/ttyS0 2>&1
set -x
systemd-sysusers paygressd.conf
mkdir -p /etc/paygressd
echo PROBE-KEY-1 > /etc/paygressd/nostr.key; chmod 600 /etc/paygressd/nostr.key
install -d -o paygressd -g paygressd -m 0750 /var/lib/paygressd /var/lib/paygressd/vm
systemctl daemon-reload
systemctl enable --now paygressd.service
for i in $(seq 60); do [ -s /var/lib/paygressd/probe.json ] && break; sleep 1; done
child=$(python3 -c 'import json; print(json.load(open("/var/lib/paygressd/probe.json"))["child"])')
systemctl restart paygressd.service; sleep 3
alive_restart=$(kill -0 $child && echo true || echo false)
active=$(systemctl is-active paygressd.service)
systemctl stop paygressd.service; sleep 2
alive_stop=$(kill -0 $child && echo true || echo false)
exposure=$(systemd-analyze security paygressd.service | sed -n 's/.*Overall exposure level [^:]*: \([0-9.]*\).*/\1/p')
echo "PROBE-RESULT $(cat /var/lib/paygressd/probe.json) $alive_restart $alive_stop $active $exposure"
echo PROBE-END
"""


def user_data() -> str:
    def b64(s: str | bytes) -> str:
        return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()

    unit = UNIT.read_text()
    assert unit.count("ExecStart=") == 1
    unit = "\n".join(
        "ExecStart=/usr/local/bin/paygressd-probe" if ln.startswith("ExecStart=") else ln for ln in unit.splitlines()
    )
    runcmd = "\n".join("    " + ln for ln in RUNCMD.splitlines())
    return f"""#cloud-config
write_files:
  - path: /etc/systemd/system/paygressd.service
    encoding: b64
    content: {b64(unit + chr(10))}
  - path: /usr/local/bin/paygressd-probe
    permissions: '0755'
    encoding: b64
    content: {b64(PROBE)}
  - path: /etc/sysusers.d/paygressd.conf
    encoding: b64
    content: {b64((REPO / "deploy" / "install.sh").read_text().split("SYSUSERS_CONF='")[1].split("'")[0])}
runcmd:
  - |
{runcmd}
"""


@pytest.fixture
def guest_serial(tmp_path: Path) -> Iterator[Path]:
    why = missing_reason("full")
    if why is not None:
        pytest.skip(why)
    d = guest_dir()
    (tmp_path / "user-data").write_text(user_data())
    (tmp_path / "meta-data").write_text("instance-id: unit-probe\nlocal-hostname: unit-probe\n")
    subprocess.run(
        [
            "genisoimage",
            "-quiet",
            "-output",
            str(tmp_path / "seed.iso"),
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            str(tmp_path / "user-data"),
            str(tmp_path / "meta-data"),
        ],
        check=True,
    )
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(d / "base.qcow2"),
            "-F",
            "qcow2",
            str(tmp_path / "disk.qcow2"),
        ],
        check=True,
    )
    serial = tmp_path / "serial.log"
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-kernel",
            str(d / "vmlinuz"),
            "-initrd",
            str(d / "initrd.img"),
            "-append",
            (d / "append.txt").read_text().strip(),
            "-drive",
            f"file={tmp_path / 'disk.qcow2'},if=virtio,format=qcow2",
            "-drive",
            f"file={tmp_path / 'seed.iso'},if=virtio,format=raw,readonly=on",
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{serial}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield serial
    finally:
        qemu.send_signal(signal.SIGKILL)
        qemu.wait()


def test_unit_under_real_systemd(guest_serial: Path) -> None:
    end = time.monotonic() + BOOT_DEADLINE
    text = ""
    while time.monotonic() < end:
        text = guest_serial.read_text(errors="replace") if guest_serial.exists() else ""
        if "PROBE-END" in text:
            break
        time.sleep(2)
    line = next((ln for ln in text.splitlines() if ln.startswith("PROBE-RESULT ")), None)
    assert line is not None, "no probe result; serial tail:\n" + text[-4000:]
    payload, alive_restart, alive_stop, active, exposure = line[len("PROBE-RESULT ") :].rsplit(" ", 4)
    r = json.loads(payload)
    assert r["uid"] != 0
    assert r["kvm_gid"] in r["groups"], "SupplementaryGroups=kvm (for /dev/kvm)"
    # The key arrives as the credential the installed config names, and passes the daemon's mode rule
    # (paygressd.core.keys.load_keys refuses any group/other bit).
    assert r["cred_path"] == "/run/credentials/paygressd.service/nostr.key"
    assert r["cred_text"] == "PROBE-KEY-1"
    assert r["cred_mode"] & 0o077 == 0, oct(r["cred_mode"])
    assert r["cred_uid"] == r["uid"]
    assert r["read_disk_key"] is False, "the service must not read /etc/paygressd/nostr.key itself"
    assert (r["write_state"], r["write_etc"], r["write_opt"]) == (True, False, False)
    assert r["wx_mmap"], "qemu TCG needs W+X memory"
    assert r["meminfo"] and r["inet"] and r["inet6"]
    assert r["netlink"] is False
    # KillMode=process: the daemonized child (a tenant's qemu) outlives restart and stop of the service.
    assert (alive_restart, alive_stop, active) == ("true", "true", "active")
    assert float(exposure) <= 3.0

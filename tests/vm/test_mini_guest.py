"""Real boots of the mini guest (busybox + dropbear reading our seed) under qemu, with real SSH logins."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import socket
import stat

import pytest

from paygressd.vm.backend import BackendError, VmRequest, VmState
from paygressd.vm.host import find_qemu, port_bindable, scan_qemus
from paygressd.vm.kvm import KvmBackend
from paygressd.vm.qemu import VmPaths
from tests.support.guest import ssh_run

pytestmark = pytest.mark.vm
PW = "Mini7Guest4Pass9x"


def sha256(path: os.PathLike[str]) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


async def ssh(port: int, user: str, password: str, cmd: str, deadline: float = 30.0) -> tuple[int, str]:
    p = await asyncio.to_thread(ssh_run, "127.0.0.1", port, user, password, cmd, deadline=deadline)
    return p.returncode, p.stdout


async def test_boot_login_stop_delete_leaves_nothing_behind(mini_backend: KvmBackend) -> None:
    b = mini_backend
    base = b.cfg.base_image
    base_before = sha256(base)
    r = b.reserve(1000, 256, 1)
    paths = VmPaths.for_vm(b.root, r.vmid)

    await b.create(VmRequest(r, PW, "alice"))
    assert await b.status(r.vmid) in (VmState.STARTING, VmState.RUNNING)
    assert await b.wait_ready(r.vmid, 90), paths.serial.read_text(errors="replace")
    assert await b.status(r.vmid) == VmState.RUNNING

    rc, out = await ssh(r.port, "root", PW, "id -un; hostname; cat /mnt/BASE-MARKER; echo hi > /mnt/mine; sync")
    assert rc == 0 and out.splitlines() == ["root", f"paygress-{r.vmid}", "mini base image"]
    rc, out = await ssh(r.port, "alice", PW, "id -un; pwd")
    assert rc == 0 and out.splitlines() == ["alice", "/home/alice"]
    rc, _ = await ssh(r.port, "root", "WrongPassword123", "true", deadline=0)
    assert rc == 5  # sshpass: the password was refused

    # once ready, the serial log is cut off: a tenant cannot fill the host's disk through ttyS0
    size = paths.serial.stat().st_size
    rc, _ = await ssh(r.port, "root", PW, "for i in 1 2 3 4 5 6 7 8; do echo tenant-spam > /dev/ttyS0; done; echo ok")
    assert rc == 0
    assert b"tenant-spam" not in paths.serial.read_bytes() and paths.serial.stat().st_size == size

    # least privilege: qemu dropped to the configured user; the seed with the password is root-only
    pid = find_qemu(b.root, r.vmid)
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("nobody").pw_uid
    assert stat.S_IMODE(paths.seed.stat().st_mode) == 0o600
    assert os.getpgid(pid) != os.getpgid(0)  # not in our process group: survives a daemon restart

    await b.stop(r.vmid, grace=2.0)  # the mini guest ignores ACPI: SIGKILL after the grace period
    assert await b.status(r.vmid) == VmState.STOPPED
    assert find_qemu(b.root, r.vmid) is None
    assert paths.disk.exists()  # stop keeps the disk

    await b.delete(r.vmid)
    assert await b.status(r.vmid) == VmState.ABSENT
    assert not paths.dir.exists()
    assert scan_qemus(b.root) == {}
    assert port_bindable("127.0.0.1", r.port)
    assert r.vmid not in b.reservations()
    again = b.reserve(1000, 256, 1)
    assert (again.vmid, again.port) == (r.vmid, r.port)  # id and port are free again
    assert sha256(base) == base_before  # the base image is never written


async def test_failed_create_cleans_up_and_frees_the_id(mini_backend: KvmBackend) -> None:
    b = mini_backend
    r = b.reserve(1000, 512, 1)
    with socket.socket() as squatter:  # someone grabs the port between reserve() and create()
        squatter.bind(("127.0.0.1", r.port))
        squatter.listen(1)
        with pytest.raises(BackendError, match="qemu exited"):
            await b.create(VmRequest(r, PW, None))
    assert not VmPaths.for_vm(b.root, r.vmid).dir.exists()
    assert scan_qemus(b.root) == {}
    assert await b.status(r.vmid) == VmState.ABSENT
    b.release(r)
    assert b.reserve(1000, 512, 1).vmid == r.vmid


async def test_wait_ready_is_false_when_qemu_is_gone(mini_backend: KvmBackend) -> None:
    b = mini_backend
    r = b.reserve(1000, 512, 1)
    await b.create(VmRequest(r, PW, None))
    await b.stop(r.vmid, grace=0.0)
    assert await b.wait_ready(r.vmid, 30) is False  # returns at once, does not sit out the timeout
    await b.delete(r.vmid)

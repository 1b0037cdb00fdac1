"""A daemon restart: a new backend object finds its VMs again, restarts dead ones, removes orphans."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from paygressd.vm.backend import VmRequest, VmState, WantedVm
from paygressd.vm.host import find_qemu, scan_qemus
from paygressd.vm.kvm import KvmBackend
from paygressd.vm.qemu import VmPaths
from tests.support.guest import ssh_run

pytestmark = pytest.mark.vm
PW = "Reconcile5Pass8Word"


async def test_new_backend_adopts_restarts_and_removes(mini_backend: KvmBackend) -> None:
    old = mini_backend
    a, b, d = (old.reserve(500, 512, 1) for _ in range(3))
    await asyncio.gather(*(old.create(VmRequest(r, PW, None)) for r in (a, b, d)))
    assert all(await asyncio.gather(*(old.wait_ready(r.vmid, 120) for r in (a, b))))
    # something in B's overlay that must survive its restart
    p = await asyncio.to_thread(ssh_run, "127.0.0.1", b.port, "root", PW, "echo kept > /mnt/state; sync")
    assert p.returncode == 0, p.stderr
    pid_a = find_qemu(old.root, a.vmid)
    pid_b = find_qemu(old.root, b.vmid)
    assert pid_a is not None and pid_b is not None
    os.kill(pid_b, signal.SIGKILL)  # B's qemu dies while the daemon is down
    orphan_dir = VmPaths.for_vm(old.root, 1009).dir
    orphan_dir.mkdir()
    (orphan_dir / "disk.qcow2").write_bytes(b"left over by a crash")
    del old  # the daemon restarts: in-memory state is gone

    new = KvmBackend(mini_backend.cfg)
    await new.start()
    wanted = [WantedVm(r.vmid, r.port, r.cpu_millicores, r.memory_mb, r.disk_gb) for r in (a, b)]
    report = await new.reconcile(wanted)
    assert report.adopted == [a.vmid]
    assert report.restarted == [b.vmid]
    assert sorted(report.removed) == [d.vmid, 1009]  # D had no lease; 1009 was only a directory
    assert report.failed == []

    assert find_qemu(new.root, a.vmid) == pid_a  # adopted, not relaunched
    assert set(scan_qemus(new.root)) == {a.vmid, b.vmid}
    assert not VmPaths.for_vm(new.root, d.vmid).dir.exists() and not orphan_dir.exists()
    assert await new.status(a.vmid) == VmState.RUNNING
    assert await new.wait_ready(b.vmid, 120)
    p = await asyncio.to_thread(ssh_run, "127.0.0.1", b.port, "root", PW, "cat /mnt/state")
    assert (p.returncode, p.stdout) == (0, "kept\n")  # same overlay, same seed (password)

    # the new backend accounts for the adopted VMs: no id or port handed out twice
    r = new.reserve(500, 512, 1)
    assert r.vmid not in (a.vmid, b.vmid) and r.port not in (a.port, b.port)
    new.release(r)

    # a second reconcile with nothing wanted (all leases over) removes everything
    report = await new.reconcile([])
    assert sorted(report.removed) == [a.vmid, b.vmid]
    assert scan_qemus(new.root) == {} and not any(new.root.iterdir())


async def test_a_spawn_in_progress_is_not_an_orphan(mini_backend: KvmBackend) -> None:
    b = mini_backend
    r = b.reserve(500, 512, 1)
    await b.create(VmRequest(r, PW, None))  # created, lease not written yet
    report = await b.reconcile([])
    assert report.removed == [] and find_qemu(b.root, r.vmid) is not None
    w = WantedVm(r.vmid, r.port, r.cpu_millicores, r.memory_mb, r.disk_gb)
    assert (await b.reconcile([w])).adopted == [r.vmid]  # the lease appeared
    assert (await b.reconcile([])).removed == [r.vmid]  # the lease is over: VM, id and port go
    assert find_qemu(b.root, r.vmid) is None and r.vmid not in b.reservations()

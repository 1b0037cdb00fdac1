"""One real Debian cloud-init guest: our seed really lets root and the requested user in with the password.

The image keeps Debian's sshd defaults (PermitRootLogin prohibit-password), so a root password login only
works if our user-data's sshd drop-in took effect, as on a stock cloud image.
"""

from __future__ import annotations

import asyncio

import pytest

from paygressd.vm.backend import VmRequest, VmState
from paygressd.vm.kvm import KvmBackend
from paygressd.vm.qemu import VmPaths
from tests.support.guest import ssh_run

pytestmark = [pytest.mark.vm, pytest.mark.full_guest]
PW = "FullGuest3Pass7Word"


async def test_full_guest_root_and_user_login(full_backend: KvmBackend) -> None:
    b = full_backend
    r = b.reserve(2000, 1024, 10)
    await b.create(VmRequest(r, PW, "carol"))
    paths = VmPaths.for_vm(b.root, r.vmid)
    assert await b.wait_ready(r.vmid, 400), paths.serial.read_text(errors="replace")[-3000:]
    assert await b.status(r.vmid) == VmState.RUNNING

    def run(user: str, cmd: str) -> tuple[int, str, str]:
        p = ssh_run("127.0.0.1", r.port, user, PW, cmd, deadline=60)
        return p.returncode, p.stdout, p.stderr

    rc, out, err = await asyncio.to_thread(
        run, "root", "id -un; hostname; sshd -T | grep -E '^(permitrootlogin|passwordauthentication) '; "
        "cloud-init status; findmnt -no SOURCE /")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["root", f"paygress-{r.vmid}"]
    assert "permitrootlogin yes" in lines and "passwordauthentication yes" in lines
    assert "status: done" in lines  # cloud-init consumed the seed without errors
    assert lines[-1] == "/dev/vda"  # root is the overlay

    rc, out, err = await asyncio.to_thread(run, "carol", "id -un; sudo -n id -un; test -d /home/carol && echo home")
    assert rc == 0, err
    assert out.splitlines() == ["carol", "root", "home"]

    await b.delete(r.vmid)
    assert await b.status(r.vmid) == VmState.ABSENT

"""reserve()/release()/capacity(): in-memory, instant, and refusing before any money moves."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from paygressd.config import KvmSection
from paygressd.vm.backend import CapacityError
from paygressd.vm.host import cpu_millicores_total, memory_mb_total
from paygressd.vm.kvm import KvmBackend
from tests.support.guest import free_port_block


def backend(tmp_path: Path, **over: object) -> KvmBackend:
    data: dict[str, object] = {"base_image": tmp_path / "base.qcow2", "vm_root": tmp_path / "vm",
                               "vmid_range": (1000, 1002), "ssh_port_range": free_port_block(4),
                               "listen_address": "127.0.0.1", "reserved_memory_mb": 0}
    data.update(over)
    return KvmBackend(KvmSection.model_validate(data))


def test_ids_and_ports_are_distinct_lowest_first_and_reused_after_release(tmp_path: Path) -> None:
    b = backend(tmp_path)
    lo = b.cfg.ssh_port_range[0]
    r1, r2 = b.reserve(100, 512, 1), b.reserve(100, 512, 1)
    assert (r1.vmid, r1.port, r2.vmid, r2.port) == (1000, lo, 1001, lo + 1)
    b.release(r1)
    r3 = b.reserve(100, 512, 1)
    assert (r3.vmid, r3.port) == (1000, lo)


def test_no_free_id_is_a_capacity_error(tmp_path: Path) -> None:
    b = backend(tmp_path, vmid_range=(7, 8))
    b.reserve(10, 512, 1)
    b.reserve(10, 512, 1)
    with pytest.raises(CapacityError, match="no free VM id: all 2 are in use"):
        b.reserve(10, 512, 1)


def test_a_leftover_vm_directory_holds_its_id(tmp_path: Path) -> None:
    b = backend(tmp_path)
    (tmp_path / "vm" / "1000").mkdir(parents=True)
    assert b.reserve(10, 512, 1).vmid == 1001


def test_port_in_use_on_the_listen_address_is_skipped(tmp_path: Path) -> None:
    b = backend(tmp_path)
    lo = b.cfg.ssh_port_range[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", lo))
        s.listen(1)
        assert b.reserve(10, 512, 1).port == lo + 1


def test_all_ports_busy_is_a_capacity_error(tmp_path: Path) -> None:
    b = backend(tmp_path, vmid_range=(1, 50))
    lo, hi = b.cfg.ssh_port_range
    for _ in range(lo, hi + 1):
        b.reserve(1, 512, 1)
    with pytest.raises(CapacityError, match=f"no free SSH port in {lo}-{hi} on 127.0.0.1"):
        b.reserve(1, 512, 1)


def test_memory_and_cpu_limits_follow_the_host_and_the_reservations(tmp_path: Path) -> None:
    b = backend(tmp_path, reserved_memory_mb=256, reserved_cpu_millicores=100)
    cap = b.capacity()
    assert cap.cpu_millicores_total == cpu_millicores_total() - 100
    assert cap.memory_mb_total == memory_mb_total() - 256
    assert cap.memory_mb_free == cap.memory_mb_total and cap.cpu_millicores_free == cap.cpu_millicores_total
    with pytest.raises(CapacityError, match="not enough memory"):
        b.reserve(100, cap.memory_mb_free + 1, 1)
    with pytest.raises(CapacityError, match="not enough CPU"):
        b.reserve(cap.cpu_millicores_free + 1, 512, 1)
    with pytest.raises(CapacityError, match="not enough disk"):
        b.reserve(100, 512, cap.disk_gb_free + 1)
    r = b.reserve(1000, 300, 2)
    assert r.memory_mb == 512  # held at what qemu really gets
    after = b.capacity()
    assert after.memory_mb_free == cap.memory_mb_free - 512
    assert after.cpu_millicores_free == cap.cpu_millicores_free - 1000
    assert after.disk_gb_free <= cap.disk_gb_free - 1
    b.release(r)
    assert b.capacity().memory_mb_free == cap.memory_mb_free

"""Fixtures for the VM suite: a started KvmBackend on the mini or full guest, cleaned up whatever happens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paygressd.vm.kvm import KvmBackend
from tests.support.guest import kvm_section, missing_reason


async def _started(flavour: str, vm_root: Path) -> KvmBackend:
    why = missing_reason(flavour)
    if why is not None:
        pytest.skip(why)
    b = KvmBackend(kvm_section(flavour, vm_root))
    await b.start()
    return b


async def _cleanup(vm_root: Path) -> None:
    # a fresh backend with nothing wanted removes every VM (and qemu) under vm_root
    await KvmBackend(kvm_section("mini", vm_root)).reconcile([])


@pytest.fixture
async def mini_backend(tmp_path: Path) -> AsyncIterator[KvmBackend]:
    vm_root = tmp_path / "vm"
    try:
        yield await _started("mini", vm_root)
    finally:
        await _cleanup(vm_root)


@pytest.fixture
async def full_backend(tmp_path: Path) -> AsyncIterator[KvmBackend]:
    vm_root = tmp_path / "vm"
    try:
        yield await _started("full", vm_root)
    finally:
        await _cleanup(vm_root)

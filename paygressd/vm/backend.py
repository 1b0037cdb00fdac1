"""What the provider core needs from a compute backend (protocol §6.1), in paygressd's own terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class VmState(StrEnum):
    RUNNING = "running"  # qemu alive and the guest reported ready (marker + SSH banner)
    STARTING = "starting"  # qemu alive, guest not ready yet
    STOPPED = "stopped"  # the VM directory exists, qemu is not running
    ABSENT = "absent"  # nothing of this VM exists


@dataclass(frozen=True)
class Reservation:
    """Resources held for one VM from reserve() until release()/delete(). Values are the effective ones
    (memory and disk already clamped to what the VM will really get)."""

    vmid: int
    port: int
    cpu_millicores: int
    memory_mb: int
    disk_gb: int


@dataclass(frozen=True)
class VmRequest:
    reservation: Reservation
    password: str
    guest_user: str | None


@dataclass(frozen=True)
class Capacity:
    cpu_millicores_free: int
    memory_mb_free: int
    disk_gb_free: int
    cpu_millicores_total: int = 0
    memory_mb_total: int = 0
    disk_gb_total: int = 0


@dataclass(frozen=True)
class WantedVm:
    """A VM the lease store says must exist."""

    vmid: int
    port: int
    cpu_millicores: int
    memory_mb: int
    disk_gb: int


@dataclass
class ReconcileReport:
    adopted: list[int] = field(default_factory=list)
    restarted: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class CapacityError(Exception):
    """Not enough CPU/memory/disk, or no free id or port. str() is fit for an operator or a consumer."""


class BackendError(Exception):
    """The backend could not do what was asked (qemu failed to start, image missing, ...)."""


class Backend(Protocol):
    isolation_level: str
    accel: str

    async def start(self) -> None: ...

    def reserve(self, cpu_millicores: int, memory_mb: int, disk_gb: int) -> Reservation: ...

    def release(self, r: Reservation) -> None: ...

    async def create(self, req: VmRequest) -> None: ...

    async def wait_ready(self, vmid: int, timeout: float) -> bool: ...  # noqa: ASYNC109 (interface)

    async def status(self, vmid: int) -> VmState: ...

    async def stop(self, vmid: int) -> None: ...

    async def delete(self, vmid: int) -> None: ...

    def capacity(self) -> Capacity: ...

    async def reconcile(self, wanted: list[WantedVm]) -> ReconcileReport: ...

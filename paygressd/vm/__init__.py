"""The compute backend: qemu VMs (KVM, or TCG where KVM cannot boot guests)."""

from paygressd.vm.backend import (
    Backend,
    BackendError,
    Capacity,
    CapacityError,
    ReconcileReport,
    Reservation,
    VmRequest,
    VmState,
    WantedVm,
)

__all__ = [
    "Backend",
    "BackendError",
    "Capacity",
    "CapacityError",
    "ReconcileReport",
    "Reservation",
    "VmRequest",
    "VmState",
    "WantedVm",
]

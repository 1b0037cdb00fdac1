"""Capacity figures for heartbeats: what the host has left for new leases, in upstream's units."""

from __future__ import annotations

from paygressd.provider.ports import Backend
from paygressd.wire.models import AvailableCapacity


def available_capacity(backend: Backend) -> AvailableCapacity:
    cap = backend.capacity()
    total_cpu = max(1, cap.cpu_millicores_total)
    return AvailableCapacity(
        # Upstream's unit: the free fraction of the host's CPU × 100 000.
        cpu_available=max(0, cap.cpu_millicores_free) * 100_000 // total_cpu,
        memory_mb_available=max(0, cap.memory_mb_free),
        storage_gb_available=max(0, cap.disk_gb_free),
    )

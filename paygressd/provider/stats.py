"""Real figures for offers and heartbeats: active leases, capacity left, jobs completed, measured uptime."""

from __future__ import annotations

import time
from collections.abc import Callable

from paygressd.provider.ports import Backend
from paygressd.store import Store
from paygressd.wire.models import AvailableCapacity


class ProviderStats:
    """Uptime = seconds this daemon has been running / seconds since its first start, persisted in the store."""

    def __init__(self, store: Store, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.backend = backend
        self.clock = clock
        now = clock()
        self.first_started = store.set_counter_if_absent("first_started_at", int(now))
        self._last_tick = now
        self._carry = 0.0

    def tick(self) -> None:
        now = self.clock()
        self._carry += max(0.0, now - self._last_tick)
        self._last_tick = now
        whole = int(self._carry)
        if whole:
            self.store.add_counter("running_seconds", whole)
            self._carry -= whole

    def active_workloads(self) -> int:
        return len(self.store.active_leases())

    def jobs_completed(self) -> int:
        return self.store.counter("jobs_completed")

    def uptime_percent(self) -> float:
        self.tick()
        span = self.clock() - self.first_started
        if span < 1:
            return 100.0
        running = self.store.counter("running_seconds") + self._carry
        return round(min(100.0, 100.0 * running / span), 2)

    def available_capacity(self) -> AvailableCapacity:
        cap = self.backend.capacity()
        total_cpu = max(1, cap.cpu_millicores_total)
        return AvailableCapacity(
            # Upstream's unit: the free fraction of the host's CPU × 100 000.
            cpu_available=max(0, cap.cpu_millicores_free) * 100_000 // total_cpu,
            memory_mb_available=max(0, cap.memory_mb_free),
            storage_gb_available=max(0, cap.disk_gb_free),
        )

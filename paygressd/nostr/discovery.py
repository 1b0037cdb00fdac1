"""Being findable: the kind-38383 offer, the 38384 + 20384 heartbeats and a kind-10050 inbox-relay list.

Unlike upstream (offer once at start, uptime hard-coded 100 %, jobs always 0; §8 item 13) the offer is
re-published every ``offer_interval_seconds``, whenever its tiers/mints/capabilities change, and after a
failed publish; its ``uptime_percent`` and ``total_jobs_completed`` are real figures from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from nostr_sdk import Event, Keys

from paygressd.config import Config
from paygressd.logging import get_logger
from paygressd.nostr import events
from paygressd.store import Store
from paygressd.wire.models import AvailableCapacity, HeartbeatContent, OfferContent

log = get_logger(__name__)

UPTIME_FIRST_START = "uptime_first_start"
UPTIME_RUNNING_SECONDS = "uptime_running_seconds"
JOBS_COMPLETED = "jobs_completed"
# What a KVM provider reports upstream (§2.10): no consumer reads it.
DEFAULT_CAPACITY = AvailableCapacity(cpu_available=100_000, memory_mb_available=0, storage_gb_available=0)


class DiscoveryStats(Protocol):
    def active_workloads(self) -> int: ...

    def available_capacity(self) -> AvailableCapacity: ...

    def jobs_completed(self) -> int: ...

    def uptime_percent(self) -> float: ...


class Publisher(Protocol):
    async def publish(self, event: Event) -> bool: ...


class StoreStats:
    """DiscoveryStats from the store; uptime survives restarts.

    uptime = seconds the daemon has been running / seconds since its first ever start, both kept as store
    counters. Running time is accounted on every call (the heartbeat calls it each beat), so a crash loses at
    most one heartbeat interval of credit.
    """

    def __init__(
        self,
        store: Store,
        *,
        capacity: Callable[[], AvailableCapacity] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._capacity = capacity
        self._now = now
        self._accounted = now()
        store.set_counter_if_absent(UPTIME_FIRST_START, int(self._accounted))

    def account(self) -> None:
        t = self._now()
        delta = int(t - self._accounted)
        if delta > 0:
            self.store.add_counter(UPTIME_RUNNING_SECONDS, delta)
            self._accounted += delta

    def active_workloads(self) -> int:
        return len(self.store.active_leases())

    def available_capacity(self) -> AvailableCapacity:
        return self._capacity() if self._capacity is not None else DEFAULT_CAPACITY

    def jobs_completed(self) -> int:
        return self.store.counter(JOBS_COMPLETED)

    def uptime_percent(self) -> float:
        self.account()
        span = int(self._now()) - self.store.counter(UPTIME_FIRST_START)
        if span <= 0:
            return 100.0
        running = self.store.counter(UPTIME_RUNNING_SECONDS)
        return max(0.0, min(100.0, 100.0 * running / span))


class Discovery:
    def __init__(
        self,
        transport: Publisher,
        keys: Keys,
        config: Config,
        stats: DiscoveryStats,
        isolation_level: str,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.keys = keys
        self.provider_hex: str = str(keys.public_key().to_hex())
        self.config = config
        self.stats = stats
        self.isolation_level = isolation_level
        self._now = now
        self._wake = asyncio.Event()
        self._published_static: dict[str, Any] | None = None
        self._offer_ok = False
        self._stopped = False
        self.offers_published = 0
        self.beats_published = 0

    # ------------------------------------------------------------ pure content

    def offer_content(self) -> OfferContent:
        return events.offer_content(
            self.provider_hex, self.config, uptime_percent=self.stats.uptime_percent(),
            jobs_completed=self.stats.jobs_completed(), isolation_level=self.isolation_level,
        )

    def heartbeat_content(self) -> HeartbeatContent:
        return events.heartbeat_content(
            self.provider_hex, int(self._now()), self.stats.active_workloads(), self.stats.available_capacity()
        )

    @staticmethod
    def _static_part(offer: OfferContent) -> dict[str, Any]:
        wire = offer.to_wire()
        wire.pop("uptime_percent", None)
        wire.pop("total_jobs_completed", None)
        return wire

    # ------------------------------------------------------------ publishing

    async def publish_offer(self) -> bool:
        offer = self.offer_content()
        ok = await self.transport.publish(events.offer_event(self.keys, offer))
        self._offer_ok = ok
        if ok:
            self._published_static = self._static_part(offer)
            self.offers_published += 1
            log.info("offer_published", tiers=[s.id for s in offer.specs], jobs=offer.total_jobs_completed,
                     uptime=offer.uptime_percent)
        else:
            log.error("offer_publish_failed")
        return ok

    async def publish_inbox_relays(self) -> bool:
        return await self.transport.publish(events.inbox_relays_event(self.keys, list(self.config.nostr.relays)))

    async def beat(self) -> bool:
        stored, live = events.heartbeat_events(self.keys, self.heartbeat_content())
        ok_stored, _ok_live = await asyncio.gather(self.transport.publish(stored), self.transport.publish(live))
        if ok_stored:
            self.beats_published += 1
        else:
            log.warning("heartbeat_publish_failed")
        return bool(ok_stored)

    def set_config(self, config: Config) -> None:
        """New tiers/mints/etc.: the offer is re-published right away if its content changed."""
        self.config = config
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        interval = self.config.provider.heartbeat_interval_seconds
        await self.publish_offer()
        await self.publish_inbox_relays()
        await self.beat()
        next_offer = self._now() + self.config.provider.offer_interval_seconds
        next_beat = self._now() + interval
        while not self._stopped:
            timeout = max(0.0, min(next_beat, next_offer) - self._now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._stopped:
                break
            now = self._now()
            changed = self._static_part(self.offer_content()) != self._published_static
            if changed or not self._offer_ok or now >= next_offer:
                await self.publish_offer()
                await self.publish_inbox_relays()
                next_offer = self._now() + self.config.provider.offer_interval_seconds
            if now >= next_beat:
                await self.beat()
                next_beat = max(next_beat + self.config.provider.heartbeat_interval_seconds, self._now() + 1)

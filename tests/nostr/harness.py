"""Test harness for the Nostr transport: a provider-side transport + request loop with a simple recording
handler, the paygress-cli-like consumer, and a few relay queries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from nostr_sdk import Event, Filter, Keys, Kind, PublicKey, ReqTarget, Timestamp

from paygressd.config import Config
from paygressd.consumer import Consumer
from paygressd.nostr.inbox import Inbox
from paygressd.nostr.transport import Inbound, NostrTransport
from paygressd.store import Store
from paygressd.wire import errors
from paygressd.wire.dispatch import Request
from paygressd.wire.models import SpawnRequest, StatusReply, StatusRequest, TopUpReply, WireModel, rfc3339


@dataclass
class Recorder:
    """The test handler: answers like a provider would, from the request alone, and records every call."""

    calls: list[tuple[Inbound, Request]] = field(default_factory=list)
    delay: dict[type, float] = field(default_factory=dict)

    async def __call__(self, inbound: Inbound, request: Request) -> WireModel:
        self.calls.append((inbound, request))
        await asyncio.sleep(self.delay.get(type(request), 0.0))
        now = int(time.time())
        if isinstance(request, StatusRequest):
            return StatusReply(
                pod_id=request.pod_id, status="Running", expires_at=rfc3339(now + 600), time_remaining_seconds=600,
                cpu_millicores=1000, memory_mb=1024, ssh_host="127.0.0.1", ssh_port=31000, ssh_username="root",
            )
        if isinstance(request, SpawnRequest):
            return errors.no_specs()
        return TopUpReply(success=True, pod_npub=request.pod_npub, extended_duration_seconds=60,
                          new_expires_at=rfc3339(now + 60), message="Lease extended by 60s (3000 msats @ 50 msats/sec)")

    def kinds(self) -> list[str]:
        return [type(r).__name__ for _, r in self.calls]


@dataclass
class ProviderUnderTest:
    keys: Keys
    transport: NostrTransport
    inbox: Inbox
    handler: Recorder
    task: asyncio.Task[None]

    @property
    def hex(self) -> str:
        return str(self.keys.public_key().to_hex())


FAST = {"tick": 0.2, "connect_wait": 3.0, "send_attempts": 3, "send_backoff": 0.2, "ok_timeout": 5.0}


@asynccontextmanager
async def running_provider(
    relays: list[str],
    store_path: Path,
    keys: Keys | None = None,
    handler: Recorder | None = None,
    *,
    inbox_kwargs: dict[str, Any] | None = None,
    **transport_kwargs: Any,
) -> AsyncIterator[ProviderUnderTest]:
    keys = keys or Keys.generate()
    store = Store(store_path)
    kwargs = {**FAST, **transport_kwargs}
    transport = NostrTransport(keys, relays, store, **kwargs)
    handler = handler or Recorder()
    ib = {"max_concurrent": 8, "request_max_age": 120, "rate_limit_requests": 30, "rate_limit_window": 60}
    ib.update(inbox_kwargs or {})
    inbox = Inbox(transport, handler, **ib)
    await transport.start()
    task = asyncio.create_task(inbox.run())
    try:
        yield ProviderUnderTest(keys, transport, inbox, handler, task)
    finally:
        inbox.stop()
        await inbox.drain(5)
        await transport.close()
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        store.close()


@asynccontextmanager
async def consumer(relays: list[str], keys: Keys | None = None) -> AsyncIterator[Consumer]:
    c = Consumer(keys or Keys.generate(), relays, connect_wait=3.0)
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def provider_dms_to(c: Consumer, provider_hex: str, since: int) -> list[Event]:
    """Every kind-4 event the provider addressed to this consumer since ``since`` (deduplicated by id)."""
    flt = (
        Filter().kinds([Kind(4)]).author(PublicKey.parse(provider_hex)).pubkey(c.keys.public_key())
        .since(Timestamp.from_secs(since))
    )
    found = await c._client.fetch_events(ReqTarget.auto([flt]), timeout=timedelta(seconds=3))
    unique = {str(e.id().to_hex()): e for e in found}
    return list(unique.values())


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], within: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return True
        await asyncio.sleep(interval)
    return False


def make_config(tmp_path: Path, relays: list[str], **provider: Any) -> Config:
    return Config.model_validate(
        {
            "provider": {"public_ip": "203.0.113.7", "key_file": str(tmp_path / "key"),
                         "state_dir": str(tmp_path / "state"), "heartbeat_interval_seconds": 1,
                         "offer_interval_seconds": 600, **provider},
            "nostr": {"relays": relays},
            "cashu": {"mints": ["http://127.0.0.1:3338/"]},
            "kvm": {"base_image": str(tmp_path / "base.qcow2"), "vm_root": str(tmp_path / "vms")},
            "tier": [
                {"id": "basic", "name": "Basic", "description": "1 vCPU, 1GB RAM", "cpu_millicores": 1000,
                 "memory_mb": 1024, "rate_msats_per_sec": 50, "disk_gb": 5},
                {"id": "standard", "name": "Standard", "description": "2 vCPU, 2GB RAM", "cpu_millicores": 2000,
                 "memory_mb": 2048, "rate_msats_per_sec": 100},
            ],
        }
    )

"""Unit tests without a relay: event shapes, the rate limiter, and the request loop against a fake transport."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from nostr_sdk import Keys, nip04_decrypt

from paygressd.nostr import events
from paygressd.nostr.inbox import Inbox, RateLimiter, Verdict
from paygressd.nostr.transport import Inbound
from paygressd.wire.dispatch import Request
from paygressd.wire.models import AvailableCapacity, ErrorReply, StatusReply, WireModel, rfc3339
from tests.nostr.harness import make_config

# ---------------------------------------------------------------- event shapes


def test_offer_and_heartbeat_tags_match_protocol() -> None:
    hex_ = "ee6afe4b4a6e4fe49d6c35359d1161a6fd26fbe5d6eefcbab1c9c147731bf08a"
    assert events.offer_tags(hex_) == [
        ["t", "paygress"], ["t", "compute"], ["d", f"paygress:offer:v1:{hex_}"], ["v", "1"],
    ]
    assert events.heartbeat_tags(hex_, 1780000000, stored=True) == [
        ["t", "paygress-heartbeat"], ["p", hex_], ["d", f"paygress:heartbeat:v1:{hex_}:29666666"], ["v", "1"],
    ]
    assert events.heartbeat_tags(hex_, 1780000000, stored=False) == [
        ["t", "paygress-heartbeat"], ["p", hex_], ["v", "1"],
    ]


def test_offer_content_matches_the_upstream_example_shape(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, ["ws://127.0.0.1:1"], name="SwiftGoldenOwl", location="DE",
                      capabilities=["lxc", "vm"])
    hex_ = "ee6afe4b4a6e4fe49d6c35359d1161a6fd26fbe5d6eefcbab1c9c147731bf08a"
    offer = events.offer_content(hex_, cfg, uptime_percent=99.5, jobs_completed=3, isolation_level="dedicated-host")
    wire = json.loads(offer.to_json())
    assert list(wire) == ["provider_npub", "hostname", "location", "capabilities", "specs", "whitelisted_mints",
                          "uptime_percent", "total_jobs_completed", "api_endpoint", "version", "isolation_level"]
    assert wire["specs"][1] == {"id": "standard", "name": "Standard", "description": "2 vCPU, 2GB RAM",
                                "cpu_millicores": 2000, "memory_mb": 2048, "rate_msats_per_sec": 100}
    assert wire["uptime_percent"] == 99.5 and isinstance(wire["uptime_percent"], float)
    assert wire["total_jobs_completed"] == 3 and wire["api_endpoint"] is None and wire["version"] == 1


def test_signed_events_carry_the_exact_tags() -> None:
    keys, other = Keys.generate(), Keys.generate()
    hex_ = str(keys.public_key().to_hex())
    dm = events.nip04_dm_event(keys, str(other.public_key().to_hex()), '{"pod_id":"1"}')
    assert dm.kind().as_u16() == 4
    assert events.tags_of(dm) == [["p", str(other.public_key().to_hex())], ["alt", "Private Message"]]
    assert nip04_decrypt(other.secret_key(), keys.public_key(), dm.content()) == '{"pod_id":"1"}'
    hb = events.heartbeat_content(hex_, 1780000000, 2, AvailableCapacity(cpu_available=100000, memory_mb_available=0,
                                                                         storage_gb_available=0))
    stored, live = events.heartbeat_events(keys, hb)
    assert (stored.kind().as_u16(), live.kind().as_u16()) == (38384, 20384)
    assert stored.content() == live.content() == hb.to_json()
    assert events.tags_of(live) == [["t", "paygress-heartbeat"], ["p", hex_], ["v", "1"]]
    assert events.tags_of(stored)[-1] == ["expiration", str(1780000000 + 3600)]


# ---------------------------------------------------------------- rate limiter


def test_rate_limiter_allows_then_warns_once_then_drops_until_window_ends() -> None:
    rl = RateLimiter(limit=3, window=60)
    verdicts = [rl.check("a", 1000.0 + i) for i in range(6)]
    assert verdicts == [Verdict.ALLOW] * 3 + [Verdict.WARN, Verdict.DROP, Verdict.DROP]
    assert rl.check("b", 1005.0) is Verdict.ALLOW  # per requester
    assert rl.check("a", 1060.0) is Verdict.ALLOW  # new window


def test_rate_limiter_table_is_bounded() -> None:
    rl = RateLimiter(limit=1, window=60, max_tracked=100)
    for i in range(10_000):
        rl.check(f"k{i}", 1000.0)
    assert len(rl) <= 100


# ---------------------------------------------------------------- request loop with a fake transport


class FakeTransport:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Inbound | None] = asyncio.Queue()
        self.sent: list[tuple[str, str, str, float]] = []

    async def inbox(self) -> AsyncIterator[Inbound]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def send_dm(self, to_hex: str, scheme: str, payload_json: str) -> bool:
        self.sent.append((to_hex, scheme, payload_json, time.monotonic()))
        return True


def _inbound(i: int, content: str, requester: str = "aa" * 32, age: int = 0, scheme: str = "nip04") -> Inbound:
    return Inbound(event_id=f"{i:064x}", requester=requester, scheme=scheme,  # type: ignore[arg-type]
                   created_at=int(time.time()) - age, content=content)


async def _status_handler(inbound: Inbound, request: Request) -> WireModel:
    await asyncio.sleep(5 if "cashu_token" in inbound.content else 0)  # spawns are slow
    return StatusReply(pod_id="1", status="Running", expires_at=rfc3339(0), time_remaining_seconds=0,
                       cpu_millicores=1, memory_mb=1, ssh_host="h", ssh_port=1, ssh_username="root")


async def test_slow_spawns_do_not_delay_status_and_stale_spawn_skips_handler() -> None:
    t = FakeTransport()
    calls: list[str] = []

    async def handler(inbound: Inbound, request: Request) -> WireModel:
        calls.append(type(request).__name__)
        return await _status_handler(inbound, request)

    inbox = Inbox(t, handler, max_concurrent=2, request_max_age=120, rate_limit_requests=100, rate_limit_window=60)
    runner = asyncio.create_task(inbox.run())
    spawn = '{"cashu_token":"cashuBx","pod_spec_id":"basic","pod_image":"i","ssh_username":"u","ssh_password":"p"}'
    for i in range(4):  # more spawns than the spawn lane's concurrency
        await t.queue.put(_inbound(i, spawn, requester=f"{i:064x}"))
    await t.queue.put(_inbound(10, spawn, requester="bb" * 32, age=500))  # stale
    start = time.monotonic()
    await t.queue.put(_inbound(11, '{"pod_id":"1"}', requester="cc" * 32, scheme="nip17"))
    for _ in range(50):
        if len(t.sent) >= 2:
            break
        await asyncio.sleep(0.02)
    by_to = {to: (scheme, json.loads(body), at) for to, scheme, body, at in t.sent}
    assert by_to["cc" * 32][0] == "nip17" and by_to["cc" * 32][1]["pod_id"] == "1"
    assert by_to["cc" * 32][2] - start < 1.0
    stale = ErrorReply.model_validate(by_to["bb" * 32][1])
    assert stale.error_type == "stale_request" and "500s" in stale.message
    assert calls.count("SpawnRequest") == 2  # two running, two waiting; the stale one never reached it
    inbox.stop()
    await asyncio.wait_for(runner, 2)
    for task in list(inbox._tasks):
        task.cancel()


async def test_stop_accepting_refuses_new_requests_and_drain_waits() -> None:
    t = FakeTransport()
    done: list[int] = []

    async def handler(inbound: Inbound, request: Request) -> WireModel:
        await asyncio.sleep(0.3)
        done.append(1)
        return await _status_handler(inbound, request)

    inbox = Inbox(t, handler, max_concurrent=4, request_max_age=120, rate_limit_requests=100, rate_limit_window=60)
    runner = asyncio.create_task(inbox.run())
    await t.queue.put(_inbound(1, '{"pod_id":"1"}'))
    await asyncio.sleep(0.05)
    inbox.stop_accepting()
    await t.queue.put(_inbound(2, '{"pod_id":"2"}', requester="dd" * 32))
    await asyncio.sleep(0.05)
    await inbox.drain(5)
    assert done == [1]
    replies = {to: json.loads(body) for to, _, body, _ in t.sent}
    assert replies["dd" * 32]["error_type"] == "shutting_down"
    assert replies["aa" * 32]["pod_id"] == "1"
    await t.queue.put(None)
    await asyncio.wait_for(runner, 2)


async def test_handler_exception_still_yields_exactly_one_reply() -> None:
    t = FakeTransport()

    async def broken(inbound: Inbound, request: Request) -> WireModel:
        raise RuntimeError("boom")

    inbox = Inbox(t, broken, max_concurrent=1, request_max_age=120, rate_limit_requests=10, rate_limit_window=60)
    runner = asyncio.create_task(inbox.run())
    await t.queue.put(_inbound(1, '{"pod_id":"1"}'))
    await asyncio.sleep(0.1)
    await inbox.drain(1)
    assert len(t.sent) == 1
    assert json.loads(t.sent[0][2])["error_type"] == "backend_error"
    await t.queue.put(None)
    await asyncio.wait_for(runner, 2)

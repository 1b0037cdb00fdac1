"""Request/reply through a real LocalRelay: what a paygress-cli consumer observes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from nostr_sdk import Keys

from paygressd.consumer import classify
from paygressd.nostr import events
from paygressd.wire.models import ErrorReply, StatusReply, StatusRequest
from tests.nostr.harness import consumer, provider_dms_to, running_provider, wait_for
from tests.support.relay import TestRelay

pytestmark = pytest.mark.relay


async def test_nip04_status_round_trip_and_reply_shape(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov, consumer([relay.url]) as c:
        started = int(time.time())
        reply = await c.status(prov.hex, "container-1000", timeout=15)
        assert isinstance(reply, StatusReply)
        assert reply.pod_id == "container-1000"
        assert len(prov.handler.calls) == 1
        inbound, request = prov.handler.calls[0]
        assert request == StatusRequest(pod_id="container-1000")
        assert inbound.scheme == "nip04"
        assert inbound.requester == c.pubkey_hex
        # The reply event exactly as §1.8: kind 4 by the provider, tags p + alt, created_at now, no expiration.
        dms = await provider_dms_to(c, prov.hex, started - 5)
        assert len(dms) == 1
        ev = events.event_json(dms[0])
        assert ev["kind"] == 4
        assert ev["tags"] == [["p", c.pubkey_hex], ["alt", "Private Message"]]
        assert abs(int(str(ev["created_at"])) - int(time.time())) < 30
        assert "?iv=" in str(ev["content"])


async def test_nip17_round_trip(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov, consumer([relay.url]) as c:
        reply = await c.status(prov.hex, "1000", timeout=15, scheme="nip17")
        assert isinstance(reply, StatusReply)
        assert reply.pod_id == "1000"
        inbound, _ = prov.handler.calls[0]
        assert inbound.scheme == "nip17"
        assert inbound.requester == c.pubkey_hex
        # No kind-4 reply was sent for a NIP-17 request: the reply used the request's scheme.
        assert await provider_dms_to(c, prov.hex, int(time.time()) - 60) == []


async def test_invalid_request_gets_invalid_request_and_handler_not_called(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov, consumer([relay.url]) as c:
        raw = await c.request(prov.hex, "this is not json", timeout=15)
        assert raw is not None
        reply = classify(raw, ErrorReply)
        assert isinstance(reply, ErrorReply)
        assert reply.error_type == "invalid_request"
        assert json.loads(raw)["details"].startswith("JSON parsing failed:")
        assert prov.handler.calls == []


async def test_nip42_relay_requires_auth_and_round_trip_still_works(tmp_path: Path) -> None:
    relay = TestRelay(nip42=True)
    await relay.start()
    try:
        async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov, consumer([relay.url]) as c:
            reply = await c.status(prov.hex, "1000", timeout=20)
            assert isinstance(reply, StatusReply)
            assert prov.transport.relay_states() == {relay.url: "connected"}
    finally:
        await relay.stop()


async def test_same_event_from_two_relays_gets_one_reply(relay: TestRelay, relay2: TestRelay, tmp_path: Path) -> None:
    urls = [relay.url, relay2.url]
    async with running_provider(urls, tmp_path / "db.sqlite3") as prov, consumer(urls) as c:
        started = int(time.time())
        reply = await c.status(prov.hex, "1000", timeout=15)
        assert isinstance(reply, StatusReply)
        # Both relays delivered the request; give the second copy time to arrive and be dropped.
        assert await wait_for(lambda: prov.transport.stats["duplicates"] >= 1, 5)
        await asyncio.sleep(0.5)
        assert len(prov.handler.calls) == 1
        dms = await provider_dms_to(c, prov.hex, started - 5)
        assert len(dms) == 1  # one reply event (published to both relays, same id)


async def test_restart_with_same_store_answers_nothing_twice(relay: TestRelay, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    keys = Keys.generate()
    provider_hex = str(keys.public_key().to_hex())
    # Two consumers: paygress-cli takes the first provider DM of the last 60 s as "the" reply.
    async with consumer([relay.url]) as c1, consumer([relay.url]) as c2:
        started = int(time.time())
        async with running_provider([relay.url], db, keys=keys) as prov:
            assert isinstance(await c1.status(prov.hex, "1000", timeout=15), StatusReply)
            assert isinstance(await c2.status(prov.hex, "1001", timeout=15), StatusReply)
        # New transport and request loop on the same store: the relay re-delivers both requests (look-back).
        async with running_provider([relay.url], db, keys=keys) as again:
            assert await wait_for(lambda: again.transport.stats["already_processed"] >= 2, 10)
            await asyncio.sleep(0.5)
            assert again.handler.calls == []
        assert len(await provider_dms_to(c1, provider_hex, started - 5)) == 1
        assert len(await provider_dms_to(c2, provider_hex, started - 5)) == 1

"""Offer and heartbeats as paygress-cli's `list` sees them, through a real LocalRelay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nostr_sdk import Filter, Keys, Kind, ReqTarget

from paygressd.consumer import resolve_provider
from paygressd.nostr import events
from paygressd.nostr.discovery import Discovery, StoreStats
from paygressd.nostr.transport import NostrTransport
from paygressd.store import Store
from tests.nostr.harness import FAST, consumer, make_config, wait_for
from tests.support.relay import TestRelay

pytestmark = pytest.mark.relay


async def test_offer_listed_online_with_real_figures(relay: TestRelay, tmp_path: Path) -> None:
    keys = Keys.generate()
    hex_ = str(keys.public_key().to_hex())
    cfg = make_config(tmp_path, [relay.url], name="TestOwl", location="DE")
    store = Store(tmp_path / "db.sqlite3")
    store.add_counter("jobs_completed", 7)
    transport = NostrTransport(keys, [relay.url], store, **FAST)
    await transport.start()
    discovery = Discovery(transport, keys, cfg, StoreStats(store), "dedicated-host")
    task = asyncio.create_task(discovery.run())
    try:
        assert await wait_for(lambda: discovery.beats_published >= 1, 10)
        async with consumer([relay.url]) as c:
            listings = await c.list_offers()
            [listing] = listings
            assert listing.online
            assert listing.author == hex_
            offer = listing.offer
            assert offer.provider_npub == hex_
            assert offer.hostname == "TestOwl" and offer.location == "DE"
            assert [s.id for s in offer.specs] == ["basic", "standard"]
            assert offer.specs[0].model_dump() == {"id": "basic", "name": "Basic", "description": "1 vCPU, 1GB RAM",
                                                   "cpu_millicores": 1000, "memory_mb": 1024,
                                                   "rate_msats_per_sec": 50}
            assert offer.whitelisted_mints == ["http://127.0.0.1:3338"]
            assert offer.total_jobs_completed == 7
            assert 0.0 <= offer.uptime_percent <= 100.0
            assert offer.api_endpoint is None and offer.version == 1
            assert offer.isolation_level == "dedicated-host"
            assert resolve_provider(listings, hex_) is listing
            assert resolve_provider(listings, keys.public_key().to_bech32()) is listing
            assert resolve_provider(listings, "testowl") is listing
            assert resolve_provider(listings, hex_[:10]) is listing

            # The raw events: tags exactly as §1.3 / §1.4.
            found = await c._client.fetch_events(ReqTarget.auto([Filter().kinds([Kind(38383)]).hashtag("paygress")]))
            [offer_ev] = list(found)
            assert events.tags_of(offer_ev) == [["t", "paygress"], ["t", "compute"],
                                                ["d", f"paygress:offer:v1:{hex_}"], ["v", "1"]]
            hb_filter = Filter().kinds([Kind(38384)]).author(keys.public_key())
            beat = next(iter(await c._client.fetch_events(ReqTarget.auto([hb_filter]))))
            content = json.loads(beat.content())
            tags = events.tags_of(beat)
            assert tags[:2] == [["t", "paygress-heartbeat"], ["p", hex_]]
            assert tags[2] == ["d", f"paygress:heartbeat:v1:{hex_}:{content['timestamp'] // 60}"]
            assert tags[3] == ["v", "1"]
            assert tags[4][0] == "expiration" and int(tags[4][1]) >= content["timestamp"] + 300
            assert content["provider_npub"] == hex_ and content["version"] == 1
            assert content["active_workloads"] == 0
            inbox_relays = await c._client.fetch_events(ReqTarget.auto([Filter().kinds([Kind(10050)])]))
            assert [events.tags_of(e) for e in inbox_relays] == [[["relay", relay.url]]]
    finally:
        discovery.stop()
        await asyncio.wait_for(task, 10)
        await transport.close()
        store.close()


async def test_offer_signed_by_another_key_is_not_listed(relay: TestRelay, tmp_path: Path) -> None:
    """The consumer's author binding: an offer naming someone else's key is dropped as spoofed."""
    signer, named = Keys.generate(), Keys.generate()
    cfg = make_config(tmp_path, [relay.url])
    content = events.offer_content(str(named.public_key().to_hex()), cfg, uptime_percent=100.0, jobs_completed=0,
                                   isolation_level="dedicated-host")
    tags = events.offer_tags(str(signer.public_key().to_hex()))
    spoof = events.sign(signer, events.KIND_OFFER, content.to_json(), tags)
    async with consumer([relay.url]) as c:
        assert (await c._client.send_event(spoof)).success
        assert await c.list_offers() == []


async def test_offer_republished_when_tiers_change(relay: TestRelay, tmp_path: Path) -> None:
    keys = Keys.generate()
    cfg = make_config(tmp_path, [relay.url])
    store = Store(tmp_path / "db.sqlite3")
    transport = NostrTransport(keys, [relay.url], store, **FAST)
    await transport.start()
    discovery = Discovery(transport, keys, cfg, StoreStats(store), "dedicated-host")
    task = asyncio.create_task(discovery.run())
    try:
        assert await wait_for(lambda: discovery.offers_published >= 1, 10)
        assert discovery.offer_content().hostname == f"paygressd-{str(keys.public_key().to_hex())[:8]}"
        fewer = cfg.model_copy(update={"tier": cfg.tier[1:]})
        discovery.set_config(fewer)
        assert await wait_for(lambda: discovery.offers_published >= 2, 10)
        async with consumer([relay.url]) as c:
            [listing] = await c.list_offers()
            assert [s.id for s in listing.offer.specs] == ["standard"]
    finally:
        discovery.stop()
        await asyncio.wait_for(task, 10)
        await transport.close()
        store.close()


def test_uptime_persists_across_restarts(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    store = Store(tmp_path / "db.sqlite3")
    stats = StoreStats(store, now=lambda: clock[0])
    clock[0] += 100
    assert stats.uptime_percent() == 100.0
    # Down for 100 s, then a new process (new StoreStats) on the same store runs 200 s.
    clock[0] += 100
    again = StoreStats(store, now=lambda: clock[0])
    clock[0] += 200
    assert again.uptime_percent() == pytest.approx(75.0)
    store.close()

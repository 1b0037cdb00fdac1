"""Relay loss, downtime, stale and forged requests, rate limiting — through a real LocalRelay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nostr_sdk import (
    EventBuilder,
    Filter,
    Keys,
    Kind,
    PublicKey,
    ReqTarget,
    Tag,
    nip04_decrypt,
    nip04_encrypt,
    nip59_make_gift_wrap,
)

from paygressd.consumer import Consumer, classify
from paygressd.nostr import events
from paygressd.wire.models import ErrorReply, SpawnRequest, StatusReply, StatusRequest
from tests.nostr.harness import consumer, provider_dms_to, running_provider, wait_for
from tests.support.relay import TestRelay

pytestmark = pytest.mark.relay


async def _send_dm(c: Consumer, provider_hex: str, payload: str, created_at: int | None = None) -> str:
    """Publish one NIP-04 request exactly like the CLI does (optionally back-dated); returns its id."""
    content = nip04_encrypt(c.keys.secret_key(), PublicKey.parse(provider_hex), payload)
    event = events.sign(c.keys, 4, content, events.dm_tags(provider_hex), created_at=created_at)
    out = await c._client.send_event(event)
    assert out.success, out.failed
    return str(event.id().to_hex())


async def _replies(c: Consumer, provider_hex: str, since: int) -> list[str]:
    return [
        str(nip04_decrypt(c.keys.secret_key(), e.author(), e.content()))
        for e in await provider_dms_to(c, provider_hex, since)
    ]


async def test_relay_restart_on_same_port_then_dm_is_answered(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov:
        await relay.stop()
        assert await wait_for(lambda: prov.transport.relay_states()[relay.url] != "connected", 10)
        await relay.start()
        # nostr-sdk retries every 5 s; the watchdog then resubscribes with a fresh look-back.
        assert await wait_for(lambda: prov.transport.relay_states()[relay.url] == "connected", 20)
        async with consumer([relay.url]) as c:
            reply = await c.status(prov.hex, "1000", timeout=20)
            assert isinstance(reply, StatusReply)


async def test_relay_that_silently_stops_delivering_is_resubscribed(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider(
        [relay.url], tmp_path / "db.sqlite3", probe_interval=1.0, probe_timeout=1.0
    ) as prov:
        # Drop our subscription at the relay without the transport noticing (no CLOSED message arrives):
        # from the transport's point of view the relay just stops delivering.
        await prov.transport._client.unsubscribe("paygressd-inbox-0")
        async with consumer([relay.url]) as c:
            reply = await c.status(prov.hex, "1000", timeout=20)
            assert isinstance(reply, StatusReply)
        assert prov.transport.stats["probe_misses"] >= 1
        assert prov.transport.relay_health()[relay.url]["subscribed"] is True


async def test_dm_missed_by_the_live_subscription_is_recovered_by_catch_up(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider(
        [relay.url], tmp_path / "db.sqlite3", probe_interval=1000.0, catch_up_interval=1.0
    ) as prov:
        # The live subscription is gone (and no probe will notice): only the periodic re-query can find the DM.
        await prov.transport._client.unsubscribe("paygressd-inbox-0")
        async with consumer([relay.url]) as c:
            reply = await c.status(prov.hex, "1000", timeout=20)
            assert isinstance(reply, StatusReply)
        assert prov.transport.stats["recovered"] == 1


async def test_dm_sent_while_daemon_down_is_answered_after_start(relay: TestRelay, tmp_path: Path) -> None:
    keys = Keys.generate()
    provider_hex = str(keys.public_key().to_hex())
    async with consumer([relay.url]) as c:
        # paygress-cli sends, then waits up to 30 s; the daemon starts a few seconds later.
        waiting = asyncio.create_task(c.status(provider_hex, "1000", timeout=30))
        await asyncio.sleep(2.0)
        async with running_provider([relay.url], tmp_path / "db.sqlite3", keys=keys) as prov:
            reply = await waiting
            assert isinstance(reply, StatusReply)
            assert len(prov.handler.calls) == 1


async def test_stale_spawn_refused_untouched_but_old_status_served(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider(
        [relay.url], tmp_path / "db.sqlite3", dm_lookback=180, inbox_kwargs={"request_max_age": 120}
    ) as prov, consumer([relay.url]) as spawner, consumer([relay.url]) as asker:
        started = int(time.time())
        old = started - 150
        spawn = Consumer.spawn_payload("cashuBfake", "basic")
        await _send_dm(spawner, prov.hex, spawn, created_at=old)
        await _send_dm(asker, prov.hex, StatusRequest(pod_id="1000").to_json(), created_at=old)
        assert await wait_for(lambda: len(prov.handler.calls) >= 1, 10)
        assert await wait_for(lambda: prov.inbox.stats["replies"] >= 2, 10)
        # The spawn never reached the handler (the token was not touched) and got stale_request.
        assert [type(r) for _, r in prov.handler.calls] == [StatusRequest]
        [raw] = await _replies(spawner, prov.hex, started - 200)
        reply = classify(raw, ErrorReply)
        assert isinstance(reply, ErrorReply)
        assert reply.error_type == "stale_request"
        assert "15" in reply.message  # the age (≈150 s) is stated
        [raw_status] = await _replies(asker, prov.hex, started - 200)
        assert isinstance(classify(raw_status, StatusReply), StatusReply)


async def test_fresh_spawn_reaches_handler(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov, consumer([relay.url]) as c:
        reply = await c.spawn(prov.hex, "cashuBfake", timeout=15)
        assert isinstance(reply, ErrorReply) and reply.error_type == "no_specs"  # the recorder's answer
        [(_, request)] = prov.handler.calls
        assert isinstance(request, SpawnRequest)
        assert request.pod_spec_id == "basic" and request.ssh_username == "user" and len(request.ssh_password) == 16


async def test_forged_nip17_rumor_gets_no_reply(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov, consumer([relay.url]) as victim:
        attacker = Keys.generate()
        provider_pk = PublicKey.parse(prov.hex)
        # A rumor claiming to come from the victim, sealed and signed by the attacker.
        rumor = (
            EventBuilder(Kind(14), StatusRequest(pod_id="1000").to_json())
            .tags([Tag.parse(["p", prov.hex])])
            .finalize_unsigned(victim.keys.public_key())
        )
        forged = nip59_make_gift_wrap(attacker, provider_pk, rumor)
        out = await victim._client.send_event(forged)
        assert out.success
        assert await wait_for(lambda: prov.transport.stats["forged"] >= 1, 10)
        # A genuine request afterwards is answered, so the forged one had every chance to be answered too.
        assert isinstance(await victim.status(prov.hex, "1001", timeout=15), StatusReply)
        assert [r for _, r in prov.handler.calls] == [StatusRequest(pod_id="1001")]
        wraps = await victim._client.fetch_events(
            ReqTarget.auto([Filter().kinds([Kind(1059)]).pubkey(victim.keys.public_key())]),
        )
        assert len(list(wraps)) == 0  # nothing was gift-wrapped back to the impersonated key


async def test_rate_limit_sends_exactly_one_error_then_silence(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider(
        [relay.url], tmp_path / "db.sqlite3", inbox_kwargs={"rate_limit_requests": 3, "rate_limit_window": 60}
    ) as prov, consumer([relay.url]) as c:
        started = int(time.time())
        for i in range(6):
            await _send_dm(c, prov.hex, StatusRequest(pod_id=str(1000 + i)).to_json())
        assert await wait_for(lambda: prov.inbox.stats["requests"] >= 6, 10)
        assert await wait_for(lambda: prov.inbox.stats["replies"] >= 4, 10)
        for i in range(3):
            await _send_dm(c, prov.hex, StatusRequest(pod_id=str(2000 + i)).to_json())
        assert await wait_for(lambda: prov.inbox.stats["requests"] >= 9, 10)
        await asyncio.sleep(1.0)
        replies = [classify(r, StatusReply, ErrorReply) for r in await _replies(c, prov.hex, started - 5)]
        statuses = [r for r in replies if isinstance(r, StatusReply)]
        refusals = [r for r in replies if isinstance(r, ErrorReply)]
        assert len(statuses) == 3
        assert [r.error_type for r in refusals] == ["rate_limited"]
        assert len(prov.handler.calls) == 3


async def test_reply_reaches_a_relay_that_was_down_when_it_was_sent(
    relay: TestRelay, relay2: TestRelay, tmp_path: Path
) -> None:
    async with running_provider([relay.url, relay2.url], tmp_path / "db.sqlite3") as prov:
        await relay2.stop()
        assert await wait_for(lambda: prov.transport.relay_states()[relay2.url] != "connected", 10)
        async with consumer([relay.url]) as c:
            started = int(time.time())
            assert isinstance(await c.status(prov.hex, "1000", timeout=15), StatusReply)
            [reply] = await provider_dms_to(c, prov.hex, started - 5)
        await relay2.start()
        # Reading only the second relay, the same reply event shows up once that relay is back.
        async with consumer([relay2.url], keys=c.keys) as same_consumer_elsewhere:
            async def on_second() -> bool:
                found = await provider_dms_to(same_consumer_elsewhere, prov.hex, started - 5)
                return [str(e.id().to_hex()) for e in found] == [str(reply.id().to_hex())]

            assert await wait_for(on_second, 40, interval=1.0)


async def test_connection_reset_after_thousands_of_sent_events_is_survived(relay: TestRelay, tmp_path: Path) -> None:
    """The LocalRelay resets a connection after ~6000 events; a long-lived daemon sends that many over days."""
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov:
        batch = [events.sign(prov.keys, 20999, str(i), [["t", "noise"]]) for i in range(6500)]
        for start in range(0, len(batch), 250):
            await asyncio.gather(*(prov.transport._send_once(e) for e in batch[start:start + 250]))
        async with consumer([relay.url]) as c:
            assert isinstance(await c.status(prov.hex, "1000", timeout=30), StatusReply)
        assert prov.transport.stats["resubscribes"] >= 2  # the reset happened and was recovered from

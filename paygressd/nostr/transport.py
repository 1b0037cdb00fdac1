"""The Nostr edge: relay connections, the DM subscription, decryption, durable de-duplication, sending.

Pipeline for inbound DMs (every stage bounded, so a flood costs CPU but never unbounded memory):

    relay notifications ──reader──▶ raw queue ──decoder──▶ inbound queue ──▶ inbox()
        cheap checks: our subscription,   verify signature, p-tag, decrypt     (the request loop)
        kind 4/1059, size cap,            (NIP-04 / NIP-17 unwrap + seal check),
        in-memory seen-ids LRU            age window, own key, store.claim_event

Relay health: a watchdog polls each relay's status (logging every change), (re)subscribes with a fresh
look-back window whenever a relay (re)connects or CLOSEs our subscription, and every ``probe_interval``
sends one ephemeral self-addressed probe (kind 21384) that each relay must echo back on the same
subscription; a relay that acknowledges it but does not deliver it is resubscribed, then reconnected.

Look-back on every (re)subscription:
- kind 1059: ``gift_wrap_lookback`` (default 2 days + 1 h) because gift wraps are back-dated up to 2 days;
- kind 4: ``dm_lookback`` (default ``request_max_age + 60`` s, see ``from_config``): a DM sent while the daemon
  was down or disconnected for less than that is answered after start; older DMs are ignored. The same
  horizon is applied to a gift wrap's *rumor* time, so NIP-17 and NIP-04 see the same window. Spawns older
  than request_max_age inside that window get ``stale_request`` from the request loop; top-ups and status
  inside it are served.
Processed ids stay in the store for ``gift_wrap_lookback + 1 h`` (longer than any look-back), so a
re-delivered event is never answered twice, across relays and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from nostr_sdk import (
    ClientBuilder,
    Event,
    Filter,
    Keys,
    Kind,
    PublicKey,
    RelayOptions,
    RelayUrl,
    ReqTarget,
    SendEventTarget,
    SignerAuthenticator,
    Timestamp,
    UnwrappedGift,
    nip04_decrypt,
    nip17_make_private_msg,
    uniffi_set_event_loop,
)

from paygressd.config import Config
from paygressd.logging import get_logger
from paygressd.nostr import events
from paygressd.store import Store

log = get_logger(__name__)

Scheme = Literal["nip04", "nip17"]

GIFT_WRAP_LOOKBACK = 2 * 86400 + 3600
# A paygress request is < 64 KiB of JSON (wire.dispatch); its NIP-04/NIP-44 ciphertext is < 100 000 chars.
MAX_EVENT_CONTENT = 100_000
# Events being re-sent in the background to relays that missed them (each holds one small event).
MAX_PENDING_FILLS = 1000


@dataclass(frozen=True)
class Inbound:
    event_id: str  # outer event id (kind 4 or 1059)
    requester: str  # lowercase hex; NIP-04: event author; NIP-17: rumor pubkey, equal to the seal signer
    scheme: Scheme
    created_at: int  # NIP-04: event created_at; NIP-17: the rumor's created_at (not the back-dated wrap)
    content: str = field(repr=False)  # decrypted plaintext — never log it


class _LRU:
    """A bounded set of recently seen ids (cheap first-line de-duplication before any crypto)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: str) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)


@dataclass
class _Track:
    """Our view of one relay."""

    url: str
    sub_id: str
    relay: Any = None
    state: str = "initialized"
    subscribed: bool = False
    next_subscribe_at: float = 0.0
    closed_count: int = 0
    next_connect_at: float = 0.0
    probe_id: str | None = None
    probe_sent_at: float = 0.0
    probe_misses: int = 0
    last_rx: float = 0.0


class NostrTransport:
    def __init__(
        self,
        keys: Keys,
        relays: list[str],
        store: Store,
        *,
        dm_lookback: int = 180,
        gift_wrap_lookback: int = GIFT_WRAP_LOOKBACK,
        probe_interval: float = 60.0,
        probe_timeout: float = 15.0,
        catch_up_interval: float = 30.0,
        tick: float = 1.0,
        retry_interval: float = 5.0,
        connect_wait: float = 5.0,
        send_attempts: int = 6,
        send_backoff: float = 0.5,
        ok_timeout: float = 10.0,
        raw_queue_size: int = 8192,
        inbound_queue_size: int = 512,
        seen_cache_size: int = 50_000,
        max_event_content: int = MAX_EVENT_CONTENT,
        notification_channel_size: int = 16_384,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not relays:
            raise ValueError("at least one relay is required")
        self.keys = keys
        self.pubkey = keys.public_key()
        self.pubkey_hex: str = str(self.pubkey.to_hex())
        self.store = store
        self.dm_lookback = dm_lookback
        self.gift_wrap_lookback = max(gift_wrap_lookback, dm_lookback)
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.catch_up_interval = catch_up_interval
        self.tick = tick
        self.retry_interval = max(5.0, retry_interval)  # nostr-sdk refuses less than 5 s
        self.connect_wait = connect_wait
        self.send_attempts = send_attempts
        self.send_backoff = send_backoff
        self.ok_timeout = ok_timeout
        self.max_event_content = max_event_content
        self.notification_channel_size = notification_channel_size
        self._now = now
        self._urls = [str(RelayUrl.parse(u)) for u in relays]
        self._tracks: dict[str, _Track] = {
            u: _Track(url=u, sub_id=f"paygressd-inbox-{i}") for i, u in enumerate(self._urls)
        }
        self._raw: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=raw_queue_size)
        self._inbound: asyncio.Queue[Inbound | None] = asyncio.Queue(maxsize=inbound_queue_size)
        self._seen = _LRU(seen_cache_size)
        self._client: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fills: set[asyncio.Task[None]] = set()
        self._overflowed = False
        self._last_catch_up = 0.0
        self._last_probe = 0.0
        self._last_fetch = 0.0
        self._fetching: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._closed = False
        self.stats: dict[str, int] = {
            "events": 0, "duplicates": 0, "oversized": 0, "overflow_dropped": 0, "invalid": 0,
            "undecryptable": 0, "forged": 0, "too_old": 0, "own": 0, "already_processed": 0, "accepted": 0,
            "resubscribes": 0, "reconnects": 0, "probe_misses": 0, "catch_up_fetches": 0, "recovered": 0,
        }

    @classmethod
    def from_config(cls, keys: Keys, config: Config, store: Store, **kwargs: Any) -> NostrTransport:
        """The daemon's transport: DMs are looked back for request_max_age + 60 s after any (re)subscription."""
        kwargs.setdefault("dm_lookback", config.provider.request_max_age_seconds + 60)
        return cls(keys, list(config.nostr.relays), store, **kwargs)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # nostr-sdk runs NIP-42 signing callbacks from its own threads on this loop.
        uniffi_set_event_loop(asyncio.get_running_loop())
        self._client = (
            ClientBuilder()
            .authenticator(SignerAuthenticator(self.keys))
            .notification_channel_size(self.notification_channel_size)
            .build()
        )
        opts = (
            RelayOptions()
            .reconnect(True)
            .retry_interval(timedelta(seconds=self.retry_interval))
            .adjust_retry_interval(False)
            .ping(True)
        )
        for track in self._tracks.values():
            await self._client.add_relay(RelayUrl.parse(track.url), opts=opts)
            track.relay = await self._client.relay(RelayUrl.parse(track.url))
        # The notification stream only carries what arrives after it is opened: open it before subscribing.
        stream = self._client.notifications()
        self._tasks.append(asyncio.create_task(self._read(stream), name="nostr-reader"))
        self._tasks.append(asyncio.create_task(self._decode_loop(), name="nostr-decoder"))
        await self._client.connect(timedelta(seconds=self.connect_wait))
        await self._check_relays()
        self._last_fetch = self._now()  # the subscription itself just looked back
        self._tasks.append(asyncio.create_task(self._watchdog(), name="nostr-watchdog"))
        await self._prune()
        log.info("nostr_started", pubkey=self.pubkey_hex, relays=self._urls, states=self.relay_states())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._fetching is not None:
            self._tasks.append(self._fetching)
        for task in [*self._tasks, *self._fills]:
            task.cancel()
        for task in [*self._tasks, *self._fills]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._fills.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.shutdown()
            # nostr-sdk still calls back into Python for a moment after shutdown; if the interpreter is already
            # finalizing then, the process dies with SIGSEGV at exit (measured: 7 of 15 runs without this pause).
            await asyncio.sleep(0.1)
        # Wake the consumer of inbox(); drop queued items if needed to make room for the end marker.
        while True:
            try:
                self._inbound.put_nowait(None)
                break
            except asyncio.QueueFull:
                self._inbound.get_nowait()
        log.info("nostr_closed")

    # ------------------------------------------------------------ public API

    async def inbox(self) -> AsyncIterator[Inbound]:
        """Decrypted, verified, durably de-duplicated requests, until close()."""
        while True:
            item = await self._inbound.get()
            if item is None:
                # Keep the end marker for any other reader.
                with contextlib.suppress(asyncio.QueueFull):
                    self._inbound.put_nowait(None)
                return
            yield item

    async def send_dm(self, to_hex: str, scheme: str, payload_json: str) -> bool:
        """One reply in the request's scheme: NIP-04 kind 4 (tags p + alt) or a NIP-17 gift wrap.

        The event is signed once and the same event is re-sent on retry, so a consumer can never see two
        different replies to one request.
        """
        try:
            if scheme == "nip04":
                event = events.nip04_dm_event(self.keys, to_hex, payload_json)
            else:
                event = nip17_make_private_msg(self.keys, PublicKey.parse(to_hex), payload_json)
        except Exception as exc:
            log.warning("dm_build_failed", to=to_hex, scheme=scheme, error=type(exc).__name__)
            return False
        return await self._send(event, what="dm")

    async def publish(self, event: Event) -> bool:
        return await self._send(event, what=f"kind-{event.kind().as_u16()}")

    def relay_states(self) -> dict[str, str]:
        return {u: t.state for u, t in self._tracks.items()}

    def relay_health(self) -> dict[str, dict[str, object]]:
        """Per relay: connection state, whether our DM subscription is in place, probe misses, last delivery."""
        return {
            u: {"state": t.state, "subscribed": t.subscribed, "probe_misses": t.probe_misses,
                "last_event_at": int(t.last_rx) if t.last_rx else None}
            for u, t in self._tracks.items()
        }

    def queue_sizes(self) -> dict[str, int]:
        return {"raw": self._raw.qsize(), "inbound": self._inbound.qsize(), "seen": len(self._seen)}

    # ------------------------------------------------------------ sending

    async def _send_once(self, event: Event, urls: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
        if self._client is None or self._closed:
            return [], {}
        try:
            if urls is None:
                out = await self._client.send_event(event, ok_timeout=timedelta(seconds=self.ok_timeout))
            else:
                target = SendEventTarget.to([RelayUrl.parse(u) for u in urls])
                out = await self._client.send_event(
                    event, target=target, ok_timeout=timedelta(seconds=self.ok_timeout)
                )
        except Exception as exc:
            return [], {"*": f"{type(exc).__name__}: {exc}"}
        return [str(u) for u in out.success], {str(u): str(m) for u, m in out.failed.items()}

    def _connected_urls(self) -> list[str]:
        out = []
        for track in self._tracks.values():
            try:
                if track.relay is not None and str(track.relay.status().name).lower() == "connected":
                    out.append(track.url)
            except Exception:
                continue
        return out

    async def _send(self, event: Event, *, what: str) -> bool:
        """Send to the relays connected right now (a relay that is still connecting would hold the reply
        back until its OK timeout); relays that miss it get the same event later, in the background."""
        event_id = str(event.id().to_hex())
        delay = self.send_backoff
        for attempt in range(1, self.send_attempts + 1):
            targets = self._connected_urls()
            ok, failed = await self._send_once(event, targets) if targets else ([], {"*": "no relay connected"})
            if ok:
                missing = [u for u in self._urls if u not in ok]
                if missing:
                    self._spawn_fill(event, missing)
                log.debug("sent", what=what, event_id=event_id, relays=ok, attempt=attempt)
                return True
            log.warning("send_failed", what=what, event_id=event_id, attempt=attempt, failed=failed)
            if attempt < self.send_attempts and not self._closed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        return False

    def _spawn_fill(self, event: Event, urls: list[str]) -> None:
        """Best effort: also deliver the same event to relays that missed it (the consumer may read only those)."""
        if not urls or self._closed or len(self._fills) >= MAX_PENDING_FILLS:
            return
        task = asyncio.create_task(self._fill(event, urls))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(self, event: Event, urls: list[str]) -> None:
        for delay in (2.0, 5.0, 15.0, 30.0, 60.0, 120.0):
            await asyncio.sleep(delay)
            connected = self._connected_urls()
            ready = [u for u in urls if u in connected]
            if not ready:
                continue
            ok, failed = await self._send_once(event, ready)
            log.info("resent_to_missed_relays", event_id=str(event.id().to_hex()), relays=ok, failed=failed)
            urls = [u for u in urls if u not in ok]
            if not urls:
                return

    # ------------------------------------------------------------ relay health

    def _filters(self) -> list[Any]:
        now = int(self._now())
        return [
            Filter()
            .kinds([Kind(events.KIND_DM)])
            .pubkey(self.pubkey)
            .since(Timestamp.from_secs(now - self.dm_lookback)),
            Filter()
            .kinds([Kind(events.KIND_GIFT_WRAP)])
            .pubkey(self.pubkey)
            .since(Timestamp.from_secs(now - self.gift_wrap_lookback)),
            Filter().kinds([Kind(events.KIND_PROBE)]).author(self.pubkey).pubkey(self.pubkey),
        ]

    async def _subscribe(self, track: _Track) -> None:
        # nostr-sdk re-sends its own copy of the subscription on reconnect (with the original look-back) and
        # refuses a second one with the same id: replace it with a fresh window.
        if await self._client.subscription(track.sub_id):
            with contextlib.suppress(Exception):
                await self._client.unsubscribe(track.sub_id)
        try:
            out = await self._client.subscribe(
                ReqTarget.single(RelayUrl.parse(track.url), self._filters()), id=track.sub_id
            )
        except Exception as exc:
            log.warning("subscribe_failed", relay=track.url, error=f"{type(exc).__name__}: {exc}")
            track.next_subscribe_at = self._now() + self.retry_interval
            return
        if [u for u in out.success if str(u) == track.url]:
            track.subscribed = True
            self.stats["resubscribes"] += 1
            log.info("subscribed", relay=track.url, sub_id=track.sub_id)
        else:
            track.next_subscribe_at = self._now() + self.retry_interval
            log.warning("subscribe_refused", relay=track.url, failed={str(k): str(v) for k, v in out.failed.items()})

    async def _check_relays(self) -> None:
        now = self._now()
        for track in self._tracks.values():
            if track.relay is None:
                continue
            state = str(track.relay.status().name).lower()
            if state != track.state:
                log.info("relay_state", relay=track.url, state=state, previous=track.state)
                track.state = state
                if state != "connected":
                    track.subscribed = False
                    track.probe_id = None
            if state == "connected":
                if not track.subscribed and now >= track.next_subscribe_at:
                    await self._subscribe(track)
            elif state in ("terminated", "initialized") and now >= track.next_connect_at:
                # Not reconnecting by itself (e.g. after a forced disconnect): start it again.
                track.next_connect_at = now + self.retry_interval
                with contextlib.suppress(Exception):
                    track.relay.connect()
        await self._check_probes(now)
        if self._overflowed and self._raw.qsize() < self._raw.maxsize // 2 and now - self._last_catch_up > 30:
            # Events were dropped at the door: re-request the look-back window; seen/processed ids are skipped.
            self._overflowed = False
            self._last_catch_up = now
            log.warning("catch_up_resubscribe", dropped=self.stats["overflow_dropped"])
            for track in self._tracks.values():
                track.subscribed = False
                track.next_subscribe_at = 0.0

    async def _check_probes(self, now: float) -> None:
        for track in self._tracks.values():
            if track.probe_id is not None and now - track.probe_sent_at > self.probe_timeout:
                track.probe_id = None
                track.probe_misses += 1
                self.stats["probe_misses"] += 1
                if track.probe_misses == 1:
                    log.warning("relay_silent_resubscribing", relay=track.url)
                    track.subscribed = False
                    track.next_subscribe_at = 0.0
                else:
                    log.warning("relay_silent_reconnecting", relay=track.url, misses=track.probe_misses)
                    track.probe_misses = 0
                    self.stats["reconnects"] += 1
                    with contextlib.suppress(Exception):
                        track.relay.disconnect()
                    track.subscribed = False
                    track.next_connect_at = 0.0
        if now - self._last_probe < self.probe_interval:
            return
        ready = [t for t in self._tracks.values() if t.state == "connected" and t.subscribed]
        if not ready:
            return
        self._last_probe = now
        probe = events.probe_event(self.keys, int(now))
        probe_id = str(probe.id().to_hex())
        # Expect the echo before sending: it can arrive before send_event returns.
        for t in ready:
            t.probe_id, t.probe_sent_at = probe_id, now
        ok, _ = await self._send_once(probe, [t.url for t in ready])
        for t in ready:
            if t.url not in ok and t.probe_id == probe_id:
                t.probe_id = None  # the relay did not take it: its status will tell, no verdict on delivery

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self._check_relays()
                now = self._now()
                if now - self._last_fetch >= self.catch_up_interval and (
                    self._fetching is None or self._fetching.done()
                ):
                    self._last_fetch = now
                    self._fetching = asyncio.create_task(self._catch_up_fetch(), name="nostr-catch-up")
                if self._now() - self._last_prune > 3600:
                    await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watchdog_error")

    async def _catch_up_fetch(self) -> None:
        """Re-query recent kind-4 DMs on every subscribed relay.

        A relay under load may skip live deliveries to a slow subscriber (the LocalRelay does), and the
        client's notification channel can lag: anything missed this way is picked up here within
        ``catch_up_interval``. Already-seen ids cost one set lookup. (Gift wraps are covered by
        resubscription only: their 2-day window is too large to re-query every few seconds.)
        """
        since = Timestamp.from_secs(int(self._now()) - self.dm_lookback)
        flt = Filter().kinds([Kind(events.KIND_DM)]).pubkey(self.pubkey).since(since)
        for track in list(self._tracks.values()):
            if track.state != "connected" or not track.subscribed:
                continue
            try:
                found = await self._client.fetch_events(
                    ReqTarget.single(RelayUrl.parse(track.url), [flt]), timeout=timedelta(seconds=10)
                )
            except Exception as exc:
                log.info("catch_up_failed", relay=track.url, error=f"{type(exc).__name__}: {exc}")
                continue
            self.stats["catch_up_fetches"] += 1
            for event in found:
                try:
                    self._on_event_dict(track, json.loads(str(event.as_json())), live=False)
                except (ValueError, TypeError, KeyError):
                    continue
                await asyncio.sleep(0)

    async def _prune(self) -> None:
        self._last_prune = self._now()
        keep = self.gift_wrap_lookback + 3600
        try:
            removed = await asyncio.to_thread(self.store.prune_events, int(self._now()) - keep)
        except Exception:
            log.exception("prune_failed")
            return
        if removed:
            log.info("pruned_processed_events", removed=removed)

    # ------------------------------------------------------------ inbound

    async def _read(self, stream: Any) -> None:
        while True:
            notification = await stream.next()
            if notification is None:
                return
            try:
                if notification.is_message():
                    self._on_message(str(notification.relay_url), notification.message)
            except Exception:
                log.exception("notification_error")

    def _on_message(self, url: str, message: Any) -> None:
        track = self._tracks.get(url)
        if track is None:
            return
        # One FFI call per message, then plain Python: a flood must cost as little as possible per event.
        text = str(message.as_json())
        if text.startswith('["EVENT"'):
            self._on_event(track, text)
            return
        msg = message.as_enum()
        if msg.is_closed():
            if msg.subscription_id == track.sub_id:
                reason = str(msg.message)
                track.subscribed = False
                track.closed_count += 1
                # An auth-required CLOSE is retried by nostr-sdk after AUTH; ours follows shortly after.
                backoff = 1.0 if reason.startswith("auth-required") else min(60.0, 2.0 ** min(track.closed_count, 6))
                track.next_subscribe_at = self._now() + backoff
                log.warning("subscription_closed", relay=url, reason=reason, retry_in=backoff)
        elif msg.is_notice():
            log.info("relay_notice", relay=url, notice=str(msg.message)[:200])

    def _on_event(self, track: _Track, text: str) -> None:
        if len(text) > self.max_event_content + 4096:
            # Far larger than any request can be: not even parsed.
            self.stats["events"] += 1
            self.stats["oversized"] += 1
            return
        try:
            _, sub_id, event = json.loads(text)
        except (ValueError, TypeError):
            return
        if sub_id != track.sub_id or not isinstance(event, dict) or "id" not in event or "kind" not in event:
            return
        track.last_rx = self._now()
        self._on_event_dict(track, event)

    def _on_event_dict(self, track: _Track, event: dict[str, Any], *, live: bool = True) -> None:
        kind, event_id = event["kind"], event["id"]
        if kind == events.KIND_PROBE:
            if event_id == track.probe_id:
                track.probe_id = None
                track.probe_misses = 0
            return
        if kind not in (events.KIND_DM, events.KIND_GIFT_WRAP):
            return
        if event_id in self._seen:
            if live:
                self.stats["events"] += 1
                self.stats["duplicates"] += 1
            return
        self.stats["events" if live else "recovered"] += 1
        self._seen.add(event_id)
        if len(event.get("content", "")) > self.max_event_content:
            self.stats["oversized"] += 1
            return
        try:
            self._raw.put_nowait((track.url, event))
        except asyncio.QueueFull:
            # Forget it so a catch-up resubscription can bring it back.
            self._seen.discard(event_id)
            self._overflowed = True
            self.stats["overflow_dropped"] += 1

    async def _decode_loop(self) -> None:
        while True:
            _url, event = await self._raw.get()
            try:
                inbound = self._decode(event)
            except Exception:
                log.exception("decode_error", event_id=str(event.get("id")))
                inbound = None
            if inbound is not None:
                fresh = await asyncio.to_thread(self.store.claim_event, inbound.event_id, int(self._now()))
                if fresh:
                    self.stats["accepted"] += 1
                    await self._inbound.put(inbound)
                else:
                    self.stats["already_processed"] += 1
            # Let replies and the reader run between two decryptions during a flood.
            await asyncio.sleep(0)

    def _decode(self, raw: dict[str, Any]) -> Inbound | None:
        """Cheap checks in Python first, then signature, then decryption; None drops the event silently."""
        event_id = str(raw["id"])
        tags = raw.get("tags")
        addressed = isinstance(tags, list) and any(
            isinstance(t, list) and len(t) >= 2 and t[0] == "p" and t[1] == self.pubkey_hex for t in tags
        )
        author, created_at, content = raw.get("pubkey"), raw.get("created_at"), raw.get("content")
        if not addressed or not isinstance(author, str) or not isinstance(created_at, int) or not isinstance(
            content, str
        ):
            self.stats["invalid"] += 1
            return None
        horizon = int(self._now()) - self.dm_lookback
        kind = raw["kind"]
        if kind == events.KIND_DM:
            if author == self.pubkey_hex:
                self.stats["own"] += 1
                return None
            if created_at < horizon:
                self.stats["too_old"] += 1
                return None
        event = Event.from_json(json.dumps(raw))
        if not event.verify():
            self.stats["invalid"] += 1
            return None
        if kind == events.KIND_DM:
            try:
                text = str(nip04_decrypt(self.keys.secret_key(), event.author(), content))
            except Exception:
                self.stats["undecryptable"] += 1
                return None
            return Inbound(event_id=event_id, requester=author, scheme="nip04", created_at=created_at, content=text)
        try:
            gift = UnwrappedGift.from_gift_wrap(self.keys, event)
        except Exception as exc:
            # nostr-sdk 0.45 itself refuses a rumor whose pubkey differs from the seal's ("sender mismatch").
            if "mismatch" in str(exc):
                self.stats["forged"] += 1
                log.warning("forged_rumor_dropped", event_id=event_id)
            else:
                self.stats["undecryptable"] += 1
            return None
        rumor = gift.rumor()
        if int(rumor.kind().as_u16()) != events.KIND_PRIVATE_DM:
            self.stats["invalid"] += 1
            return None
        sender = str(gift.sender().to_hex())
        rumor_author = str(rumor.author().to_hex())
        if sender != rumor_author:
            # The rumor is unsigned: only the seal signature authenticates the requester (§8 item 8).
            self.stats["forged"] += 1
            log.warning("forged_rumor_dropped", event_id=event_id)
            return None
        if rumor_author == self.pubkey_hex:
            self.stats["own"] += 1
            return None
        rumor_created = int(rumor.created_at().as_secs())
        if rumor_created < horizon:
            self.stats["too_old"] += 1
            return None
        return Inbound(
            event_id=event_id, requester=rumor_author, scheme="nip17", created_at=rumor_created,
            content=str(rumor.content()),
        )

"""A consumer that talks to providers exactly like paygress-cli 0.1.9 (protocol §1.3, §1.4, §1.7, §1.8, §2).

- ``list_offers``: kind 38383 with ``#t=paygress`` (no author, no since), 5 s; content must parse; the signer
  must be the key in ``provider_npub``; heartbeats kind 38384 by those authors since now-300 (3 s), newest
  content timestamp per ``provider_npub`` string; online when younger than 120 s.
- ``request``: send one NIP-04 kind 4 (tags p + alt); only *then* subscribe to kinds [4, 1059] ``#p=[me]``
  since now-60 and take the FIRST event that is a kind 4 from the provider that decrypts, or a gift wrap whose
  seal signer is the provider with a kind-14 rumor. ``scheme="nip17"`` (SDK opt-in style) sends a gift wrap
  instead and also looks back 2 days for gift wraps (they are back-dated), keeping only rumors of the last 60 s.
- ``spawn`` / ``topup`` / ``status`` build the CLI's exact request shapes and classify the reply the way each
  CLI command does.

Used by ``paygressd consumer`` and by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nostr_sdk import (
    ClientBuilder,
    Event,
    Filter,
    Keys,
    Kind,
    PublicKey,
    RelayUrl,
    ReqTarget,
    SignerAuthenticator,
    Timestamp,
    UnwrappedGift,
    nip04_decrypt,
    nip17_make_private_msg,
    uniffi_set_event_loop,
)
from pydantic import ValidationError

from paygressd.core.keys import pubkey_hex, same_key
from paygressd.nostr import events
from paygressd.wire.models import (
    AccessDetails,
    ErrorReply,
    HeartbeatContent,
    OfferContent,
    SpawnRequest,
    StatusReply,
    StatusRequest,
    TopUpReply,
    TopUpRequest,
    WireModel,
)

DEFAULT_RELAYS = ["wss://relay.damus.io", "wss://nos.lol", "wss://relay.primal.net"]
OFFER_FETCH_TIMEOUT = 5.0
HEARTBEAT_FETCH_TIMEOUT = 3.0
LIVE_HEARTBEAT_WINDOW_SECS = 300
ONLINE_HEARTBEAT_WINDOW_SECS = 120
REPLY_LOOKBACK_SECS = 60
SPAWN_TIMEOUT = 120.0
TOPUP_TIMEOUT = 60.0
STATUS_TIMEOUT = 30.0
ISOLATION_RANK = {"shared-kernel": 0, "dedicated-host": 1, "attested-research-tier": 2}
_ALNUM = string.ascii_letters + string.digits


class ConsumerError(Exception):
    """A refusal the CLI makes locally, before sending anything (message is the user-facing text)."""


@dataclass(frozen=True)
class ProviderListing:
    offer: OfferContent
    author: str  # hex of the offer's signer (== offer.provider_npub canonically)
    created_at: int
    heartbeat: HeartbeatContent | None
    now: int

    @property
    def provider_hex(self) -> str:
        return pubkey_hex(self.offer.provider_npub) or self.author

    @property
    def online(self) -> bool:
        return self.heartbeat is not None and self.now - self.heartbeat.timestamp < ONLINE_HEARTBEAT_WINDOW_SECS

    @property
    def cheapest_rate(self) -> int | None:
        return min((s.rate_msats_per_sec for s in self.offer.specs), default=None)


Reply = WireModel | str  # a parsed reply, or the raw JSON the command does not recognise


def random_password(length: int = 16) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def parse_offer(event: Event) -> OfferContent | None:
    """The CLI's offer filter: content parses and is signed by the key it names; else None."""
    try:
        offer = OfferContent.from_json(event.content())
    except (ValidationError, ValueError):
        return None
    if not same_key(offer.provider_npub, str(event.author().to_hex())):
        return None
    return offer


def resolve_provider(listings: list[ProviderListing], query: str) -> ProviderListing | None:
    """``--provider X``: key → exact hex match; else unique hex prefix (≥ 8); else hostname, case-insensitive."""
    as_hex = pubkey_hex(query)
    if as_hex is not None:
        return next((p for p in listings if p.offer.provider_npub == as_hex), None)
    q = query.strip().lower()
    if len(q) >= 8 and all(c in "0123456789abcdef" for c in q):
        matches = [p for p in listings if p.offer.provider_npub.startswith(q)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            return None
    return next((p for p in listings if p.offer.hostname.lower() == q), None)


def precheck_spawn(listing: ProviderListing, tier: str, token_mint: str | None,
                   isolation_level: str | None = None) -> None:
    """The checks ``paygress-cli spawn`` makes before spending anything; raises ConsumerError."""
    if not listing.online:
        raise ConsumerError("Provider appears to be offline.")
    if not any(s.id == tier for s in listing.offer.specs):
        raise ConsumerError(f"Tier '{tier}' not available on this provider")
    if isolation_level is not None and (
        ISOLATION_RANK.get(listing.offer.isolation_level, 0) < ISOLATION_RANK.get(isolation_level, 0)
    ):
        raise ConsumerError(f"Provider isolation level {listing.offer.isolation_level} is below {isolation_level}")
    mints = listing.offer.whitelisted_mints
    if mints and token_mint is not None:
        wanted = token_mint.rstrip("/").lower()
        if not any(m.rstrip("/").lower() == wanted for m in mints):
            raise ConsumerError(f"Mint {token_mint} is not accepted by this provider")


def classify(raw: str, *candidates: type[WireModel]) -> Reply:
    """Try each reply schema in the command's order; the raw text when none parses."""
    for model in candidates:
        try:
            return model.from_json(raw)
        except (ValidationError, ValueError):
            continue
    return raw


class Consumer:
    def __init__(self, keys: Keys, relays: list[str] | None = None, *, connect_wait: float = 5.0) -> None:
        self.keys = keys
        self.pubkey_hex: str = str(keys.public_key().to_hex())
        self.relays = list(relays or DEFAULT_RELAYS)
        self.connect_wait = connect_wait
        self._client: Any = None
        self._taken: set[str] = set()

    async def start(self) -> None:
        uniffi_set_event_loop(asyncio.get_running_loop())
        self._client = ClientBuilder().authenticator(SignerAuthenticator(self.keys)).build()
        for url in self.relays:
            await self._client.add_relay(RelayUrl.parse(url))
        await self._client.connect(timedelta(seconds=self.connect_wait))

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.shutdown()
            self._client = None
            # nostr-sdk still calls back into Python for a moment after shutdown; if the interpreter is already
            # finalizing then, the process dies with SIGSEGV at exit (measured: 7 of 15 runs without this pause).
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ discovery

    async def list_offers(self, now: int | None = None) -> list[ProviderListing]:
        flt = Filter().kinds([Kind(events.KIND_OFFER)]).hashtag("paygress")
        found = await self._client.fetch_events(ReqTarget.auto([flt]), timeout=timedelta(seconds=OFFER_FETCH_TIMEOUT))
        offers: list[tuple[OfferContent, str, int]] = []
        for event in found:
            offer = parse_offer(event)
            if offer is not None:
                offers.append((offer, str(event.author().to_hex()), int(event.created_at().as_secs())))
        if not offers:
            return []
        ts_now = int(time.time()) if now is None else now
        authors = [PublicKey.parse(a) for a in {a for _, a, _ in offers}]
        hb_filter = (
            Filter().kinds([Kind(events.KIND_HEARTBEAT)]).authors(authors)
            .since(Timestamp.from_secs(ts_now - LIVE_HEARTBEAT_WINDOW_SECS))
        )
        beats = await self._client.fetch_events(
            ReqTarget.auto([hb_filter]), timeout=timedelta(seconds=HEARTBEAT_FETCH_TIMEOUT)
        )
        latest: dict[str, HeartbeatContent] = {}
        for event in beats:
            try:
                hb = HeartbeatContent.from_json(event.content())
            except (ValidationError, ValueError):
                continue
            cur = latest.get(hb.provider_npub)
            if cur is None or hb.timestamp > cur.timestamp:
                latest[hb.provider_npub] = hb
        return [
            ProviderListing(offer=o, author=a, created_at=c, heartbeat=latest.get(o.provider_npub), now=ts_now)
            for o, a, c in offers
        ]

    async def find_provider(self, query: str) -> ProviderListing | None:
        return resolve_provider(await self.list_offers(), query)

    # ------------------------------------------------------------ request / reply

    async def request(self, provider_hex: str, payload_json: str, timeout: float, scheme: str = "nip04",  # noqa: ASYNC109
                      lookback: int | None = None) -> str | None:
        """Send one request DM and return the first provider DM that follows (decrypted), or None on timeout.

        ``lookback=None`` is paygress-cli's rule: any provider DM from the last 60 s counts as the reply.
        ``lookback=N`` only accepts DMs created at most N seconds before this request was sent (tests that
        send several requests within a minute use 0, so an earlier stored reply is not taken).
        """
        provider = PublicKey.parse(provider_hex)
        provider_hex = str(provider.to_hex())
        sent_at = int(time.time())
        if scheme == "nip04":
            event = events.nip04_dm_event(self.keys, provider_hex, payload_json)
        else:
            event = nip17_make_private_msg(self.keys, provider, payload_json)
        out = await self._client.send_event(event)
        if not out.success:
            raise ConsumerError(f"no relay accepted the request: {[str(v) for v in out.failed.values()]}")
        if lookback is None:
            return await self.wait_reply(provider_hex, timeout, scheme=scheme)
        # Timestamps are whole seconds: a reply to our previous request can share this second, so a reply
        # already taken once is never taken again.
        return await self.wait_reply(provider_hex, timeout, scheme=scheme, since=sent_at - lookback,
                                     seen=self._taken)

    async def wait_reply(self, provider_hex: str, timeout: float, scheme: str = "nip04",  # noqa: ASYNC109
                         since: int | None = None, seen: set[str] | None = None) -> str | None:
        not_before = int(time.time()) - REPLY_LOOKBACK_SECS if since is None else since
        stream, sub_id = await self._subscribe_replies(not_before, scheme)
        try:
            return await asyncio.wait_for(self._first_reply(stream, sub_id, provider_hex, not_before, seen), timeout)
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(Exception):
                await self._client.unsubscribe(sub_id)

    async def collect_replies(self, provider_hex: str, since: int, duration: float) -> list[str]:
        """Every provider DM to us created since ``since``, gathered for ``duration`` seconds (tests, demo)."""
        stream, sub_id = await self._subscribe_replies(since, "nip17")
        found: list[str] = []

        async def gather() -> None:
            seen: set[str] = set()
            while True:
                text = await self._first_reply(stream, sub_id, provider_hex, since, seen)
                if text is None:
                    return
                found.append(text)

        try:
            await asyncio.wait_for(gather(), duration)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(Exception):
                await self._client.unsubscribe(sub_id)
        return found

    async def _subscribe_replies(self, not_before: int, scheme: str) -> tuple[Any, str]:
        me = self.keys.public_key()
        filters = [Filter().kinds([Kind(events.KIND_DM), Kind(events.KIND_GIFT_WRAP)]).pubkey(me)
                   .since(Timestamp.from_secs(not_before))]
        if scheme != "nip04":
            # SDK-style NIP-17: gift wraps are back-dated up to 2 days; judge freshness by the rumor instead.
            filters.append(Filter().kinds([Kind(events.KIND_GIFT_WRAP)]).pubkey(me)
                           .since(Timestamp.from_secs(not_before - 2 * 86400 - 3600)))
        stream = self._client.notifications()
        sub_id = f"reply-{uuid.uuid4().hex[:16]}"
        await self._client.subscribe(ReqTarget.auto(filters), id=sub_id)
        return stream, sub_id

    async def _first_reply(self, stream: Any, sub_id: str, provider_hex: str, not_before: int,
                           seen: set[str] | None = None) -> str | None:
        seen = set() if seen is None else seen
        while True:
            notification = await stream.next()
            if notification is None:
                return None
            if not notification.is_message():
                continue
            msg = notification.message.as_enum()
            if not msg.is_event_msg() or msg.subscription_id != sub_id:
                continue
            event = msg.event
            event_id = str(event.id().to_hex())
            if event_id in seen:
                continue
            seen.add(event_id)
            text = self._open_reply(event, provider_hex, not_before)
            if text is not None:
                return text

    def _open_reply(self, event: Event, provider_hex: str, not_before: int) -> str | None:
        kind = int(event.kind().as_u16())
        if kind == events.KIND_DM:
            if str(event.author().to_hex()) != provider_hex:
                return None
            try:
                return str(nip04_decrypt(self.keys.secret_key(), event.author(), event.content()))
            except Exception:
                return None
        if kind == events.KIND_GIFT_WRAP:
            try:
                gift = UnwrappedGift.from_gift_wrap(self.keys, event)
            except Exception:
                return None
            rumor = gift.rumor()
            if str(gift.sender().to_hex()) != provider_hex or int(rumor.kind().as_u16()) != events.KIND_PRIVATE_DM:
                return None
            if int(rumor.created_at().as_secs()) < not_before:
                return None
            return str(rumor.content())
        return None

    # ------------------------------------------------------------ the three CLI commands

    @staticmethod
    def spawn_payload(token: str, tier: str = "basic", image: str = "ubuntu:22.04", ssh_user: str = "user",
                      ssh_password: str | None = None) -> str:
        return SpawnRequest(
            cashu_token=token, pod_spec_id=tier, pod_image=image, ssh_username=ssh_user,
            ssh_password=ssh_password if ssh_password is not None else random_password(),
        ).to_json()

    async def spawn(self, provider_hex: str, token: str, *, tier: str = "basic", image: str = "ubuntu:22.04",
                    ssh_user: str = "user", ssh_password: str | None = None, timeout: float = SPAWN_TIMEOUT,  # noqa: ASYNC109
                    scheme: str = "nip04", lookback: int | None = None) -> Reply | None:
        payload = self.spawn_payload(token, tier, image, ssh_user, ssh_password)
        raw = await self.request(provider_hex, payload, timeout, scheme, lookback)
        return None if raw is None else classify(raw, AccessDetails, ErrorReply)

    async def topup(self, provider_hex: str, pod_id: str, token: str, *, timeout: float = TOPUP_TIMEOUT,  # noqa: ASYNC109
                    scheme: str = "nip04", lookback: int | None = None) -> Reply | None:
        payload = TopUpRequest(pod_npub=pod_id, cashu_token=token).to_json()
        raw = await self.request(provider_hex, payload, timeout, scheme, lookback)
        return None if raw is None else classify(raw, TopUpReply, ErrorReply)

    async def status(self, provider_hex: str, pod_id: str, *, timeout: float = STATUS_TIMEOUT,  # noqa: ASYNC109
                     scheme: str = "nip04", lookback: int | None = None) -> Reply | None:
        """The CLI accepts only a status reply; anything else (an error too) is shown as unrecognized raw JSON."""
        raw = await self.request(provider_hex, StatusRequest(pod_id=pod_id).to_json(), timeout, scheme, lookback)
        return None if raw is None else classify(raw, StatusReply)


def reply_json(reply: Reply | None) -> str:
    if reply is None:
        return "null"
    if isinstance(reply, str):
        return reply
    return json.dumps(reply.to_wire(), ensure_ascii=False)

"""Pure builders for every event paygressd signs: tags and contents exactly as protocol §1.3, §1.4, §1.8.

No I/O here: functions take plain values and return tag lists / wire models / unsigned builders, so the
byte-level shapes are unit-testable without a relay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from nostr_sdk import Event, EventBuilder, Keys, Kind, PublicKey, Tag, Timestamp, nip04_encrypt

from paygressd.config import Config
from paygressd.wire.models import AvailableCapacity, HeartbeatContent, OfferContent, PodSpec

KIND_DM = 4
KIND_SEAL = 13
KIND_PRIVATE_DM = 14
KIND_GIFT_WRAP = 1059
KIND_INBOX_RELAYS = 10050
KIND_OFFER = 38383
KIND_HEARTBEAT = 38384
KIND_HEARTBEAT_EPHEMERAL = 20384
# paygressd-only: an ephemeral self-addressed event that proves each relay still delivers on our subscription.
KIND_PROBE = 21384

SCHEMA_VERSION = 1
HEARTBEAT_BUCKET_SECS = 60
# NIP-40 expiry on the stored heartbeat: far beyond the consumers' 300 s look-back (§8 item 14).
HEARTBEAT_EXPIRATION_SECS = 3600
PROBE_EXPIRATION_SECS = 120

IsolationLevel = str


def offer_d_tag(provider_hex: str) -> str:
    return f"paygress:offer:v{SCHEMA_VERSION}:{provider_hex}"


def offer_tags(provider_hex: str) -> list[list[str]]:
    return [
        ["t", "paygress"],
        ["t", "compute"],
        ["d", offer_d_tag(provider_hex)],
        ["v", str(SCHEMA_VERSION)],
    ]


def heartbeat_tags(provider_hex: str, timestamp: int, *, stored: bool) -> list[list[str]]:
    tags = [["t", "paygress-heartbeat"], ["p", provider_hex]]
    if stored:
        tags.append(["d", f"paygress:heartbeat:v{SCHEMA_VERSION}:{provider_hex}:{timestamp // HEARTBEAT_BUCKET_SECS}"])
    tags.append(["v", str(SCHEMA_VERSION)])
    return tags


def dm_tags(recipient_hex: str) -> list[list[str]]:
    return [["p", recipient_hex], ["alt", "Private Message"]]


def derived_hostname(provider_hex: str) -> str:
    """A stable display name when the operator set none (hostname is free text for consumers)."""
    return f"paygressd-{provider_hex[:8]}"


def pod_specs(config: Config) -> list[PodSpec]:
    return [
        PodSpec(
            id=t.id, name=t.name, description=t.description, cpu_millicores=t.cpu_millicores,
            memory_mb=t.memory_mb, rate_msats_per_sec=t.rate_msats_per_sec,
        )
        for t in config.tier
    ]


def offer_content(
    provider_hex: str,
    config: Config,
    *,
    uptime_percent: float,
    jobs_completed: int,
    isolation_level: str,
) -> OfferContent:
    return OfferContent.model_validate(
        {
            "provider_npub": provider_hex,
            "hostname": config.provider.name or derived_hostname(provider_hex),
            "location": config.provider.location,
            "capabilities": list(config.provider.capabilities),
            "specs": [s.model_dump() for s in pod_specs(config)],
            "whitelisted_mints": list(config.cashu.mints),
            "uptime_percent": float(round(min(100.0, max(0.0, uptime_percent)), 2)),
            "total_jobs_completed": max(0, jobs_completed),
            "api_endpoint": None,
            "version": SCHEMA_VERSION,
            "isolation_level": isolation_level,
        }
    )


def heartbeat_content(
    provider_hex: str, timestamp: int, active_workloads: int, capacity: AvailableCapacity
) -> HeartbeatContent:
    return HeartbeatContent(
        provider_npub=provider_hex,
        timestamp=timestamp,
        active_workloads=active_workloads,
        available_capacity=capacity,
        version=SCHEMA_VERSION,
    )


# ---------------------------------------------------------------- signing (pure: no network)


def _tags(raw: Sequence[Sequence[str]]) -> list[Tag]:
    return [Tag.parse(list(t)) for t in raw]


def sign(keys: Keys, kind: int, content: str, tags: Sequence[Sequence[str]], created_at: int | None = None) -> Event:
    builder = EventBuilder(Kind(kind), content).tags(_tags(tags))
    if created_at is not None:
        builder = builder.custom_created_at(Timestamp.from_secs(created_at))
    return builder.finalize(keys)


def offer_event(keys: Keys, content: OfferContent) -> Event:
    return sign(keys, KIND_OFFER, content.to_json(), offer_tags(keys.public_key().to_hex()))


def heartbeat_events(keys: Keys, content: HeartbeatContent) -> tuple[Event, Event]:
    """(stored 38384, ephemeral 20384) for one beat; same content, the stored one expires after an hour."""
    hex_ = keys.public_key().to_hex()
    body = content.to_json()
    stored_tags = heartbeat_tags(hex_, content.timestamp, stored=True)
    stored_tags.append(["expiration", str(content.timestamp + HEARTBEAT_EXPIRATION_SECS)])
    stored = sign(keys, KIND_HEARTBEAT, body, stored_tags, created_at=content.timestamp)
    live = sign(keys, KIND_HEARTBEAT_EPHEMERAL, body, heartbeat_tags(hex_, content.timestamp, stored=False),
                created_at=content.timestamp)
    return stored, live


def inbox_relays_event(keys: Keys, relays: Sequence[str]) -> Event:
    """NIP-17 kind 10050: where to send us gift wraps."""
    return sign(keys, KIND_INBOX_RELAYS, "", [["relay", r] for r in relays])


def nip04_dm_event(keys: Keys, recipient_hex: str, plaintext: str) -> Event:
    """Kind 4 reply/request: NIP-04 ciphertext, tags p + alt, created_at now, no expiration (§1.8)."""
    ciphertext = nip04_encrypt(keys.secret_key(), PublicKey.parse(recipient_hex), plaintext)
    return sign(keys, KIND_DM, ciphertext, dm_tags(recipient_hex))


def probe_event(keys: Keys, now: int | None = None) -> Event:
    ts = int(time.time()) if now is None else now
    hex_ = keys.public_key().to_hex()
    return sign(
        keys, KIND_PROBE, "", [["p", hex_], ["t", "paygressd-probe"], ["expiration", str(ts + PROBE_EXPIRATION_SECS)]],
        created_at=ts,
    )


def tags_of(event: Event) -> list[list[str]]:
    return [list(t.to_vec()) for t in event.tags()]


def event_json(event: Event) -> dict[str, object]:
    value = json.loads(event.as_json())
    assert isinstance(value, dict)
    return value

"""Payload models for every paygress 0.1.9 JSON body (protocol §2).

Rules every model honours:
- field names and declaration order are upstream's, so output diffs cleanly against the Rust provider;
- integers are strict JSON integers (no float, no bool) and unsigned where Rust uses u*;
- unknown fields are ignored on input;
- two optional-field flavours: ``null`` when absent (plain Optional) and omitted when empty (``_OMIT_EMPTY``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

U8 = Annotated[StrictInt, Field(ge=0, le=255)]
U16 = Annotated[StrictInt, Field(ge=0, le=65535)]
U32 = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
U64 = Annotated[StrictInt, Field(ge=0, le=2**64 - 1)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    # Fields omitted from output when None, "" or [] (serde skip_serializing_if).
    _OMIT_EMPTY: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        for name in self._OMIT_EMPTY:
            value = out.get(name)
            # serde skips an Option only when None (Some("") is sent), a String/Vec when empty.
            optional = type(self).model_fields[name].default is None
            if value is None or (not optional and value in ("", [])):
                out.pop(name, None)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        return cls.model_validate_json(text)


# ---------------------------------------------------------------- shared pieces


class PodSpec(WireModel):
    id: StrictStr
    name: StrictStr
    description: StrictStr
    cpu_millicores: U64
    memory_mb: U64
    rate_msats_per_sec: U64


class ReplicationNone(WireModel):
    mode: Literal["none"]


class ReplicationCheckpointed(WireModel):
    mode: Literal["checkpointed"]


class ReplicationWarmStandby(WireModel):
    mode: Literal["warm-standby"]
    standby_providers: list[StrictStr]


Replication = Annotated[
    ReplicationNone | ReplicationCheckpointed | ReplicationWarmStandby, Field(discriminator="mode")
]


class VolumeEncryption(WireModel):
    version: U8 = 1
    algorithm: StrictStr
    key_b64: StrictStr


# ---------------------------------------------------------------- requests


class SpawnRequest(WireModel):
    _OMIT_EMPTY = frozenset({"template_slug", "replication", "primary_npub", "workload_id", "volume_encryption"})

    cashu_token: StrictStr
    pod_spec_id: StrictStr | None = None
    pod_image: StrictStr
    ssh_username: StrictStr
    ssh_password: StrictStr
    template_slug: StrictStr | None = None
    replication: Replication | None = None
    primary_npub: StrictStr | None = None
    workload_id: StrictStr | None = None
    volume_encryption: VolumeEncryption | None = None


class TopUpRequest(WireModel):
    pod_npub: StrictStr
    cashu_token: StrictStr


class StatusRequest(WireModel):
    pod_id: StrictStr


# ---------------------------------------------------------------- replies


class TemplatePort(WireModel):
    host_port: U16
    container_port: U16
    protocol: StrictStr
    label: StrictStr


class AccessDetails(WireModel):
    _OMIT_EMPTY = frozenset({"host_address", "template_ports"})

    pod_npub: StrictStr
    node_port: U16
    expires_at: StrictStr
    cpu_millicores: U64
    memory_mb: U64
    pod_spec_name: StrictStr
    pod_spec_description: StrictStr
    instructions: list[StrictStr]
    host_address: StrictStr = ""
    template_ports: list[TemplatePort] = Field(default_factory=list)


class TopUpReply(WireModel):
    success: StrictBool
    pod_npub: StrictStr
    extended_duration_seconds: U64
    new_expires_at: StrictStr
    message: StrictStr


class StatusReply(WireModel):
    pod_id: StrictStr
    status: StrictStr
    expires_at: StrictStr
    time_remaining_seconds: U64
    cpu_millicores: U64
    memory_mb: U64
    ssh_host: StrictStr
    ssh_port: U16
    ssh_username: StrictStr


class ErrorReply(WireModel):
    error_type: StrictStr
    message: StrictStr
    details: StrictStr | None = None
    # paygressd extension: a refund token when we refuse after redeeming (paygress-cli ignores it).
    refund_token: StrictStr | None = None

    _OMIT_EMPTY = frozenset({"refund_token"})


# ---------------------------------------------------------------- public events


class StakeProof(WireModel):
    utxo_outpoint: StrictStr
    locktime_unix: U64
    sats: U64
    provider_pubkey_hex: StrictStr
    signature_hex: StrictStr
    version: U8


class OfferContent(WireModel):
    _OMIT_EMPTY = frozenset({"stake_proof"})

    provider_npub: StrictStr
    hostname: StrictStr
    location: StrictStr | None = None
    capabilities: list[StrictStr]
    specs: list[PodSpec]
    whitelisted_mints: list[StrictStr]
    # f32 upstream; an integer literal is accepted too.
    uptime_percent: StrictFloat | StrictInt
    total_jobs_completed: U64
    api_endpoint: StrictStr | None = None
    version: U8 = 1
    isolation_level: Literal["shared-kernel", "dedicated-host", "attested-research-tier"] = "shared-kernel"
    stake_proof: StakeProof | None = None

    def to_wire(self) -> dict[str, Any]:
        out = super().to_wire()
        out["uptime_percent"] = float(out["uptime_percent"])
        return out


class AvailableCapacity(WireModel):
    cpu_available: U64
    memory_mb_available: U64
    storage_gb_available: U64


class HeartbeatContent(WireModel):
    provider_npub: StrictStr
    timestamp: U64
    active_workloads: U32
    available_capacity: AvailableCapacity
    version: U8 = 1


# ---------------------------------------------------------------- time formats


def rfc3339(ts: int) -> str:
    """chrono's to_rfc3339() on a whole-second UTC time: ``2026-05-01T12:00:00+00:00``."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def human_utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

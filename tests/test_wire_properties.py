"""Property tests for the wire layer: round trips, total dispatch, strict integers."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from paygressd.wire.dispatch import MAX_CONTENT_CHARS, dispatch
from paygressd.wire.models import (
    AccessDetails,
    AvailableCapacity,
    ErrorReply,
    HeartbeatContent,
    OfferContent,
    PodSpec,
    ReplicationCheckpointed,
    ReplicationNone,
    ReplicationWarmStandby,
    SpawnRequest,
    StakeProof,
    StatusReply,
    StatusRequest,
    TemplatePort,
    TopUpReply,
    TopUpRequest,
    VolumeEncryption,
    WireModel,
)

U8_MAX, U16_MAX, U32_MAX, U64_MAX = 255, 65535, 2**32 - 1, 2**64 - 1

text = st.text(max_size=40)
u8 = st.integers(0, U8_MAX)
u16 = st.integers(0, U16_MAX)
u32 = st.integers(0, U32_MAX)
u64 = st.integers(0, U64_MAX)
opt_text = st.none() | text

# ---------------------------------------------------------------- strategies for valid instances

pod_specs = st.builds(PodSpec, id=text, name=text, description=text, cpu_millicores=u64, memory_mb=u64,
                      rate_msats_per_sec=u64)
repl_none = st.builds(ReplicationNone, mode=st.just("none"))
repl_checkpointed = st.builds(ReplicationCheckpointed, mode=st.just("checkpointed"))
repl_warm = st.builds(ReplicationWarmStandby, mode=st.just("warm-standby"),
                      standby_providers=st.lists(text, max_size=3))
replications = st.one_of(repl_none, repl_checkpointed, repl_warm)
volume_encryptions = st.builds(VolumeEncryption, version=u8, algorithm=text, key_b64=text)
spawn_requests = st.builds(
    SpawnRequest, cashu_token=text, pod_spec_id=opt_text, pod_image=text, ssh_username=text, ssh_password=text,
    template_slug=opt_text, replication=st.none() | replications, primary_npub=opt_text, workload_id=opt_text,
    volume_encryption=st.none() | volume_encryptions,
)
topup_requests = st.builds(TopUpRequest, pod_npub=text, cashu_token=text)
status_requests = st.builds(StatusRequest, pod_id=text)
template_ports = st.builds(TemplatePort, host_port=u16, container_port=u16, protocol=text, label=text)
access_details = st.builds(
    AccessDetails, pod_npub=text, node_port=u16, expires_at=text, cpu_millicores=u64, memory_mb=u64,
    pod_spec_name=text, pod_spec_description=text, instructions=st.lists(text, max_size=4), host_address=text,
    template_ports=st.lists(template_ports, max_size=3),
)
topup_replies = st.builds(TopUpReply, success=st.booleans(), pod_npub=text, extended_duration_seconds=u64,
                          new_expires_at=text, message=text)
status_replies = st.builds(
    StatusReply, pod_id=text, status=text, expires_at=text, time_remaining_seconds=u64, cpu_millicores=u64,
    memory_mb=u64, ssh_host=text, ssh_port=u16, ssh_username=text,
)
error_replies = st.builds(ErrorReply, error_type=text, message=text, details=opt_text, refund_token=opt_text)
stake_proofs = st.builds(StakeProof, utxo_outpoint=text, locktime_unix=u64, sats=u64, provider_pubkey_hex=text,
                         signature_hex=text, version=u8)
offers = st.builds(
    OfferContent, provider_npub=text, hostname=text, location=opt_text, capabilities=st.lists(text, max_size=3),
    specs=st.lists(pod_specs, max_size=3), whitelisted_mints=st.lists(text, max_size=3),
    uptime_percent=st.floats(0, 100, allow_nan=False) | st.integers(0, 100), total_jobs_completed=u64,
    api_endpoint=opt_text, version=u8,
    isolation_level=st.sampled_from(["shared-kernel", "dedicated-host", "attested-research-tier"]),
    stake_proof=st.none() | stake_proofs,
)
capacities = st.builds(AvailableCapacity, cpu_available=u64, memory_mb_available=u64, storage_gb_available=u64)
heartbeats = st.builds(HeartbeatContent, provider_npub=text, timestamp=u64, active_workloads=u32,
                       available_capacity=capacities, version=u8)

ALL_MODELS: dict[type[WireModel], st.SearchStrategy[Any]] = {
    PodSpec: pod_specs, ReplicationNone: repl_none, ReplicationCheckpointed: repl_checkpointed,
    ReplicationWarmStandby: repl_warm,
    VolumeEncryption: volume_encryptions, SpawnRequest: spawn_requests, TopUpRequest: topup_requests,
    StatusRequest: status_requests, TemplatePort: template_ports, AccessDetails: access_details,
    TopUpReply: topup_replies, StatusReply: status_replies, ErrorReply: error_replies, StakeProof: stake_proofs,
    OfferContent: offers, AvailableCapacity: capacities, HeartbeatContent: heartbeats,
}


def _all_wire_models() -> set[type[WireModel]]:
    found: set[type[WireModel]] = set()
    todo = list(WireModel.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return {c for c in found if c.__module__ == "paygressd.wire.models"}


def test_strategies_cover_every_wire_model() -> None:
    assert set(ALL_MODELS) == _all_wire_models()


@pytest.mark.parametrize("model", list(ALL_MODELS), ids=lambda m: m.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_serialize_parse_identity(model: type[WireModel], data: st.DataObject) -> None:
    instance = data.draw(ALL_MODELS[model])
    wire = instance.to_json()
    again = model.from_json(wire)
    assert again == instance
    assert again.to_json() == wire
    # Compact and raw like serde_json: no spaces between tokens, no \u escapes for non-ASCII.
    assert wire == json.dumps(json.loads(wire), separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=200, deadline=None)
@given(spawn_requests)
def test_spawn_requests_dispatch_as_spawn(req: SpawnRequest) -> None:
    assert dispatch(req.to_json()) == req


@settings(max_examples=100, deadline=None)
@given(topup_requests)
def test_topup_requests_dispatch_as_topup(req: TopUpRequest) -> None:
    assert dispatch(req.to_json()) == req


@settings(max_examples=100, deadline=None)
@given(status_requests)
def test_status_requests_dispatch_as_status(req: StatusRequest) -> None:
    assert dispatch(req.to_json()) == req


# ---------------------------------------------------------------- dispatch never raises


def _is_request_or_invalid(result: object) -> bool:
    if isinstance(result, SpawnRequest | TopUpRequest | StatusRequest):
        return True
    return isinstance(result, ErrorReply) and result.error_type == "invalid_request"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_dispatch_total_on_random_strings(content: str) -> None:
    assert _is_request_or_invalid(dispatch(content))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_dispatch_total_on_random_json(value: Any) -> None:
    assert _is_request_or_invalid(dispatch(json.dumps(value)))


FIELDS = ["cashu_token", "pod_spec_id", "pod_image", "ssh_username", "ssh_password", "template_slug",
          "primary_npub", "workload_id", "replication", "volume_encryption", "pod_npub", "pod_id", "other"]
scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5)


def _oracle(obj: dict[str, Any]) -> str:
    """Protocol §2.1, written independently: spawn, else top-up, else status, else invalid_request."""

    def is_str(k: str) -> bool:
        return isinstance(obj.get(k), str)

    def opt_str(k: str) -> bool:
        return obj.get(k) is None or isinstance(obj.get(k), str)

    if (all(is_str(k) for k in ("cashu_token", "pod_image", "ssh_username", "ssh_password"))
            and all(opt_str(k) for k in ("pod_spec_id", "template_slug", "primary_npub", "workload_id"))
            and obj.get("replication") is None and obj.get("volume_encryption") is None):
        return "spawn"
    if is_str("pod_npub") and is_str("cashu_token"):
        return "topup"
    if is_str("pod_id"):
        return "status"
    return "invalid"


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), scalars | st.lists(scalars, max_size=2)))
def test_dispatch_order_matches_protocol(obj: dict[str, Any]) -> None:
    result = dispatch(json.dumps(obj))
    label = {SpawnRequest: "spawn", TopUpRequest: "topup", StatusRequest: "status", ErrorReply: "invalid"}[
        type(result)
    ]
    assert label == _oracle(obj)


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        "{\"a\":" * 10_000 + "1" + "}" * 10_000,  # under the size cap: the JSON parser's depth limit
        "[" * 30_000 + "]" * 30_000,
        '{"pod_id":"x","deep":' + "[" * 30_000 + "]" * 30_000 + "}",
        '{"pod_id":"x","deep":' + "[" * 500 + "]" * 500 + "}",  # parses; deep extras are ignored
        "x" * 10_000_000,
        json.dumps({"cashu_token": "cashuA" + "A" * (MAX_CONTENT_CHARS + 1), "pod_image": "i", "ssh_username": "u",
                    "ssh_password": "p"}),
        "\ud800",
        "\x00",
        "",
        "null",
        "1e999999",
        "-" * 1000,
        '"' + "\\" * 1001 + '"',
    ],
    ids=lambda c: f"{c[:12]!r}..{len(c)}",
)
def test_dispatch_survives_hostile_input(content: str) -> None:
    result = dispatch(content)
    assert _is_request_or_invalid(result)
    if content.startswith('{"pod_id":"x","deep":' + "[" * 500 + "]"):
        assert isinstance(result, StatusRequest)
    if isinstance(result, ErrorReply):
        assert result.details is not None and len(result.details) < 400  # never echoes the whole input


# ---------------------------------------------------------------- strict integers

SAMPLES: dict[type[WireModel], dict[str, Any]] = {
    SpawnRequest: {"cashu_token": "t", "pod_spec_id": "basic", "pod_image": "i", "ssh_username": "u",
                   "ssh_password": "p", "volume_encryption": {"version": 1, "algorithm": "luks2-aes-xts",
                                                              "key_b64": "k"}},
    AccessDetails: {"pod_npub": "container-1", "node_port": 31000, "expires_at": "e", "cpu_millicores": 1000,
                    "memory_mb": 1024, "pod_spec_name": "B", "pod_spec_description": "d", "instructions": [],
                    "template_ports": [{"host_port": 30043, "container_port": 7777, "protocol": "tcp",
                                        "label": "relay-ws"}]},
    TopUpReply: {"success": True, "pod_npub": "container-1", "extended_duration_seconds": 600,
                 "new_expires_at": "e", "message": "m"},
    StatusReply: {"pod_id": "1", "status": "Running", "expires_at": "e", "time_remaining_seconds": 10,
                  "cpu_millicores": 1000, "memory_mb": 1024, "ssh_host": "h", "ssh_port": 31000,
                  "ssh_username": "root"},
    OfferContent: {"provider_npub": "p", "hostname": "h", "location": None, "capabilities": [],
                   "specs": [{"id": "basic", "name": "B", "description": "d", "cpu_millicores": 1000,
                              "memory_mb": 1024, "rate_msats_per_sec": 50}],
                   "whitelisted_mints": [], "uptime_percent": 100.0, "total_jobs_completed": 7,
                   "api_endpoint": None, "version": 1, "isolation_level": "dedicated-host",
                   "stake_proof": {"utxo_outpoint": "tx:0", "locktime_unix": 1, "sats": 2, "provider_pubkey_hex": "a",
                                   "signature_hex": "b", "version": 1}},
    HeartbeatContent: {"provider_npub": "p", "timestamp": 1780000000, "active_workloads": 2,
                       "available_capacity": {"cpu_available": 100000, "memory_mb_available": 0,
                                              "storage_gb_available": 0}, "version": 1},
}

MAXIMA = {"node_port": U16_MAX, "ssh_port": U16_MAX, "host_port": U16_MAX, "container_port": U16_MAX,
          "version": U8_MAX, "active_workloads": U32_MAX}


def _int_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _int_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _int_paths(v, (*path, i))]
    return []


def _with(sample: dict[str, Any], path: tuple[Any, ...], value: Any) -> str:
    data = copy.deepcopy(sample)
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return json.dumps(data)


INT_FIELDS = [(model, path) for model, sample in SAMPLES.items() for path in _int_paths(sample)]


def test_every_integer_field_is_probed() -> None:
    names = {p[-1] for _, p in INT_FIELDS}
    assert names == {
        "version", "node_port", "cpu_millicores", "memory_mb", "host_port", "container_port",
        "extended_duration_seconds", "time_remaining_seconds", "ssh_port", "rate_msats_per_sec",
        "total_jobs_completed", "locktime_unix", "sats", "timestamp", "active_workloads", "cpu_available",
        "memory_mb_available", "storage_gb_available",
    }


@pytest.mark.parametrize(("model", "path"), INT_FIELDS, ids=lambda x: x.__name__ if isinstance(x, type) else ".".join(
    map(str, x)))
def test_integer_fields_are_strict_unsigned_and_bounded(model: type[WireModel], path: tuple[Any, ...]) -> None:
    sample = SAMPLES[model]
    model.from_json(json.dumps(sample))  # the sample itself is valid
    maximum = MAXIMA.get(path[-1], U64_MAX)
    assert "1000.0" in _with(sample, path, 1000.0)
    for bad in (1000.0, 0.0, True, False, -1, maximum + 1, "1000", None):
        with pytest.raises(ValidationError):
            model.from_json(_with(sample, path, bad))
    for good in (0, maximum):
        model.from_json(_with(sample, path, good))


def test_bad_integer_makes_a_request_invalid() -> None:
    # Same through dispatch: a float or bool where an integer belongs ends as invalid_request.
    base = SAMPLES[SpawnRequest]
    for bad in (1.0, True, -1, 256):
        result = dispatch(_with(base, ("volume_encryption", "version"), bad))
        assert isinstance(result, ErrorReply) and result.error_type == "invalid_request"
    assert isinstance(dispatch(json.dumps(base)), SpawnRequest)


def test_uptime_accepts_float_or_integer_but_not_bool() -> None:
    sample = SAMPLES[OfferContent]
    assert OfferContent.from_json(_with(sample, ("uptime_percent",), 99)).to_wire()["uptime_percent"] == 99.0
    assert OfferContent.from_json(_with(sample, ("uptime_percent",), 99.5)).uptime_percent == 99.5
    with pytest.raises(ValidationError):
        OfferContent.from_json(_with(sample, ("uptime_percent",), True))


# ---------------------------------------------------------------- every reply can be sent

any_chars = st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["pod_id", "pod_npub", "cashu_token", "ssh_password", "x"]), any_chars, st.booleans())
def test_dispatch_result_always_encodes_as_utf8(key: str, value: str, escaped: bool) -> None:
    # Escaped: JSON "\ud800" escapes (valid JSON text); raw: the string itself holds the surrogate.
    content = json.dumps({key: value, "cashu_token": "t"}, ensure_ascii=escaped)
    result = dispatch(content)
    result.to_json().encode("utf-8")
    if isinstance(result, StatusRequest | TopUpRequest | SpawnRequest):
        # A request that parsed holds only strings a reply can echo back.
        for v in result.to_wire().values():
            if isinstance(v, str):
                v.encode("utf-8")


def test_lone_surrogate_escape_is_invalid_request() -> None:
    result = dispatch('{"pod_id":"\\ud800"}')
    assert isinstance(result, ErrorReply) and result.error_type == "invalid_request"
    assert "surrogate" in (result.details or "")
    # A correctly paired surrogate escape is a normal character (here an emoji).
    ok = dispatch('{"pod_id":"\\ud83d\\ude80"}')
    assert isinstance(ok, StatusRequest) and ok.pod_id == "🚀"

"""Every entry of the paygress 0.1.9 compatibility vectors (tests/data/vectors.json, protocol §7).

tests/data/vectors.json is a copy of the shared spec's file so that CI on a clean clone has it;
``test_vectors_copy_is_current`` notices when the shared original moves on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
from pathlib import Path
from typing import Any

import nostr_sdk
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from paygressd.core import keys, rules
from paygressd.wire import errors
from paygressd.wire.dispatch import dispatch
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

DATA = Path(__file__).parent / "data" / "vectors.json"
SHARED = Path("/work/shared/spec/vectors.json")
V: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_vectors_copy_is_current() -> None:
    if not SHARED.exists():
        pytest.skip("shared spec not present (clean clone)")
    assert json.loads(SHARED.read_text(encoding="utf-8")) == V


def test_every_section_is_covered() -> None:
    # A new section in vectors.json must get a test here, not be silently ignored.
    assert set(V) == {
        "about", "tokens", "requests", "pod_ids", "passwords", "replies", "events", "keys", "nip44_v2",
        "lease_math", "ssh_port_upstream_rule",
    }


# ---------------------------------------------------------------- requests: dispatch (§2.1)

_KIND = {"spawn": SpawnRequest, "topup": TopUpRequest, "status": StatusRequest}


@pytest.mark.parametrize("name", sorted(V["requests"]))
def test_request_dispatch(name: str) -> None:
    entry = V["requests"][name]
    content = entry["raw"] if "raw" in entry else compact(entry["json"])
    result = dispatch(content)
    expected = entry["dispatch"]
    if expected == "invalid_request":
        assert isinstance(result, ErrorReply)
        assert result.error_type == "invalid_request"
        assert result.message == "Failed to parse request"
        assert result.details is not None and result.details.startswith("JSON parsing failed: ")
        assert f"Content: '{content[:100]}" in result.details
    else:
        assert type(result) is _KIND[expected]
        # A parsed request re-serializes to what the consumer sent (same fields, same order).
        assert result.to_json() == content


def test_spawn_v0_has_no_newer_fields() -> None:
    req = dispatch(compact(V["requests"]["spawn_v0"]["json"]))
    assert isinstance(req, SpawnRequest)
    assert (req.replication, req.template_slug, req.primary_npub, req.workload_id, req.volume_encryption) == (
        None, None, None, None, None,
    )
    assert req.pod_spec_id == "basic"


def test_invalid_request_details_truncate_long_content() -> None:
    content = compact({"weird": "x" * 300})
    result = dispatch(content)
    assert isinstance(result, ErrorReply)
    assert result.details is not None
    assert result.details.endswith(f"Content: '{content[:100]}...'")
    assert "data did not match any variant of untagged enum PrivateRequest" in result.details


# ---------------------------------------------------------------- replies: classification (§2.6, §2.8)


def _parses(model: type[WireModel], raw: str) -> bool:
    try:
        model.from_json(raw)
    except ValidationError:
        return False
    return True


def classify_generic(raw: str) -> str:
    """Try every reply schema in order access → topup → status → error; else other."""
    for label, model in (("access", AccessDetails), ("topup", TopUpReply), ("status", StatusReply),
                         ("error", ErrorReply)):
        if _parses(model, raw):
            return label
    return "other"


def classify_as_cli(command: str, raw: str) -> str:
    """What paygress-cli 0.1.9 makes of a reply to each command (protocol §2.6, last paragraph)."""
    order: dict[str, list[tuple[str, type[WireModel]]]] = {
        "spawn": [("access", AccessDetails), ("error", ErrorReply)],
        "topup": [("topup", TopUpReply), ("error", ErrorReply)],
        "status": [("status", StatusReply)],
    }
    for label, model in order[command]:
        if _parses(model, raw):
            return label
    return "unrecognized"


@pytest.mark.parametrize("name", sorted(V["replies"]))
def test_reply_classification(name: str) -> None:
    entry = V["replies"][name]
    raw = compact(entry["json"])
    kind = entry["classify"]
    assert classify_generic(raw) == kind
    assert classify_as_cli("spawn", raw) == (kind if kind in ("access", "error") else "unrecognized")
    assert classify_as_cli("topup", raw) == (kind if kind in ("topup", "error") else "unrecognized")
    # status accepts only a status reply: an error reply is "unrecognized" to the CLI.
    assert classify_as_cli("status", raw) == (kind if kind == "status" else "unrecognized")


def test_non_json_reply_is_other() -> None:
    assert classify_generic("definitely not json") == "other"
    assert classify_as_cli("spawn", "definitely not json") == "unrecognized"


@pytest.mark.parametrize("name", sorted(n for n, e in V["replies"].items() if e["classify"] != "other"))
def test_reply_reserializes_byte_exact(name: str) -> None:
    model = {"access": AccessDetails, "topup": TopUpReply, "status": StatusReply, "error": ErrorReply}[
        V["replies"][name]["classify"]
    ]
    raw = compact(V["replies"][name]["json"])
    assert model.from_json(raw).to_json() == raw


# The examples printed in protocol §2.5/2.7/2.8/2.6/2.9, verbatim: what the Rust provider emits.
PROTOCOL_EXAMPLES = {
    ("replies", "access_details_full"): (
        '{"pod_npub":"container-1000","node_port":31000,"expires_at":"2026-05-01T12:00:00+00:00",'
        '"cpu_millicores":1000,"memory_mb":1024,"pod_spec_name":"Basic","pod_spec_description":"1 vCPU, 1GB RAM",'
        '"instructions":["🚀 Workload provisioned successfully!","👤 Username: root","🔑 Password: k3VqZ8mR2pLx9TwA",'
        '"⌛ Expires: 2026-05-01 12:00:00 UTC","Access: You can connect to the container using SSH.",'
        '"  ssh -p 31000 root@203.0.113.7"],"host_address":"203.0.113.7"}'
    ),
    ("replies", "topup_reply"): (
        '{"success":true,"pod_npub":"container-1000","extended_duration_seconds":600,'
        '"new_expires_at":"2026-05-01T12:10:00+00:00","message":"Lease extended by 600s (60000 msats @ 100 msats/sec)"}'
    ),
    ("replies", "status_reply"): (
        '{"pod_id":"1000","status":"Running","expires_at":"2026-05-01T12:00:00+00:00","time_remaining_seconds":3540,'
        '"cpu_millicores":1000,"memory_mb":1024,"ssh_host":"203.0.113.7","ssh_port":31000,"ssh_username":"root"}'
    ),
    ("replies", "error_insufficient"): (
        '{"error_type":"insufficient_payment","message":"Insufficient payment for minimum duration. '
        'Required: 6000 msats for 60s","details":null}'
    ),
    ("events", "offer_kvm_example"): (
        '{"provider_npub":"ee6afe4b4a6e4fe49d6c35359d1161a6fd26fbe5d6eefcbab1c9c147731bf08a",'
        '"hostname":"SwiftGoldenOwl","location":"DE","capabilities":["lxc","vm"],"specs":[{"id":"basic",'
        '"name":"Basic","description":"1 vCPU, 1GB RAM","cpu_millicores":1000,"memory_mb":1024,'
        '"rate_msats_per_sec":50},{"id":"standard","name":"Standard","description":"2 vCPU, 2GB RAM",'
        '"cpu_millicores":2000,"memory_mb":2048,"rate_msats_per_sec":100}],'
        '"whitelisted_mints":["https://testnut.cashu.space"],"uptime_percent":100.0,"total_jobs_completed":0,'
        '"api_endpoint":null,"version":1,"isolation_level":"dedicated-host"}'
    ),
    ("events", "heartbeat_example"): (
        '{"provider_npub":"ee6afe4b4a6e4fe49d6c35359d1161a6fd26fbe5d6eefcbab1c9c147731bf08a","timestamp":1780000000,'
        '"active_workloads":2,"available_capacity":{"cpu_available":100000,"memory_mb_available":0,'
        '"storage_gb_available":0},"version":1}'
    ),
}


@pytest.mark.parametrize("where", sorted(PROTOCOL_EXAMPLES))
def test_protocol_examples_byte_exact(where: tuple[str, str]) -> None:
    section, name = where
    expected = PROTOCOL_EXAMPLES[where]
    vector = V[section][name]["json"]
    assert compact(vector) == expected  # the vector is the protocol's example
    model = {
        "access_details_full": AccessDetails, "topup_reply": TopUpReply, "status_reply": StatusReply,
        "error_insufficient": ErrorReply, "offer_kvm_example": OfferContent, "heartbeat_example": HeartbeatContent,
    }[name]
    out = model.from_json(expected).to_json()
    assert out == expected
    assert out.encode("utf-8") == expected.encode("utf-8")


def test_access_details_built_in_code_matches_upstream_bytes() -> None:
    # Built field by field, the way the provider will: emoji raw, field order, host_address last.
    built = AccessDetails(
        pod_npub=rules.pod_npub(1000), node_port=31000, expires_at="2026-05-01T12:00:00+00:00",
        cpu_millicores=1000, memory_mb=1024, pod_spec_name="Basic", pod_spec_description="1 vCPU, 1GB RAM",
        instructions=V["replies"]["access_details_full"]["json"]["instructions"], host_address="203.0.113.7",
    )
    assert built.to_json() == PROTOCOL_EXAMPLES[("replies", "access_details_full")]
    assert "\\u" not in built.to_json()


def test_offer_uptime_integer_literal_is_emitted_as_float() -> None:
    data = dict(V["events"]["offer_kvm_example"]["json"], uptime_percent=100)
    assert OfferContent.model_validate(data).to_json() == PROTOCOL_EXAMPLES[("events", "offer_kvm_example")]


# ---------------------------------------------------------------- optional fields (§0)


def test_access_details_v0_defaults_and_omission() -> None:
    raw = compact(V["replies"]["access_details_v0"]["json"])
    parsed = AccessDetails.from_json(raw)
    assert parsed.host_address == ""
    assert parsed.template_ports == []
    out = json.loads(parsed.to_json())
    assert "host_address" not in out
    assert "template_ports" not in out
    assert parsed.to_json() == raw


def test_error_details_null_is_present() -> None:
    out = errors.token_already_spent().to_json()
    assert out == (
        '{"error_type":"token_already_spent","message":"This Cashu token has already been spent at the mint",'
        '"details":null}'
    )
    parsed = ErrorReply.from_json(compact(V["replies"]["error_with_details"]["json"]))
    assert parsed.details == "operator-tunable"


def test_error_refund_token_only_when_set() -> None:
    plain = errors.race_lost()
    assert "refund_token" not in json.loads(plain.to_json())
    with_refund = plain.model_copy(update={"refund_token": "cashuBxyz"})
    assert json.loads(with_refund.to_json())["refund_token"] == "cashuBxyz"
    assert list(json.loads(with_refund.to_json())) == ["error_type", "message", "details", "refund_token"]


# ---------------------------------------------------------------- events: v0 and unknown fields (§2.12)


@pytest.mark.parametrize("name", sorted(V["events"]))
def test_event_vectors(name: str) -> None:
    entry = V["events"][name]
    raw = compact(entry["json"])
    model = {38383: OfferContent, 38384: HeartbeatContent}[entry["kind"]]
    parsed = model.from_json(raw)
    assert parsed.version == 1
    if isinstance(parsed, OfferContent):
        expected_level = entry["json"].get("isolation_level", "shared-kernel")
        assert parsed.isolation_level == expected_level
    out = json.loads(parsed.to_json())
    if name == "offer_v0":
        assert out == {**entry["json"], "version": 1, "isolation_level": "shared-kernel"}
        assert parsed.isolation_level == "shared-kernel"
    elif name == "heartbeat_v0":
        assert out == {**entry["json"], "version": 1}
    elif name == "offer_future_field":
        assert "future_field_we_have_no_clue_about" not in out
        assert out == {k: v for k, v in entry["json"].items() if k != "future_field_we_have_no_clue_about"}
    else:
        assert parsed.to_json() == raw


# ---------------------------------------------------------------- pod ids, passwords (§3.6, §3.7)


@pytest.mark.parametrize(("text", "vmid"), sorted(V["pod_ids"]["valid"].items()))
def test_pod_id_valid(text: str, vmid: int) -> None:
    assert rules.parse_pod_id(text) == vmid


@pytest.mark.parametrize("text", V["pod_ids"]["invalid"])
def test_pod_id_invalid(text: str) -> None:
    assert rules.parse_pod_id(text) is None


@pytest.mark.parametrize("pw", V["passwords"]["honoured"])
def test_password_honoured(pw: str) -> None:
    assert rules.choose_password(pw) == pw


@pytest.mark.parametrize("pw", V["passwords"]["replaced"])
def test_password_replaced(pw: str) -> None:
    chosen = {rules.choose_password(pw) for _ in range(5)}
    alnum = set(string.ascii_letters + string.digits)
    for got in chosen:
        assert got != pw
        assert len(got) == 16
        assert set(got) <= alnum
    # Generated, not a constant: five draws of 62^16 do not collide.
    assert len(chosen) == 5


# ---------------------------------------------------------------- lease math and texts (§3.4)


@pytest.mark.parametrize("entry", V["lease_math"], ids=lambda e: f"{e['msats']}@{e['rate_msats_per_sec']}")
def test_lease_math(entry: dict[str, Any]) -> None:
    msats, rate = entry["msats"], entry["rate_msats_per_sec"]
    if "seconds" in entry:
        assert rules.lease_seconds(msats, rate) == entry["seconds"]
        assert rules.spawn_duration(msats, rate, 60) == entry["seconds"]
    if entry.get("result") == "insufficient_payment":
        minimum = entry["minimum_duration_seconds"]
        outcome = rules.spawn_duration(msats, rate, minimum)
        assert outcome == rules.Insufficient(required_msats=minimum * rate, minimum_seconds=minimum)
        assert isinstance(outcome, rules.Insufficient)
        reply = errors.insufficient_payment_spawn(outcome.minimum_seconds, rate)
        assert reply.error_type == "insufficient_payment"
        assert reply.message == entry["message"]
        # Paying exactly the required amount buys exactly the minimum.
        assert rules.spawn_duration(rules.minimum_msats(rate, minimum), rate, minimum) == minimum
    if "topup_message" in entry:
        assert rules.topup_message(entry["seconds"], msats, rate) == entry["topup_message"]


def test_lease_math_rejects_zero_rate() -> None:
    with pytest.raises(ValueError):
        rules.lease_seconds(1000, 0)


# ---------------------------------------------------------------- keys (§0, §1.3)


def test_npub_hex_pair() -> None:
    pair = V["keys"]["npub_hex_pair"]
    assert keys.pubkey_hex(pair["npub"]) == pair["hex"]
    assert keys.pubkey_hex(pair["hex"]) == pair["hex"]
    assert keys.pubkey_hex(pair["hex"].upper()) == pair["hex"]
    assert keys.pubkey_hex("nostr:" + pair["npub"]) == pair["hex"]
    assert keys.same_key(pair["npub"], pair["hex"])
    assert keys.same_key(pair["hex"], "nostr:" + pair["npub"])


def test_different_npub() -> None:
    pair = V["keys"]["npub_hex_pair"]
    other = V["keys"]["different_npub"]
    assert keys.pubkey_hex(other) not in (None, pair["hex"])
    assert not keys.same_key(other, pair["hex"])
    assert not keys.same_key(other, pair["npub"])


def test_unparseable_keys_compare_literally() -> None:
    assert keys.pubkey_hex("npub1old") is None
    assert keys.same_key("npub1old", "npub1old")
    assert not keys.same_key("npub1old", "npub1new")
    assert not keys.same_key("npub1old", V["keys"]["npub_hex_pair"]["hex"])


# ---------------------------------------------------------------- NIP-44 v2 vector


def test_nip44_v2_vector() -> None:
    vec = V["nip44_v2"]
    sk1, sk2 = (nostr_sdk.SecretKey.parse(vec[k]) for k in ("sk1", "sk2"))
    pk1, pk2 = nostr_sdk.Keys(sk1).public_key(), nostr_sdk.Keys(sk2).public_key()
    assert nostr_sdk.nip44_decrypt(sk2, pk1, vec["payload"]) == vec["plaintext"]
    assert nostr_sdk.nip44_decrypt(sk1, pk2, vec["payload"]) == vec["plaintext"]
    # conversation key = HKDF-extract(salt "nip44-v2", ECDH x), computed independently of nostr-sdk.
    priv1 = ec.derive_private_key(int(vec["sk1"], 16), ec.SECP256K1())
    pub2 = ec.derive_private_key(int(vec["sk2"], 16), ec.SECP256K1()).public_key()
    shared_x = priv1.exchange(ec.ECDH(), pub2)
    assert hmac.new(b"nip44-v2", shared_x, hashlib.sha256).hexdigest() == vec["conversation_key"]


# ---------------------------------------------------------------- ports (§3.5)


@pytest.mark.parametrize("entry", V["ssh_port_upstream_rule"], ids=lambda e: str(e["vmid"]))
def test_ssh_port_upstream_rule(entry: dict[str, Any]) -> None:
    assert rules.upstream_ssh_port(entry["vmid"], entry["vmid_range_start"], entry["ssh_port_start"]) == entry["port"]


# ---------------------------------------------------------------- tokens: the pure parts only
# Decoding the token strings is the payments helper's job (its decoder has its own tests).


def test_token_amount_in_msats() -> None:
    tok = V["tokens"]["v3_testnut_100sat"]
    assert rules.unit_to_msats(tok["amount_sat"], tok["unit"]) == tok["msats"]
    assert rules.unit_to_msats(5, "msat") == 5
    assert rules.unit_to_msats(5, "SAT") == 5000
    assert rules.unit_to_msats(5, "usd") is None


def test_token_mints_against_whitelist() -> None:
    whitelist = [rules.normalize_mint_url("https://testnut.cashu.space/")]
    assert rules.normalize_mint_url(V["tokens"]["v3_testnut_100sat"]["mint"]) in whitelist
    attacker = rules.normalize_mint_url(V["tokens"]["v3_attacker_mint"]["mint"])
    assert attacker == "https://attacker.example"
    assert attacker not in whitelist
    reply = errors.non_whitelisted_mint(attacker)
    assert reply.error_type == "non_whitelisted_mint"
    assert "attacker.example" in reply.message


@pytest.mark.parametrize("name", sorted(V["tokens"]))
def test_token_vectors_are_well_formed(name: str) -> None:
    tok = V["tokens"][name]["token"]
    assert tok.startswith("cashuA")
    # Such a token in a spawn request dispatches as a spawn; refusing it is the payments layer's job.
    req = dispatch(compact({"cashu_token": tok, "pod_spec_id": "basic", "pod_image": "ubuntu:22.04",
                            "ssh_username": "user", "ssh_password": "pw"}))
    assert isinstance(req, SpawnRequest) and req.cashu_token == tok


# ---------------------------------------------------------------- the error catalogue (§2.6)
# (error_type, message column copied verbatim from the protocol table, builder, substitutions).
# The builder is called with the substitution values in order; <…> placeholders are replaced by them.

CATALOGUE: list[tuple[str, str, Any, list[tuple[str, Any]]]] = [
    ("template_unsupported", "this provider's backend serves its own image and cannot run templates",
     errors.template_unsupported, []),
    ("invalid_token", "Invalid Cashu token: <reason>", errors.invalid_token, [("<reason>", "Unsupported token")]),
    ("non_whitelisted_mint", "Mint <normalized mint url> is not accepted by this provider",
     errors.non_whitelisted_mint, [("<normalized mint url>", "https://attacker.example")]),
    ("token_already_spent", "This Cashu token has already been spent at the mint", errors.token_already_spent, []),
    ("token_pending", "Token is pending at the mint; retry shortly", errors.token_pending, []),
    ("mint_network_error", "Could not reach mint: <error>", errors.mint_network_error,
     [("<error>", "HTTP 503 from mint")]),
    ("unsupported_unit", "Token unit <Unit> is not supported", errors.unsupported_unit, [("<Unit>", "Usd")]),
    ("mint_error", "Mint rejected redemption: <error>", errors.mint_error,
     [("<error>", "proofs already spent (Code: 11001)")]),
    ("no_specs", "No pod specifications available on this provider", errors.no_specs, []),
    ("provisioning_error", "Failed to find available ID: <error>", errors.provisioning_error,
     [("<error>", "no available VM id in range 1000..=1999")]),
    ("backend_error", "Backend failed to create workload: <error>", errors.backend_error,
     [("<error>", "qemu exited with status 1")]),
    ("invalid_pod_id", "Could not parse pod identifier `<pod_npub>`; expected `container-<id>` or numeric id",
     errors.invalid_pod_id, [("<pod_npub>", "npub1xyz")]),
    ("not_owner", "Pod not owned by requester", errors.not_owner, []),
    ("not_found", "Pod <pod_npub> not found", errors.topup_not_found, [("<pod_npub>", "container-1000")]),
    ("lease_expired", "Pod <pod_npub> lease has already expired; spawn a new pod instead", errors.lease_expired,
     [("<pod_npub>", "container-1000")]),
    ("spec_unavailable", "Pod <pod_npub> references unknown spec `<spec_id>`; provider misconfiguration",
     errors.spec_unavailable, [("<pod_npub>", "container-1000"), ("<spec_id>", "gold")]),
    ("race_lost", "Pod was cleaned up before topup could be applied; token has been spent", errors.race_lost, []),
    ("not_found", "Workload <pod_id> not found or you don't have access", errors.status_not_found,
     [("<pod_id>", "1000")]),
]

# Rows whose message needs arithmetic rather than plain substitution.
COMPUTED: list[tuple[str, str, ErrorReply]] = [
    ("insufficient_payment", "Insufficient payment for minimum duration. Required: 6000 msats for 60s",
     errors.insufficient_payment_spawn(60, 100)),
    ("insufficient_payment", "Insufficient topup: 99 msats buys 0 seconds at 100 msats/sec",
     errors.insufficient_payment_topup(99, 100)),
    ("provisioning_error", "Failed to find available ID: no available VM id in range 1000..=1999",
     errors.no_free_vmid(1000, 1999)),
]

# Upstream rows for features paygressd does not offer (warm standby, templates on Docker/Proxmox,
# encrypted template volumes): the code exists in ErrorType, no builder is needed.
NOT_BUILT = {"not_addressed", "unknown_template", "invalid_volume_encryption", "missing_workload_id"}


@pytest.mark.parametrize("row", CATALOGUE, ids=lambda r: f"{r[0]}:{r[2].__name__}")
def test_error_catalogue_text(row: tuple[str, str, Any, list[tuple[str, Any]]]) -> None:
    error_type, template, builder, subs = row
    expected = template
    for placeholder, value in subs:
        expected = expected.replace(placeholder, str(value))
    assert "<" not in expected.replace("<id>", "")  # every placeholder got a value
    reply = builder(*[value for _, value in subs])
    assert reply.error_type == error_type
    assert reply.message == expected
    assert reply.details is None
    assert json.loads(reply.to_json()) == {"error_type": error_type, "message": expected, "details": None}


@pytest.mark.parametrize("row", COMPUTED, ids=lambda r: r[1][:30])
def test_error_catalogue_computed(row: tuple[str, str, ErrorReply]) -> None:
    error_type, message, reply = row
    assert (reply.error_type, reply.message, reply.details) == (error_type, message, None)


def test_every_error_type_has_a_builder_or_is_upstream_only() -> None:
    built = {r[0] for r in CATALOGUE} | {r[0] for r in COMPUTED} | {"invalid_request"}
    extras = {"unknown_spec", "stale_request", "rate_limited", "capacity_exhausted", "shutting_down"}
    assert {e.value for e in errors.ErrorType} == built | NOT_BUILT | extras


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (errors.unknown_spec("gold", ["basic", "standard"]), "unknown_spec"),
        (errors.stale_request(300), "stale_request"),
        (errors.rate_limited(), "rate_limited"),
        (errors.capacity_exhausted("memory"), "capacity_exhausted"),
        (errors.shutting_down(), "shutting_down"),
    ],
)
def test_paygressd_extra_errors_keep_the_reply_shape(reply: ErrorReply, error_type: str) -> None:
    # Same shape as upstream's errors, so paygress-cli's spawn/topup still classify them as errors.
    assert reply.error_type == error_type
    assert reply.message
    assert classify_as_cli("spawn", reply.to_json()) == "error"
    assert classify_as_cli("topup", reply.to_json()) == "error"


def test_extra_error_texts_name_the_problem() -> None:
    assert "gold" in errors.unknown_spec("gold", ["basic"]).message
    assert "basic, standard" in errors.unknown_spec("gold", ["basic", "standard"]).message
    assert "300s" in errors.stale_request(300).message
    assert "not redeemed" in errors.stale_request(300).message
    assert "not redeemed" in errors.shutting_down().message

"""Offline token decoding (protocol §4.1, §7 vectors): pure, no mint needed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paygressd.core.rules import unit_to_msats
from paygressd.payments.errors import RedeemError
from paygressd.payments.tokens import RawProof, decode_token, encode_v3, encode_v4, unit_label
from paygressd.wire.errors import ErrorType

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "vectors.json").read_text())["tokens"]

# cdk 0.17.3 nut00/token.rs and NUT-00: V3 (2 + 8 sat, memo) with padding, and the multi-keyset V4 spec token.
CDK_V3_PADDED = (
    "cashuAeyJ0b2tlbiI6W3sibWludCI6Imh0dHBzOi8vODMzMy5zcGFjZTozMzM4IiwicHJvb2ZzIjpbeyJhbW91bnQiOjIsImlkIjoiMDA5YT"
    "FmMjkzMjUzZTQxZSIsInNlY3JldCI6IjQwNzkxNWJjMjEyYmU2MWE3N2UzZTZkMmFlYjRjNzI3OTgwYmRhNTFjZDA2YTZhZmMyOWUyODYxNz"
    "Y4YTc4MzciLCJDIjoiMDJiYzkwOTc5OTdkODFhZmIyY2M3MzQ2YjVlNDM0NWE5MzQ2YmQyYTUwNmViNzk1ODU5OGE3MmYwY2Y4NTE2M2VhIn"
    "0seyJhbW91bnQiOjgsImlkIjoiMDA5YTFmMjkzMjUzZTQxZSIsInNlY3JldCI6ImZlMTUxMDkzMTRlNjFkNzc1NmIwZjhlZTBmMjNhNjI0YW"
    "NhYTNmNGUwNDJmNjE0MzNjNzI4YzcwNTdiOTMxYmUiLCJDIjoiMDI5ZThlNTA1MGI4OTBhN2Q2YzA5NjhkYjE2YmMxZDVkNWZhMDQwZWExZG"
    "UyODRmNmVjNjlkNjEyOTlmNjcxMDU5In1dfV0sInVuaXQiOiJzYXQiLCJtZW1vIjoiVGhhbmsgeW91IHZlcnkgbXVjaC4ifQ=="
)
NUT00_V4_MULTI_KEYSET = (
    "cashuBo2F0gqJhaUgA_9SLj17PgGFwgaNhYQFhc3hAYWNjMTI0MzVlN2I4NDg0YzNjZjE4NTAxNDkyMThhZjkwZjcxNmE1MmJmNGE1ZWQzNDdl"
    "NDhlY2MxM2Y3NzM4OGFjWCECRFODGd5IXVW-07KaZCvuWHk3WrnnpiDhHki6SCQh88-iYWlIAK0mjE0fWCZhcIKjYWECYXN4QDEzMjNkM2Q0Nz"
    "A3YTU4YWQyZTIzYWRhNGU5ZjFmNDlmNWE1YjRhYzdiNzA4ZWIwZDYxZjczOGY0ODMwN2U4ZWVhY1ghAjRWqhENhLSsdHrr2Cw7AFrKUL9Ffr1X"
    "N6RBT6w659lNo2FhAWFzeEA1NmJjYmNiYjdjYzY0MDZiM2ZhNWQ1N2QyMTc0ZjRlZmY4YjQ0MDJiMTc2OTI2ZDNhNTdkM2MzZGNiYjU5ZDU3"
    "YWNYIQJzEpxXGeWZN5qXSmJjY8MzxWyvwObQGr5G1YCCgHicY2FtdWh0dHA6Ly9sb2NhbGhvc3Q6MzMzOGF1Y3NhdA"
)

C_HEX = "023be53e8c60530eea9b3943fda1a2ce71c7b3f0cf0dc6d846fa765aaf779fa81d"


def invalid(raw: str) -> RedeemError:
    with pytest.raises(RedeemError) as info:
        decode_token(raw)
    assert info.value.error_type == ErrorType.INVALID_TOKEN
    assert info.value.token_untouched
    assert info.value.reply.message.startswith("Invalid Cashu token: ")
    return info.value


def test_upstream_vectors_decode_as_stated() -> None:
    v = VECTORS["v3_testnut_100sat"]
    tok = decode_token(v["token"])
    assert (tok.mint, tok.unit, tok.amount) == (v["mint"], v["unit"], v["amount_sat"])
    assert unit_to_msats(tok.amount, tok.unit) == v["msats"]
    assert tok.keyset_ids == ("009a1f293253e41e",)
    assert tok.proofs[0].secret == "secret-happy-path" and tok.proofs[0].C == C_HEX

    a = decode_token(VECTORS["v3_attacker_mint"]["token"])
    assert (a.mint, a.amount) == ("https://attacker.example", 100)

    invalid(VECTORS["not_a_token"]["token"])


def test_cdk_v3_vector_parses_identically_with_and_without_padding() -> None:
    padded = decode_token(CDK_V3_PADDED)
    bare = decode_token(CDK_V3_PADDED.rstrip("="))
    assert padded.mint == "https://8333.space:3338"
    assert [p.amount for p in padded.proofs] == [2, 8]
    assert padded.memo == "Thank you very much."
    assert (bare.mint, bare.unit, bare.amount, bare.proofs, bare.memo) == (
        padded.mint, padded.unit, padded.amount, padded.proofs, padded.memo
    )
    assert bare.proofs_hash == padded.proofs_hash  # same ecash, whatever the encoding
    assert bare.token_hash != padded.token_hash


def test_nut00_multi_keyset_v4_vector() -> None:
    tok = decode_token(NUT00_V4_MULTI_KEYSET)
    assert (tok.mint, tok.unit, tok.amount) == ("http://localhost:3338", "sat", 4)
    assert tok.keyset_ids == ("00ffd48b8f5ecf80", "00ad268c4d1f5826")
    assert [p.amount for p in tok.proofs] == [1, 2, 1]
    assert decode_token(NUT00_V4_MULTI_KEYSET + "==").proofs == tok.proofs


def test_strictness_matches_cdk() -> None:
    assert invalid("cashuC" + NUT00_V4_MULTI_KEYSET[6:]).reply.message == "Invalid Cashu token: Unsupported token"
    assert "-" in NUT00_V4_MULTI_KEYSET and "_" in NUT00_V4_MULTI_KEYSET
    invalid(NUT00_V4_MULTI_KEYSET.replace("-", "+").replace("_", "/"))  # standard alphabet is refused
    invalid(NUT00_V4_MULTI_KEYSET + "\n")  # no whitespace trimming
    invalid(" " + NUT00_V4_MULTI_KEYSET)
    invalid(NUT00_V4_MULTI_KEYSET + "=")  # padding must complete a quantum
    invalid("CASHUA" + CDK_V3_PADDED[6:])
    invalid("cashuA")
    invalid("cashuB")


def test_duplicate_secrets_make_a_token_invalid() -> None:
    p = RawProof(amount=4, keyset_id="009a1f293253e41e", secret="same", C=C_HEX)
    assert "Duplicate" in invalid(encode_v4("https://mint.example", "sat", [p, p])).reply.message
    invalid(encode_v3([("https://mint.example", [p, p])]))


def test_multi_mint_v3_is_invalid_with_cdk_reason() -> None:
    p = RawProof(amount=4, keyset_id="009a1f293253e41e", secret="a", C=C_HEX)
    q = RawProof(amount=4, keyset_id="009a1f293253e41e", secret="b", C=C_HEX)
    err = invalid(encode_v3([("https://a.example", [p]), ("https://b.example", [q])]))
    assert err.reply.message == "Invalid Cashu token: token has no mint URL: Unsupported token"


def test_mint_url_is_normalized_and_unit_lowercased() -> None:
    p = RawProof(amount=7, keyset_id="009a1f293253e41e", secret="s", C=C_HEX)
    tok = decode_token(encode_v4("HTTPS://Mint.Example.COM:3338/Path/", "SAT", [p]))
    assert (tok.mint, tok.unit, tok.unit_label) == ("https://mint.example.com:3338/Path", "sat", "Sat")
    # V3 without a unit means sat.
    assert decode_token(encode_v3([("https://m.example", [p])], unit=None)).unit == "sat"
    invalid(encode_v4("ftp://m.example", "sat", [p]))


def test_structural_junk_is_invalid_not_a_crash() -> None:
    def v4(obj: object) -> str:
        return "cashuB" + base64.urlsafe_b64encode(cbor2.dumps(obj)).decode().rstrip("=")

    def v3(obj: object) -> str:
        return "cashuA" + base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    for raw in (
        v4([1, 2]), v4({"m": "https://m.example", "u": "sat"}), v4({"m": 5, "u": "sat", "t": []}),
        v4({"m": "https://m.example", "u": "sat", "t": [{"i": b"\x00", "p": [{"a": -1, "s": "x", "c": b"\x02"}]}]}),
        v4({"m": "https://m.example", "u": "sat", "t": [{"i": b"\x00", "p": [{"a": True, "s": "x", "c": b"\x02"}]}]}),
        v4({"m": "https://m.example", "u": "sat", "t": [{"i": b"\x00", "p": [{"a": 2**64, "s": "x", "c": b"\x02"}]}]}),
        v4({"m": "https://m.example", "u": "sat", "t": []}),
        v3({"token": []}), v3({"token": [{"proofs": []}]}), v3([1]),
        v3({"token": [{"mint": "https://m.example", "proofs": [{"amount": 1, "id": "zz", "secret": "s", "C": "02"}]}]}),
    ):
        invalid(raw)


def test_unit_labels_follow_rust_debug_names() -> None:
    assert [unit_label(u) for u in ("sat", "MSAT", "usd", "Eur", "auth")] == ["Sat", "Msat", "Usd", "Eur", "Auth"]
    assert unit_label("XYZ") == 'Custom("XYZ")'


proofs_strategy = st.lists(
    st.builds(
        RawProof,
        amount=st.integers(min_value=0, max_value=2**63),
        keyset_id=st.sampled_from(["009a1f293253e41e", "00ad268c4d1f5826", "01" + "ab" * 7]),
        secret=st.text(min_size=1, max_size=70),
        C=st.just(C_HEX),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda p: p.secret,
)


@given(proofs_strategy, st.sampled_from(["sat", "msat", "usd"]), st.booleans())
def test_encode_decode_round_trip(proofs: list[RawProof], unit: str, v3: bool) -> None:
    raw = encode_v3([("https://m.example", proofs)], unit=unit) if v3 else encode_v4("https://m.example", unit, proofs)
    tok = decode_token(raw)
    assert tok.amount == sum(p.amount for p in proofs)
    assert sorted(tok.proofs, key=lambda p: p.secret) == sorted(proofs, key=lambda p: p.secret)
    assert tok.unit == unit


@given(st.sampled_from(["cashuA", "cashuB"]), st.text(max_size=200))
def test_arbitrary_bodies_never_crash(prefix: str, body: str) -> None:
    try:
        decode_token(prefix + body)
    except RedeemError as exc:
        assert exc.error_type == ErrorType.INVALID_TOKEN

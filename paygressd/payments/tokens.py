"""Offline Cashu token decoding (protocol §4.1): pure, no network, no Nutshell.

We decode ourselves instead of using Nutshell's parser because Nutshell is lenient where cdk (and
so paygress-cli's provider) is strict: standard-alphabet base64, stray whitespace and multi-mint V3
tokens must all be refused as ``invalid_token`` before anything touches a mint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import cbor2

from paygressd.core.rules import normalize_mint_url
from paygressd.payments import errors

_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
# Proof amounts are u64 in cdk; anything wider cannot be a real proof.
_U64_LIMIT = 2**64
_MAX_PROOFS = 1000


@dataclass(frozen=True)
class Dleq:
    e: str
    s: str
    r: str


@dataclass(frozen=True)
class RawProof:
    amount: int
    keyset_id: str  # lowercase hex, possibly a short (8-byte) V2 id from a V4 token
    secret: str
    C: str  # lowercase hex
    dleq: Dleq | None = None
    witness: str | None = None


@dataclass(frozen=True)
class DecodedToken:
    raw: str
    mint: str  # normalized (protocol §4.2)
    unit: str  # lowercase
    amount: int  # face value, in unit
    keyset_ids: tuple[str, ...]
    token_hash: str  # sha256 hex of raw: journal key
    proofs: tuple[RawProof, ...]
    # Rust debug name of the unit (``Sat``, ``Usd``, ``Custom("xyz")``) for the unsupported_unit text.
    unit_label: str
    # sha256 over the sorted proof secrets: the same ecash however it is re-encoded.
    proofs_hash: str
    memo: str | None = None

    @property
    def version(self) -> int:
        return 3 if self.raw.startswith("cashuA") else 4


_RUST_UNITS = {"sat": "Sat", "msat": "Msat", "usd": "Usd", "eur": "Eur", "auth": "Auth"}


def unit_label(unit: str) -> str:
    """cdk's ``CurrencyUnit`` Debug form: known units case-insensitively, else ``Custom("<as sent>")``."""
    known = _RUST_UNITS.get(unit.lower())
    return known if known is not None else f'Custom("{unit}")'


def decode_token(raw: str) -> DecodedToken:
    """Decode a ``cashuA`` (V3 JSON) or ``cashuB`` (V4 CBOR) token, or raise RedeemError(invalid_token)."""
    if raw.startswith("cashuA"):
        body = _b64(raw[6:])
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise errors.invalid_token(f"JSON error: {exc}") from None
        mint, unit, memo, proofs = _v3(data)
    elif raw.startswith("cashuB"):
        body = _b64(raw[6:])
        try:
            data = cbor2.loads(body)
        except Exception as exc:  # cbor2 raises several unrelated types on junk
            raise errors.invalid_token(f"CBOR error: {exc}") from None
        mint, unit, memo, proofs = _v4(data)
    else:
        raise errors.invalid_token("Unsupported token")

    normalized = normalize_mint_url(mint)
    if normalized is None:
        raise errors.invalid_token(f"invalid mint URL: {mint}")
    if not proofs:
        raise errors.invalid_token("token has no proofs")
    if len(proofs) > _MAX_PROOFS:
        raise errors.invalid_token("too many proofs")
    secrets = [p.secret for p in proofs]
    if len(set(secrets)) != len(secrets):
        raise errors.invalid_token("Duplicate proofs in token")
    keysets: list[str] = []
    for p in proofs:
        if p.keyset_id not in keysets:
            keysets.append(p.keyset_id)
    return DecodedToken(
        raw=raw,
        mint=normalized,
        unit=unit.lower(),
        amount=sum(p.amount for p in proofs),
        keyset_ids=tuple(keysets),
        token_hash=hashlib.sha256(raw.encode("utf-8")).hexdigest(),
        proofs=tuple(proofs),
        unit_label=unit_label(unit),
        proofs_hash=proofs_hash(secrets),
        memo=memo,
    )


def proofs_hash(secrets: list[str]) -> str:
    h = hashlib.sha256()
    for s in sorted(secrets):
        h.update(s.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _b64(text: str) -> bytes:
    """URL-safe alphabet, padding optional, canonical trailing bits, nothing else (as cdk)."""
    if not text or not _B64URL.fullmatch(text):
        raise errors.invalid_token("Base64 error: invalid character or padding")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1 or (len(stripped) != len(text) and len(text) % 4 != 0):
        raise errors.invalid_token("Base64 error: invalid length")
    try:
        out = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise errors.invalid_token(f"Base64 error: {exc}") from None
    if base64.urlsafe_b64encode(out).decode("ascii").rstrip("=") != stripped:
        raise errors.invalid_token("Base64 error: non-canonical trailing bits")
    return out


def _str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise errors.invalid_token(f"{what} must be a string")
    return v


def _amount(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _U64_LIMIT:
        raise errors.invalid_token("proof amount must be an unsigned 64-bit integer")
    return v


def _hexstr(v: object, what: str) -> str:
    s = _str(v, what)
    if not _HEX.fullmatch(s):
        raise errors.invalid_token(f"{what} must be hex")
    return s.lower()


def _optional_str(v: object, what: str) -> str | None:
    return None if v is None else _str(v, what)


def _v3(data: Any) -> tuple[str, str, str | None, list[RawProof]]:
    if not isinstance(data, dict):
        raise errors.invalid_token("token is not a JSON object")
    entries = data.get("token")
    if not isinstance(entries, list) or not entries:
        raise errors.invalid_token("token has no entries")
    if len(entries) != 1:
        # cdk's text for a multi-mint V3 token.
        raise errors.invalid_token("token has no mint URL: Unsupported token")
    entry = entries[0]
    if not isinstance(entry, dict) or "mint" not in entry or entry["mint"] is None:
        raise errors.invalid_token("token has no mint URL: Unsupported token")
    mint = _str(entry["mint"], "mint")
    raw_proofs = entry.get("proofs")
    if not isinstance(raw_proofs, list):
        raise errors.invalid_token("proofs must be a list")
    proofs: list[RawProof] = []
    for p in raw_proofs:
        if not isinstance(p, dict):
            raise errors.invalid_token("proof must be an object")
        dleq = p.get("dleq")
        proofs.append(
            RawProof(
                amount=_amount(p.get("amount")),
                keyset_id=_hexstr(p.get("id"), "keyset id"),
                secret=_str(p.get("secret"), "secret"),
                C=_hexstr(p.get("C"), "C"),
                dleq=None if dleq is None else _dleq_v3(dleq),
                witness=_witness(p.get("witness")),
            )
        )
    unit = data.get("unit")
    return mint, "sat" if unit is None else _str(unit, "unit"), _optional_str(data.get("memo"), "memo"), proofs


def _witness(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, dict):  # some wallets embed the witness object rather than its JSON string
        return json.dumps(v, separators=(",", ":"))
    return _str(v, "witness")


def _dleq_v3(d: object) -> Dleq:
    if not isinstance(d, dict):
        raise errors.invalid_token("dleq must be an object")
    return Dleq(e=_hexstr(d.get("e"), "dleq.e"), s=_hexstr(d.get("s"), "dleq.s"), r=_hexstr(d.get("r"), "dleq.r"))


def _bytes_hex(v: object, what: str) -> str:
    if not isinstance(v, bytes) or not v:
        raise errors.invalid_token(f"{what} must be a byte string")
    return v.hex()


def _v4(data: Any) -> tuple[str, str, str | None, list[RawProof]]:
    if not isinstance(data, dict):
        raise errors.invalid_token("token is not a CBOR map")
    mint = _str(data.get("m"), "mint")
    unit = _str(data.get("u"), "unit")
    groups = data.get("t")
    if not isinstance(groups, list):
        raise errors.invalid_token("t must be a list")
    proofs: list[RawProof] = []
    for g in groups:
        if not isinstance(g, dict):
            raise errors.invalid_token("keyset entry must be a map")
        kid = _bytes_hex(g.get("i"), "keyset id")
        ps = g.get("p")
        if not isinstance(ps, list):
            raise errors.invalid_token("p must be a list")
        for p in ps:
            if not isinstance(p, dict):
                raise errors.invalid_token("proof must be a map")
            d = p.get("d")
            dleq = None
            if d is not None:
                if not isinstance(d, dict):
                    raise errors.invalid_token("dleq must be a map")
                dleq = Dleq(
                    e=_bytes_hex(d.get("e"), "dleq.e"),
                    s=_bytes_hex(d.get("s"), "dleq.s"),
                    r=_bytes_hex(d.get("r"), "dleq.r"),
                )
            proofs.append(
                RawProof(
                    amount=_amount(p.get("a")),
                    keyset_id=kid,
                    secret=_str(p.get("s"), "secret"),
                    C=_bytes_hex(p.get("c"), "C"),
                    dleq=dleq,
                    witness=_witness(p.get("w")),
                )
            )
    return mint, unit, _optional_str(data.get("d"), "memo"), proofs


def encode_v4(mint: str, unit: str, proofs: list[RawProof], memo: str | None = None) -> str:
    """Encode proofs as a ``cashuB`` token (used for tests and for crafting refunds offline)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in proofs:
        item: dict[str, Any] = {"a": p.amount, "s": p.secret, "c": bytes.fromhex(p.C)}
        if p.dleq is not None:
            item["d"] = {"e": bytes.fromhex(p.dleq.e), "s": bytes.fromhex(p.dleq.s), "r": bytes.fromhex(p.dleq.r)}
        if p.witness is not None:
            item["w"] = p.witness
        groups.setdefault(p.keyset_id, []).append(item)
    body: dict[str, Any] = {"t": [{"i": bytes.fromhex(k), "p": v} for k, v in groups.items()], "m": mint, "u": unit}
    if memo:
        body["d"] = memo
    return "cashuB" + base64.urlsafe_b64encode(cbor2.dumps(body)).decode("ascii").rstrip("=")


def encode_v3(entries: list[tuple[str, list[RawProof]]], unit: str | None = "sat", memo: str | None = None) -> str:
    """Encode a V3 token; several entries make a multi-mint token (which decode_token refuses)."""
    token = []
    for mint, proofs in entries:
        token.append(
            {
                "mint": mint,
                "proofs": [
                    {
                        "id": p.keyset_id,
                        "amount": p.amount,
                        "secret": p.secret,
                        "C": p.C,
                        **({"dleq": {"e": p.dleq.e, "s": p.dleq.s, "r": p.dleq.r}} if p.dleq else {}),
                        **({"witness": p.witness} if p.witness else {}),
                    }
                    for p in proofs
                ],
            }
        )
    body: dict[str, Any] = {"token": token}
    if unit is not None:
        body["unit"] = unit
    if memo:
        body["memo"] = memo
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return "cashuA" + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

"""PaymentService: the provider's Cashu wallet (protocol §4) behind one serialised entry point.

Order of checks for a token, cheapest and safest first:
1. ``check_offline``: decode, negative cache, our own receipts, whitelist, unit — zero network, so junk and
   foreign-mint tokens never reach any mint (§4.2, §8 item 11).
2. ``redeem``: a NUT-03 swap into our wallet; received proofs are committed to the wallet DB and a receipt
   is written before it returns.
Every wallet mutation (redeem, refund, send, melt, keyset refresh) holds ``self._lock``: Nutshell's wallet
keeps in-memory state and counters that must not interleave.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paygressd.core.rules import normalize_mint_url, unit_to_msats
from paygressd.logging import get_logger
from paygressd.payments import errors
from paygressd.payments import nutshell as ns
from paygressd.payments.errors import RedeemError
from paygressd.payments.tokens import DecodedToken, decode_token
from paygressd.wire.errors import ErrorType
from paygressd.wire.models import ErrorReply

log = get_logger(__name__)

PAYABLE_UNITS = ("sat", "msat")
_CODE = re.compile(r"\(Code: (\d+)\)")
# Mint answers that will be the same next time: worth remembering so junk does not hammer the mint.
_STABLE_CODES = frozenset({10000, 10001, 10002, 10003, 11007, 11009, 11010, 12000, 12001})


@dataclass(frozen=True)
class Redeemed:
    msats: int  # what we actually received, after the mint's input fee
    amount: int  # the same, in unit
    unit: str
    mint: str
    fee: int = 0  # input fee the mint kept, in unit


@dataclass(frozen=True)
class MeltResult:
    paid: bool
    mint: str
    amount_sat: int
    fee_paid_sat: int
    preimage: str | None


class PaymentError(Exception):
    """An operator-side wallet failure (refund, send, melt); the message is safe to show."""


@dataclass(frozen=True)
class _KeysetInfo:
    unit: str
    input_fee_ppk: int
    active: bool


class WalletLock:
    """Serialises wallet mutation inside this process (asyncio) and across processes (flock).

    The daemon and an operator's ``paygressd wallet send`` may run at the same time; without one lock both
    could select the same proofs, and a consumer's refund token would then be worthless.
    """

    def __init__(self, path: Path, poll: float = 0.05) -> None:
        self.path = path
        self.poll = poll
        self._local = asyncio.Lock()
        self._fd: int | None = None

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # Non-blocking attempts: a cancelled waiter must never leave a thread behind holding the lock.
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(self.poll)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        except BaseException:
            self._local.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._local.release()


class PaymentService:
    def __init__(
        self,
        wallet_dir: Path,
        whitelist: list[str],
        *,
        negative_cache_size: int = 4096,
        start_timeout: float = 10.0,
    ) -> None:
        self.wallet_dir = wallet_dir
        self.whitelist = [u for u in (normalize_mint_url(m) for m in whitelist) if u is not None]
        self._lock = WalletLock(wallet_dir / ".mutation.lock")
        self._wallets: dict[tuple[str, str], Any] = {}
        self._keysets: dict[tuple[str, str], _KeysetInfo] = {}  # (mint, keyset id) -> info
        self._negative: OrderedDict[str, ErrorReply] = OrderedDict()
        self._negative_size = negative_cache_size
        self._start_timeout = start_timeout
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the wallet DB and try to learn each mint's keysets; a mint that is down is only logged."""
        self.wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = _open_ledger(self.wallet_dir / "paygressd-payments.sqlite3")
        async with self._lock:
            for mint in self.whitelist:
                for unit in PAYABLE_UNITS:
                    await self._wallet(mint, unit)

            async def refresh(mint: str) -> None:
                try:
                    await asyncio.wait_for(self._refresh(self._wallets[(mint, "sat")], info=True),
                                           self._start_timeout)
                except Exception as exc:  # a mint that is down must not stop the daemon
                    log.warning("mint unavailable at start", mint=mint, error=_short(exc))

            await asyncio.gather(*(refresh(m) for m in self.whitelist))

    async def close(self) -> None:
        async with self._lock:
            for w in self._wallets.values():
                await ns.close_wallet(w)
            self._wallets.clear()
            if self._db is not None:
                self._db.close()
                self._db = None

    # ------------------------------------------------------------------ offline checks

    def check_offline(self, raw: str) -> DecodedToken:
        """Decode and vet a token without any network: raises RedeemError (always token_untouched)."""
        tok = decode_token(raw)
        for key in (tok.token_hash, tok.proofs_hash):
            cached = self._negative.get(key)
            if cached is not None:
                self._negative.move_to_end(key)
                raise RedeemError(cached, token_untouched=True)
        if tok.mint not in self.whitelist:
            raise errors.non_whitelisted_mint(tok.mint)
        if tok.unit not in PAYABLE_UNITS:
            raise errors.unsupported_unit(tok.unit_label)
        for kid in tok.keyset_ids:
            info = self._keyset_info(tok.mint, kid)
            if info is not None and info.unit != tok.unit:
                # The keyset decides what the proofs are worth, whatever the token's label says.
                if info.unit not in PAYABLE_UNITS:
                    raise errors.unsupported_unit(_label(info.unit))
                raise errors.invalid_token(f"token unit {tok.unit} does not match keyset {kid} ({info.unit})")
        if self._receipt(tok) is not None:
            # We already swapped these proofs: answer like the mint would, without asking it.
            raise errors.already_spent()
        return tok

    def expected_msats(self, tok: DecodedToken) -> int:
        """Face value minus the mint's input fee (NUT-02) when we know the keysets; else face value."""
        fee = self._input_fee(tok)
        msats = unit_to_msats(max(tok.amount - (fee or 0), 0), tok.unit)
        return 0 if msats is None else msats

    def _input_fee(self, tok: DecodedToken) -> int | None:
        ppk = 0
        for p in tok.proofs:
            info = self._keyset_info(tok.mint, p.keyset_id)
            if info is None:
                return None
            ppk += info.input_fee_ppk
        return (ppk + 999) // 1000

    def _keyset_info(self, mint: str, kid: str) -> _KeysetInfo | None:
        info = self._keysets.get((mint, kid))
        if info is None and len(kid) == 16 and kid.startswith("01"):
            # V4 tokens carry short ids for v2 keysets: a prefix of the full id.
            for (m, full), i in self._keysets.items():
                if m == mint and full.startswith(kid):
                    return i
        return info

    # ------------------------------------------------------------------ redeem

    async def redeem(self, tok: DecodedToken) -> Redeemed:
        """Swap the token into our wallet (NUT-03). Raises RedeemError with a stable error_type."""
        self.check_offline(tok.raw)
        async with self._lock:
            try:
                return await self._redeem_locked(tok)
            except RedeemError as exc:
                self._remember_failure(tok, exc)
                raise

    async def _redeem_locked(self, tok: DecodedToken) -> Redeemed:
        w = await self._wallet(tok.mint, tok.unit)
        proofs = ns.proofs_from_raw(tok.proofs)
        # Phase 1: make sure we know the token's keysets (refresh once if not) — nothing spent yet.
        try:
            if not getattr(w, "keyset_id", None) or not self._wallet_knows(w, tok):
                await self._refresh(w)
        except Exception as exc:
            raise _classify(exc, swap_sent=False) from None
        if not self._wallet_knows(w, tok):
            for kid in tok.keyset_ids:
                info = self._keyset_info(tok.mint, kid)
                if info is not None and info.unit not in PAYABLE_UNITS:
                    raise errors.unsupported_unit(_label(info.unit))
            raise errors.mint_rejected(f"keyset not found: {', '.join(tok.keyset_ids)}")
        try:
            await w._expand_short_keyset_ids(proofs)
            w.verify_proofs_dleq(proofs)
        except Exception as exc:
            raise errors.invalid_token(f"DLEQ proof invalid: {_short(exc)}") from None
        fee = w.get_fees_for_proofs(proofs)
        if tok.amount - fee <= 0:
            raise errors.mint_rejected(f"token value {tok.amount} does not cover the mint's input fee {fee}")
        # Phase 2: the swap. From here a lost reply can mean the mint spent the token.
        try:
            keep, _send = await w.split(proofs=proofs, amount=0)
        except Exception as exc:
            if not (str(exc).startswith("Mint Error:") and "keyset" in str(exc).lower()):
                raise _classify(exc, swap_sent=True) from None
            # The mint refused (so spent nothing), e.g. our output keyset was rotated: refresh, retry once.
            try:
                await self._refresh(w)
                keep, _send = await w.split(proofs=proofs, amount=0)
            except Exception as exc2:
                raise _classify(exc2, swap_sent=True) from None
        received = int(ns.sum_proofs(keep))
        msats = unit_to_msats(received, tok.unit)
        assert msats is not None  # unit was checked offline
        result = Redeemed(msats=msats, amount=received, unit=tok.unit, mint=tok.mint, fee=tok.amount - received)
        self._store_receipt(tok, result)
        log.info("token redeemed", mint=tok.mint, unit=tok.unit, amount=received, fee=result.fee,
                 token_hash=tok.token_hash[:16])
        return result

    def _wallet_knows(self, w: Any, tok: DecodedToken) -> bool:
        for kid in tok.keyset_ids:
            if kid in w.keysets:
                continue
            if len(kid) == 16 and kid.startswith("01") and any(k.startswith(kid) for k in w.keysets):
                continue
            return False
        return True

    def _remember_failure(self, tok: DecodedToken, exc: RedeemError) -> None:
        stable = exc.error_type in (ErrorType.TOKEN_ALREADY_SPENT, ErrorType.INVALID_TOKEN, ErrorType.UNSUPPORTED_UNIT)
        if exc.error_type == ErrorType.MINT_ERROR:
            m = _CODE.search(exc.reply.message)
            stable = (m is not None and int(m.group(1)) in _STABLE_CODES) or "keyset not found" in exc.reply.message
        if not stable:
            return
        for key in (tok.token_hash, tok.proofs_hash):
            self._negative[key] = exc.reply
            self._negative.move_to_end(key)
        while len(self._negative) > self._negative_size:
            self._negative.popitem(last=False)

    async def recover(self, tok: DecodedToken) -> Redeemed | None:
        """After a crash: did *we* redeem this token? Our receipt, or its secrets in our spent-proofs table."""
        found = self._receipt(tok)
        if found is not None:
            return found
        async with self._lock:
            w = await self._wallet(tok.mint, tok.unit if tok.unit in PAYABLE_UNITS else "sat")
            secrets = [p.secret for p in tok.proofs]
            rows = await w.db.fetchall(
                "SELECT secret FROM proofs_used WHERE secret IN ("
                + ",".join(f":s{i}" for i in range(len(secrets)))
                + ")",
                {f"s{i}": s for i, s in enumerate(secrets)},
            )
            if len(rows) != len(secrets):
                return None
            fee = self._input_fee(tok) or 0
            amount = tok.amount - fee
            msats = unit_to_msats(amount, tok.unit) or 0
            result = Redeemed(msats=msats, amount=amount, unit=tok.unit, mint=tok.mint, fee=fee)
            self._store_receipt(tok, result)
            return result

    # ------------------------------------------------------------------ paying out

    async def make_refund(self, mint: str, unit: str, amount: int, *, key: str | None = None,
                          include_receive_fee: bool = True) -> str:
        """A fresh token worth ``amount`` (in ``unit``) to the consumer, from our wallet at ``mint``.

        The proofs are reserved in the wallet DB, so they are never paid out twice. With ``key`` (e.g. the
        journal id) the call is idempotent: the same key returns the same token. With
        ``include_receive_fee`` the token also covers the consumer's own swap fee, so they net ``amount``.
        """
        norm = normalize_mint_url(mint)
        if norm is None or unit not in PAYABLE_UNITS or amount <= 0:
            raise PaymentError(f"cannot refund {amount} {unit} at {mint}")
        if key is not None:
            existing = self._refund_for(key)
            if existing is not None:
                return existing
        async with self._lock:
            if key is not None:
                existing = self._refund_for(key)
                if existing is not None:
                    return existing
            w = await self._wallet(norm, unit)
            token = await self._send_locked(w, amount, include_fees=include_receive_fee)
            if key is not None:
                self._store_refund(key, norm, unit, amount, token)
            log.info("refund token prepared", mint=norm, unit=unit, amount=amount)
            return token

    async def send(self, amount: int, mint: str | None = None) -> str:
        """Operator: a token for ``amount`` sat from the given mint, or from the mint with the largest balance."""
        if amount <= 0:
            raise PaymentError("amount must be positive")
        async with self._lock:
            w = await self._pick_wallet(mint, amount)
            return await self._send_locked(w, amount, include_fees=False)

    async def _send_locked(self, w: Any, amount: int, *, include_fees: bool) -> str:
        try:
            await w.load_proofs(reload=True)
            if not getattr(w, "keyset_id", None):
                await self._refresh(w)
            if w.available_balance.amount < amount:
                raise PaymentError(f"balance too low at {w.url}: have {int(w.available_balance.amount)} {w.unit.name}, "
                                   f"need {amount}")
            proofs, _fees = await w.select_to_send(w.proofs, amount, set_reserved=True, include_fees=include_fees)
            return str(await w.serialize_proofs(proofs, include_dleq=True, legacy=False))
        except PaymentError:
            raise
        except Exception as exc:
            raise PaymentError(f"could not prepare a token at {w.url}: {_short(exc)}") from None

    async def balance(self) -> dict[str, int]:
        """Spendable (unreserved) balance per mint, in sat (msat proofs rounded down)."""
        out: dict[str, int] = {}
        async with self._lock:
            for mint in self.whitelist:
                total = 0
                for unit in PAYABLE_UNITS:
                    w = await self._wallet(mint, unit)
                    await w.load_proofs(reload=True)
                    avail = int(w.available_balance.amount)
                    total += avail if unit == "sat" else avail // 1000
                out[mint] = total
        return out

    async def pay_invoice(self, bolt11: str, mint: str | None = None) -> MeltResult:
        """Operator: melt ecash to pay a Lightning invoice from the first mint that can cover it."""
        async with self._lock:
            candidates = [normalize_mint_url(mint)] if mint else list(self.whitelist)
            last_error = "no whitelisted mint"
            for m in candidates:
                if m is None:
                    raise PaymentError(f"invalid mint URL {mint}")
                w = await self._wallet(m, "sat")
                try:
                    await w.load_proofs(reload=True)
                    if not getattr(w, "keyset_id", None):
                        await self._refresh(w, info=True)
                    quote = await w.melt_quote(bolt11)
                    total = int(quote.amount) + int(quote.fee_reserve)
                    if w.available_balance.amount < total + w.coinselect_fee(w.proofs, total):
                        last_error = f"balance too low at {m}: need {total} sat"
                        continue
                    proofs, _ = await w.select_to_send(w.proofs, total, include_fees=True, set_reserved=False)
                    resp = await w.melt(proofs, bolt11, quote.fee_reserve, quote.quote)
                except Exception as exc:
                    last_error = f"{m}: {_short(exc)}"
                    continue
                state = str(getattr(resp, "state", "") or "").lower()
                change = sum(int(c.amount) for c in (getattr(resp, "change", None) or []))
                return MeltResult(
                    paid=state.endswith("paid") and not state.endswith("unpaid"),
                    mint=m,
                    amount_sat=int(quote.amount),
                    fee_paid_sat=max(int(quote.fee_reserve) - change, 0),
                    preimage=getattr(resp, "payment_preimage", None),
                )
            raise PaymentError(f"could not pay invoice: {last_error}")

    async def _pick_wallet(self, mint: str | None, amount: int) -> Any:
        if mint is not None:
            norm = normalize_mint_url(mint)
            if norm is None:
                raise PaymentError(f"invalid mint URL {mint}")
            return await self._wallet(norm, "sat")
        best: Any = None
        for m in self.whitelist:
            w = await self._wallet(m, "sat")
            await w.load_proofs(reload=True)
            if best is None or w.available_balance.amount > best.available_balance.amount:
                best = w
        if best is None:
            raise PaymentError("no mint configured")
        return best

    # ------------------------------------------------------------------ wallets and keysets

    async def _wallet(self, mint: str, unit: str) -> Any:
        w = self._wallets.get((mint, unit))
        if w is None:
            w = await ns.open_wallet(mint, self.wallet_dir, unit)
            self._wallets[(mint, unit)] = w
            await self._cache_keysets(w)
            if any(k.active for k in w.keysets.values()):
                # Known from an earlier run: usable without asking the mint.
                await w.activate_keyset()
        return w

    async def _refresh(self, w: Any, *, info: bool = False) -> None:
        """Fetch keysets (and optionally mint info) from the mint; raises on any network failure."""
        await w.load_mint_keysets()
        await self._cache_keysets(w)
        if info:
            await w.load_mint_info(reload=True)
        if any(k.active and k.unit.name == w.unit.name for k in w.keysets.values()):
            await w.activate_keyset()

    async def _cache_keysets(self, w: Any) -> None:
        rows = await w.db.fetchall(
            "SELECT id, unit, input_fee_ppk, active FROM keysets WHERE mint_url = :url", {"url": w.url}
        )
        mint = normalize_mint_url(str(w.url)) or str(w.url)
        for r in rows:
            self._keysets[(mint, str(r["id"]))] = _KeysetInfo(
                unit=str(r["unit"]).lower(), input_fee_ppk=int(r["input_fee_ppk"] or 0), active=bool(r["active"])
            )

    # ------------------------------------------------------------------ our small ledger

    def _ledger(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = _open_ledger(self.wallet_dir / "paygressd-payments.sqlite3")
        return self._db

    def _receipt(self, tok: DecodedToken) -> Redeemed | None:
        row = self._ledger().execute(
            "SELECT mint, unit, amount, msats, fee FROM receipts WHERE proofs_hash = ?", (tok.proofs_hash,)
        ).fetchone()
        if row is None:
            return None
        return Redeemed(msats=row[3], amount=row[2], unit=row[1], mint=row[0], fee=row[4])

    def _store_receipt(self, tok: DecodedToken, r: Redeemed) -> None:
        db = self._ledger()
        with db:
            db.execute(
                "INSERT OR IGNORE INTO receipts (proofs_hash, token_hash, mint, unit, amount, msats, fee, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tok.proofs_hash, tok.token_hash, r.mint, r.unit, r.amount, r.msats, r.fee, int(time.time())),
            )

    def _refund_for(self, key: str) -> str | None:
        row = self._ledger().execute("SELECT token FROM refunds WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _store_refund(self, key: str, mint: str, unit: str, amount: int, token: str) -> None:
        db = self._ledger()
        with db:
            db.execute(
                "INSERT INTO refunds (key, mint, unit, amount, token, at) VALUES (?, ?, ?, ?, ?, ?)",
                (key, mint, unit, amount, token, int(time.time())),
            )


def _open_ledger(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    path.chmod(0o600)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    with db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS receipts (proofs_hash TEXT PRIMARY KEY, token_hash TEXT NOT NULL,"
            " mint TEXT NOT NULL, unit TEXT NOT NULL, amount INTEGER NOT NULL, msats INTEGER NOT NULL,"
            " fee INTEGER NOT NULL, at INTEGER NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS refunds (key TEXT PRIMARY KEY, mint TEXT NOT NULL, unit TEXT NOT NULL,"
            " amount INTEGER NOT NULL, token TEXT NOT NULL, at INTEGER NOT NULL)"
        )
    return db


def _label(unit: str) -> str:
    from paygressd.payments.tokens import unit_label

    return unit_label(unit)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _classify(exc: BaseException, *, swap_sent: bool) -> RedeemError:
    """Map a Nutshell/httpx failure to a stable error (protocol §4.3 point 6)."""
    text = _short(exc)
    low = text.lower()
    if isinstance(exc, ns.httpx.ConnectError | ns.httpx.ConnectTimeout | ConnectionRefusedError):
        # The request never reached the mint.
        return errors.network(text, untouched=True)
    if isinstance(exc, ns.httpx.TransportError | OSError | asyncio.TimeoutError):
        return errors.network(text, untouched=not swap_sent)
    mint_answered = text.startswith("Mint Error:")
    if "already spent" in low or "(code: 11001)" in low:
        return errors.already_spent()
    if "pending" in low:
        return errors.pending()
    if mint_answered and any(c in low for c in ("(code: 11009)", "(code: 11010)", "unit")):
        return errors.unsupported_unit("rejected by mint")
    if isinstance(exc, ns.httpx.HTTPStatusError) or any(w in low for w in ("http", "network", "connection")):
        return errors.network(text, untouched=mint_answered or not swap_sent)
    if mint_answered or not swap_sent:
        return errors.mint_rejected(text)
    # A local failure after the swap request went out: we cannot promise the token is intact.
    return RedeemError(errors.mint_rejected(text).reply, token_untouched=False)

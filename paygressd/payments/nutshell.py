"""The only module that imports Nutshell (``cashu``), with its import-time side effects contained.

What ``import cashu.wallet…`` does to a process, and what we do about each:
1. ``cashu.core.settings`` loads ``./.env`` or ``~/.cashu/.env`` into ``os.environ`` (override=True) and into
   its settings: we import with the working directory and HOME pointed at an empty temporary directory,
   then restore ``os.environ`` exactly, so no file and no stray variable reaches either.
2. It sets ``sys.tracebacklimit = 0`` for the whole process: restored afterwards.
3. ``cashu.wallet`` replaces loguru's sinks with one on stderr: we remove it and forward INFO and above into
   stdlib logging (``paygressd.cashu``), where paygressd's redaction runs; TRACE/DEBUG (which print proof
   secrets) are dropped.
4. ``Wallet.with_db`` prints a "new mnemonic" line to stdout: we seed new wallets ourselves (no print)
   and also silence stdout around wallet creation.
Settings that would weaken security if an operator's environment set them (DEBUG turns TLS verification
off, proxies, request dumps to stdout) are forced to safe values after import.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from paygressd.payments.tokens import Dleq, RawProof

_log = logging.getLogger("paygressd.cashu")
_MISSING = object()


@contextlib.contextmanager
def _quarantine() -> Iterator[None]:
    saved_env = dict(os.environ)
    saved_tbl = getattr(sys, "tracebacklimit", _MISSING)
    try:
        saved_cwd: str | None = os.getcwd()
    except OSError:
        saved_cwd = None
    with tempfile.TemporaryDirectory(prefix="paygressd-cashu-") as empty:
        os.environ["HOME"] = empty
        os.chdir(empty)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            if saved_cwd is not None:
                os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            if saved_tbl is _MISSING:
                if hasattr(sys, "tracebacklimit"):
                    del sys.tracebacklimit
            else:
                sys.tracebacklimit = saved_tbl  # type: ignore[assignment]


with _quarantine():
    import httpx
    from cashu.core.base import DLEQWallet, Proof, TokenV3, TokenV4, Unit
    from cashu.core.helpers import sum_proofs
    from cashu.core.settings import settings
    from cashu.wallet import v1_api as _v1_api
    from cashu.wallet.crud import get_seed_and_mnemonic, invalidate_proof
    from cashu.wallet.wallet import Wallet as _NutshellWallet
    from loguru import logger as _loguru
    from mnemonic import Mnemonic

# Forced after import: an operator's environment must not turn these on behind our back.
settings.debug = False
settings.tor = False
settings.socks_host = None
settings.socks_proxy = None
settings.http_proxy = None
settings.wallet_verbose_requests = False
settings.wallet_use_deprecated_h2c = False
settings.db_backup_path = None
settings.env_file = None

_PROOF_MATERIAL = re.compile(r"secret|\bC_?['\"]?\s*[=:]|\br=|mnemonic|seed", re.IGNORECASE)


def _loguru_sink(message: Any) -> None:
    record = message.record
    text = str(record["message"])
    if _PROOF_MATERIAL.search(text):
        # Nutshell sometimes logs whole proofs (e.g. on a DB error): spendable money, never logged.
        text = "[nutshell message withheld: it contained proof material]"
    _log.log(int(record["level"].no), "%s", text)


_loguru.remove()
_loguru.add(_loguru_sink, level="INFO", format="{message}", backtrace=False, diagnose=False)


class _HttpxForNutshell:
    """Nutshell builds a new httpx client for every request, and each one re-reads the CA bundle
    (~50 ms). Hand it one verified SSL context, built once; everything else is plain httpx."""

    _ssl = httpx.create_ssl_context()

    def __getattr__(self, name: str) -> Any:
        return getattr(httpx, name)

    def AsyncClient(self, *args: Any, verify: Any = True, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(*args, verify=self._ssl if verify is True else verify, **kwargs)


_v1_api.httpx = _HttpxForNutshell()


class Wallet(_NutshellWallet):  # type: ignore[misc]
    proofs: list[Any]

    async def invalidate(self, proofs: list[Any], check_spendable: bool = False) -> list[Any]:
        """Mark proofs spent in ONE transaction (Nutshell commits twice per proof: 28 fsyncs for 14 proofs)."""
        if check_spendable or not proofs:
            return list(await super().invalidate(proofs, check_spendable=check_spendable))
        try:
            async with self.db.connect() as conn:
                for p in proofs:
                    await invalidate_proof(p, db=self.db, conn=conn)
        except Exception as exc:  # as Nutshell: the swap already happened, the new proofs are stored
            _log.error("could not record spent proofs: %s", type(exc).__name__)
        secrets = {p.secret for p in proofs}
        self.proofs = [p for p in self.proofs if p.secret not in secrets]
        return []

__all__ = [
    "DLEQWallet",
    "Proof",
    "TokenV3",
    "TokenV4",
    "Unit",
    "Wallet",
    "httpx",
    "open_wallet",
    "proofs_from_raw",
    "proofs_to_raw",
    "settings",
    "sum_proofs",
]


def _prepare_dir(wallet_dir: Path) -> None:
    wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def _secure_files(wallet_dir: Path) -> None:
    for p in wallet_dir.glob("*.sqlite3*"):
        with contextlib.suppress(OSError):
            p.chmod(0o600)


async def open_wallet(url: str, wallet_dir: Path, unit: str = "sat", name: str = "wallet") -> Any:
    """A Nutshell wallet for (mint url, unit) stored in ``wallet_dir/<name>.sqlite3``; no network.

    All wallets in one directory share one database file and one seed (random, never derived from the
    provider key: protocol §4.5 warns against reusing cdk's counters).
    """
    _prepare_dir(wallet_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        w = await Wallet.with_db(url, db=str(wallet_dir), name=name, unit=unit, skip_db_read=True)
        # Nutshell declares these as class attributes (a dict shared by every instance): give each its own.
        w.keysets = {}
        w.proofs = []
        if await get_seed_and_mnemonic(w.db) is None:
            await w._init_private_key(from_mnemonic=Mnemonic("english").generate())
        else:
            await w._init_private_key()
        await w.load_keysets_from_db()
        await w.load_mint_info(offline=True)
        await w.load_proofs(reload=True)
    _secure_files(wallet_dir)
    return w


async def close_wallet(w: Any) -> None:
    with contextlib.suppress(Exception):
        await w.db.engine.dispose()


def proofs_from_raw(raw: tuple[RawProof, ...] | list[RawProof]) -> list[Any]:
    out = []
    for p in raw:
        out.append(
            Proof(
                id=p.keyset_id,
                amount=p.amount,
                secret=p.secret,
                C=p.C,
                dleq=None if p.dleq is None else DLEQWallet(e=p.dleq.e, s=p.dleq.s, r=p.dleq.r),
                witness=p.witness,
            )
        )
    return out


def proofs_to_raw(proofs: list[Any]) -> list[RawProof]:
    return [
        RawProof(
            amount=int(p.amount),
            keyset_id=str(p.id),
            secret=str(p.secret),
            C=str(p.C),
            dleq=None if p.dleq is None else Dleq(e=p.dleq.e, s=p.dleq.s, r=p.dleq.r),
            witness=p.witness,
        )
        for p in proofs
    ]

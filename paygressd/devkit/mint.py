"""A real Nutshell mint (FakeWallet Lightning backend) on loopback, for tests, benchmarks and ``paygressd demo``.

``run_mint(tmp_dir)`` starts ``python -m cashu.mint`` in its own empty working directory and HOME (so no
``.env`` leaks in), behind a tiny counting TCP proxy: ``mint.url`` is the proxy, so every request any
client makes is counted in ``mint.proxy.requests`` — tests use that to prove "zero requests".
``mint.stop()`` / ``mint.start()`` take the whole thing down and bring it back (same port, same DB).

``ConsumerWallet`` is an independent Nutshell wallet (its own DB) that mints test tokens
(request_mint + mint; FakeWallet pays every invoice) and receives tokens, as a consumer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from paygressd.devkit.ports import free_port

_UNIT_INDEX = {"sat": 0, "msat": 1, "usd": 2, "eur": 3}
_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) (/\S*) HTTP/1\.[01]\r\n")


@dataclass
class CountingProxy:
    """Loopback TCP proxy that counts connections and HTTP request lines on their way to the mint."""

    listen_port: int
    upstream_port: int
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return len(self.paths)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count:
                        self.paths.extend(m.group(2).decode() for m in _REQUEST_LINE.finditer(data))
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)


@dataclass
class MintProcess:
    work_dir: Path
    input_fee_ppk: int = 0
    units: Sequence[str] = ("sat",)
    port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    # Own session: a Ctrl-C at the terminal reaches only the parent, which stops the mint in its own order.
    new_session: bool = False
    proc: asyncio.subprocess.Process | None = None
    proxy: CountingProxy | None = None

    @property
    def url(self) -> str:
        """What clients use: the counting proxy."""
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return 0 if self.proxy is None else self.proxy.requests

    def env(self) -> dict[str, str]:
        home = self.work_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "MINT_PRIVATE_KEY": "paygressd-test-mint-private-key",
            "MINT_LISTEN_HOST": "127.0.0.1",
            "MINT_LISTEN_PORT": str(self.port),
            "MINT_DATABASE": str(self.work_dir / "db"),
            "MINT_INPUT_FEE_PPK": str(self.input_fee_ppk),
            "FAKEWALLET_DELAY_INCOMING_PAYMENT": "0",
            "FAKEWALLET_DELAY_OUTGOING_PAYMENT": "0",
            "MINT_RATE_LIMIT": "false",
            "MINT_WATCHDOG_ENABLED": "false",
            "DEBUG": "false",
        }
        for unit in self.units:
            env[f"MINT_BACKEND_BOLT11_{unit.upper()}"] = "FakeWallet"
        # Nutshell derives a keyset's unit from the derivation path's second index (sat 0, msat 1, usd 2, eur 3).
        env["MINT_DERIVATION_PATH_LIST"] = json.dumps([f"m/0'/{_UNIT_INDEX[u]}'/0'" for u in self.units])
        return env

    def _open_log(self) -> Any:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return open(self.work_dir / "mint.log", "ab")  # handed to the child process

    async def start(self, ready_within: float = 30.0) -> None:
        log = self._open_log()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cashu.mint",
                cwd=self.work_dir, env=self.env(), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=self.new_session,
            )
        finally:
            log.close()
        deadline = time.monotonic() + ready_within
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"mint exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{self.direct_url}/v1/info")
                    if r.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mint not ready after {ready_within}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)
        if self.proxy is None:
            self.proxy = CountingProxy(self.proxy_port, self.port)
        await self.proxy.start()

    async def stop(self) -> None:
        """Mint process killed and proxy port closed: clients get "connection refused"."""
        if self.proxy is not None:
            await self.proxy.stop()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may have exited on its own a moment ago
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.work_dir / "mint.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def run_mint(work_dir: Path, *, input_fee_ppk: int = 0, units: Sequence[str] = ("sat",),
                   new_session: bool = False) -> AsyncIterator[MintProcess]:
    mint = MintProcess(work_dir=work_dir, input_fee_ppk=input_fee_ppk, units=units, new_session=new_session)
    await mint.start()
    try:
        yield mint
    finally:
        await mint.stop()


def fake_invoice(amount_sat: int, memo: str = "paygressd test") -> str:
    """A well-formed, signed BOLT11 invoice nobody will ever settle; the FakeWallet mint "pays" it on melt."""
    import hashlib
    from datetime import datetime

    from bolt11 import Bolt11, Feature, Features, FeatureState, MilliSatoshi, TagChar, Tags, encode

    secret = os.urandom(32).hex()
    tags = Tags()
    tags.add(TagChar.features, Features.from_feature_list({Feature.payment_secret: FeatureState.supported}))
    tags.add(TagChar.description, memo)
    tags.add(TagChar.expire_time, 3600)
    tags.add(TagChar.payment_secret, secret)
    tags.add(TagChar.payment_hash, hashlib.sha256(secret.encode()).hexdigest())
    invoice = Bolt11(currency="bc", amount_msat=MilliSatoshi(amount_sat * 1000),
                     date=int(datetime.now().timestamp()), tags=tags)
    return str(encode(invoice, os.urandom(32).hex()))


class ConsumerWallet:
    """A consumer's own Nutshell wallet at one mint and unit (separate DB from any provider)."""

    def __init__(self, wallet: Any) -> None:
        self.w = wallet

    @classmethod
    async def open(cls, mint_url: str, wallet_dir: Path, unit: str = "sat") -> ConsumerWallet:
        from paygressd.payments import nutshell as ns

        w = await ns.open_wallet(mint_url, wallet_dir, unit)
        await w.load_mint()
        return cls(w)

    async def close(self) -> None:
        from paygressd.payments import nutshell as ns

        await ns.close_wallet(self.w)

    async def mint_proofs(self, amount: int, split: list[int] | None = None) -> list[Any]:
        quote = await self.w.request_mint(amount)
        for _ in range(50):  # FakeWallet settles at once; the quote state may lag a moment
            q = await self.w.get_mint_quote(quote.quote)
            if str(q.state).endswith("paid") and not str(q.state).endswith("unpaid"):
                break
            await asyncio.sleep(0.05)
        return list(await self.w.mint(amount, quote_id=quote.quote, split=split))

    async def token(self, amount: int, *, v3: bool = False, split: list[int] | None = None) -> str:
        """Mint ``amount`` fresh and return it all as a token (the proofs stay marked reserved here)."""
        proofs = await self.mint_proofs(amount, split=split)
        await self.w.set_reserved_for_send(proofs, reserved=True)
        return str(await self.w.serialize_proofs(proofs, include_dleq=True, legacy=v3))

    async def receive(self, token: str) -> int:
        """Redeem a token into this wallet (as `cashu receive` does); returns what was received."""
        from paygressd.payments import nutshell as ns
        from paygressd.payments.tokens import decode_token

        tok = decode_token(token)
        proofs = ns.proofs_from_raw(tok.proofs)
        await self.w.load_mint()
        await self.w._expand_short_keyset_ids(proofs)
        keep, _ = await self.w.redeem(proofs)
        return int(ns.sum_proofs(keep))

    async def proof_states(self, token: str) -> list[str]:
        """NUT-07 state of each proof in a token ("UNSPENT", "SPENT", "PENDING")."""
        from paygressd.payments import nutshell as ns
        from paygressd.payments.tokens import decode_token

        proofs = ns.proofs_from_raw(decode_token(token).proofs)
        await self.w._expand_short_keyset_ids(proofs)
        resp = await self.w.check_proof_state(proofs)
        return [str(s.state.name if hasattr(s.state, "name") else s.state).upper() for s in resp.states]

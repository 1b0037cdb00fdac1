"""Money going out: refund tokens, operator `wallet send|pay|balance`, against a real mint."""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from paygressd.core.keys import write_new_key
from paygressd.payments import cli as wallet_cli
from paygressd.payments.service import PaymentError, PaymentService
from paygressd.payments.tokens import decode_token
from tests.support.mint import ConsumerWallet, MintProcess, fake_invoice

pytestmark = [pytest.mark.mint, pytest.mark.asyncio(loop_scope="session")]

ServiceFactory = Callable[..., Awaitable[PaymentService]]


async def funded(make_service: ServiceFactory, consumer: ConsumerWallet, mint: MintProcess, sats: int,
                 name: str = "provider") -> PaymentService:
    svc = await make_service([mint.url], name=name)
    await svc.redeem(svc.check_offline(await consumer.token(sats)))
    return svc


@pytest.mark.parametrize("fee", [0, 100])
async def test_refund_token_redeems_for_the_full_amount(
    fee: int, mint0: MintProcess, mint100: MintProcess, consumer0: ConsumerWallet, consumer100: ConsumerWallet,
    make_service: ServiceFactory,
) -> None:
    mint, consumer = (mint0, consumer0) if fee == 0 else (mint100, consumer100)
    svc = await funded(make_service, consumer, mint, 100)
    start = (await svc.balance())[mint.url]

    refund = await svc.make_refund(mint.url, "sat", 30, key="journal-1")

    assert decode_token(refund).mint == mint.url
    assert await consumer.receive(refund) == 30  # the consumer nets the full amount, even with a fee
    left = (await svc.balance())[mint.url]
    assert start - left >= 30
    assert start - left <= 30 + 2 * (fee > 0)  # at most the consumer's swap fee and our own


async def test_refunds_never_double_pay(
    mint0: MintProcess, consumer0: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await funded(make_service, consumer0, mint0, 50)

    first = await svc.make_refund(mint0.url, "sat", 20, key="j-1")
    # Same journal key (e.g. a retry after a crash): the same token, no second payout.
    assert await svc.make_refund(mint0.url, "sat", 20, key="j-1") == first
    second = await svc.make_refund(mint0.url, "sat", 20, key="j-2")
    assert second != first
    secrets_1 = {p.secret for p in decode_token(first).proofs}
    secrets_2 = {p.secret for p in decode_token(second).proofs}
    assert not secrets_1 & secrets_2  # reserved proofs are never handed out again
    assert await svc.balance() == {mint0.url: 10}

    # Concurrent refunds are serialised: the wallet cannot be overdrawn.
    results = await asyncio.gather(
        svc.make_refund(mint0.url, "sat", 10, key="j-3"), svc.make_refund(mint0.url, "sat", 10, key="j-4"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, PaymentError) for r in results) == 1

    assert await consumer0.receive(first) == 20
    with pytest.raises(Exception, match="already spent"):
        await consumer0.receive(first)


async def test_refund_key_survives_a_restart(mint0: MintProcess, consumer0: ConsumerWallet, tmp_path: Path) -> None:
    svc = PaymentService(tmp_path / "w", [mint0.url])
    await svc.start()
    await svc.redeem(svc.check_offline(await consumer0.token(9)))
    token = await svc.make_refund(mint0.url, "sat", 9, key="journal-7")
    await svc.close()

    again = PaymentService(tmp_path / "w", [mint0.url])
    await again.start()
    try:
        assert await again.make_refund(mint0.url, "sat", 9, key="journal-7") == token
        assert await again.balance() == {mint0.url: 0}
    finally:
        await again.close()


# ---------------------------------------------------------------- operator CLI


def write_config(tmp_path: Path, mints: list[str]) -> Path:
    write_new_key(tmp_path / "nostr.key")
    cfg = tmp_path / "paygressd.toml"
    mint_list = ", ".join(f'"{m}"' for m in mints)
    cfg.write_text(
        f"""
[provider]
public_ip = "127.0.0.1"
key_file = "nostr.key"
state_dir = "state"

[nostr]
relays = ["ws://127.0.0.1:1"]

[cashu]
mints = [{mint_list}]

[kvm]
base_image = "base.qcow2"
vm_root = "vm"

[[tier]]
id = "basic"
name = "Basic"
description = "1 vCPU"
cpu_millicores = 1000
memory_mb = 1024
rate_msats_per_sec = 100
"""
    )
    return cfg


def run_cli(argv: list[str]) -> int:
    # The lead wires register() into paygressd.cli; a bare parser proves the module on its own.
    parser = argparse.ArgumentParser(prog="paygressd")
    wallet_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


async def cli(argv: list[str]) -> int:
    # The handlers run their own event loop (asyncio.run), so they run in a worker thread here.
    return await asyncio.to_thread(run_cli, argv)


async def test_wallet_balance_send_and_pay(
    mint0: MintProcess, consumer0: ConsumerWallet, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, [mint0.url])
    svc = PaymentService(tmp_path / "state" / "wallet", [mint0.url])
    await svc.start()
    await svc.redeem(svc.check_offline(await consumer0.token(64)))
    await svc.close()
    capfd.readouterr()

    assert await cli(["wallet", "balance", "--config", str(cfg)]) == 0
    out = capfd.readouterr().out
    assert f"{mint0.url}: 64 sat" in out and "total: 64 sat" in out

    assert await cli(["wallet", "send", "25", "--mint", mint0.url, "--config", str(cfg)]) == 0
    token = capfd.readouterr().out.strip()
    assert token.startswith("cashuB") and "\n" not in token  # stdout carries only the token
    assert await consumer0.receive(token) == 25

    # Pay a Lightning invoice (melt; the FakeWallet backend settles any invoice).
    assert await cli(["wallet", "pay", fake_invoice(10), "--config", str(cfg)]) == 0
    paid = re.search(r"paid (\d+) sat \(\+(\d+) sat fee\)", capfd.readouterr().out)
    assert paid is not None and int(paid.group(1)) == 10

    assert await cli(["wallet", "balance", "--config", str(cfg)]) == 0
    out = capfd.readouterr().out
    assert f"{mint0.url}: {64 - 25 - 10 - int(paid.group(2))} sat" in out

    assert await cli(["wallet", "send", "1000", "--config", str(cfg)]) == 1
    assert "balance too low" in capfd.readouterr().err


async def test_daemon_and_operator_never_pay_out_the_same_proofs(
    mint0: MintProcess, consumer0: ConsumerWallet, make_service: ServiceFactory, tmp_path: Path
) -> None:
    """The daemon and `paygressd wallet send` are two processes on one wallet: two services on one wallet dir
    stand in for them. Racing for the whole balance, exactly one gets it, and its token is good."""
    daemon = await funded(make_service, consumer0, mint0, 40)
    operator = await make_service([mint0.url])  # same wallet dir ("provider"), separate service and connections
    results = await asyncio.gather(
        daemon.make_refund(mint0.url, "sat", 40, key="j-race", include_receive_fee=False),
        operator.send(40, mint0.url),
        return_exceptions=True,
    )
    tokens = [r for r in results if isinstance(r, str)]
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(tokens) == 1, results
    assert len(failures) == 1 and isinstance(failures[0], PaymentError), failures
    assert "balance too low" in str(failures[0])
    assert await consumer0.receive(tokens[0]) == 40


async def test_wallet_lock_excludes_another_process_holder(tmp_path: Path) -> None:
    from paygressd.payments.service import WalletLock

    path = tmp_path / "w" / ".mutation.lock"
    first, second = WalletLock(path), WalletLock(path)  # two open file descriptions, like two processes
    order: list[str] = []

    async def hold() -> None:
        async with first:
            order.append("first in")
            await asyncio.sleep(0.3)
            order.append("first out")

    async def wait_turn() -> None:
        await asyncio.sleep(0.05)
        async with second:
            order.append("second in")

    await asyncio.gather(hold(), wait_turn())
    assert order == ["first in", "first out", "second in"]

"""Redeeming consumer tokens against a real Nutshell mint: amounts, fees, refusals, durability."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from paygressd.core.rules import minimum_msats
from paygressd.payments.errors import RedeemError
from paygressd.payments.service import PaymentService
from paygressd.payments.tokens import decode_token, encode_v3, encode_v4
from paygressd.wire.errors import ErrorType
from tests.support.mint import ConsumerWallet, MintProcess

ServiceFactory = Callable[..., Awaitable[PaymentService]]

pytestmark = [pytest.mark.mint, pytest.mark.asyncio(loop_scope="session")]

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "vectors.json").read_text())["tokens"]


def refused(svc: PaymentService, raw: str) -> RedeemError:
    with pytest.raises(RedeemError) as info:
        svc.check_offline(raw)
    return info.value


async def test_valid_token_redeems_to_face_value_without_fee(
    mint0: MintProcess, consumer0: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await make_service([mint0.url])
    raw = await consumer0.token(100)
    tok = svc.check_offline(raw)
    assert (tok.mint, tok.unit, tok.amount) == (mint0.url, "sat", 100)
    assert svc.expected_msats(tok) == 100_000

    got = await svc.redeem(tok)

    assert (got.msats, got.amount, got.unit, got.mint, got.fee) == (100_000, 100, "sat", mint0.url, 0)
    assert await svc.balance() == {mint0.url: 100}
    assert set(await consumer0.proof_states(raw)) == {"SPENT"}


async def test_default_fee_100ppk_is_deducted_and_predicted(
    mint100: MintProcess, consumer100: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await make_service([mint100.url])
    raw = await consumer100.token(100, split=[64, 32, 4])  # 3 proofs x 100 ppk -> 1 sat fee
    tok = svc.check_offline(raw)
    assert svc.expected_msats(tok) == 99_000

    got = await svc.redeem(tok)

    assert (got.msats, got.amount, got.fee) == (99_000, 99, 1)
    assert await svc.balance() == {mint100.url: 99}


async def test_many_proofs_fee_matches_prediction(
    mint100: MintProcess, consumer100: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await make_service([mint100.url])
    raw = await consumer100.token(100)  # Nutshell's default split: many small proofs
    tok = svc.check_offline(raw)
    expected = svc.expected_msats(tok)
    assert expected < 100_000
    assert (await svc.redeem(tok)).msats == expected


async def test_msat_token_redeems_in_msats(mint0: MintProcess, make_service: ServiceFactory, tmp_path: Path) -> None:
    consumer = await ConsumerWallet.open(mint0.url, tmp_path / "msat-consumer", unit="msat")
    try:
        raw = await consumer.token(5000)
    finally:
        await consumer.close()
    svc = await make_service([mint0.url])
    tok = svc.check_offline(raw)
    assert (tok.unit, svc.expected_msats(tok)) == ("msat", 5000)
    got = await svc.redeem(tok)
    assert (got.msats, got.amount, got.unit) == (5000, 5000, "msat")
    assert await svc.balance() == {mint0.url: 5}


async def test_same_token_twice_is_already_spent(
    mint0: MintProcess, consumer0: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await make_service([mint0.url])
    raw = await consumer0.token(21)
    await svc.redeem(svc.check_offline(raw))

    # The same provider knows it swapped these proofs: refused offline, the mint is not asked.
    before = mint0.requests
    err = refused(svc, raw)
    assert err.error_type == ErrorType.TOKEN_ALREADY_SPENT
    assert err.reply.message == "This Cashu token has already been spent at the mint"
    assert mint0.requests == before

    # Another provider sharing the mint asks it, and the mint says spent.
    other = await make_service([mint0.url], name="other-provider")
    with pytest.raises(RedeemError) as info:
        await other.redeem(other.check_offline(raw))
    assert info.value.error_type == ErrorType.TOKEN_ALREADY_SPENT
    assert mint0.requests > before

    # ...once: the answer is cached, so replaying the junk costs the mint nothing.
    before = mint0.requests
    for _ in range(5):
        assert refused(other, raw).error_type == ErrorType.TOKEN_ALREADY_SPENT
    assert mint0.requests == before
    assert await other.balance() == {mint0.url: 0}


async def test_two_providers_racing_for_one_token_exactly_one_wins(
    mint0: MintProcess, consumer0: ConsumerWallet, make_service: ServiceFactory
) -> None:
    a = await make_service([mint0.url], name="a")
    b = await make_service([mint0.url], name="b")
    raw = await consumer0.token(10)
    results = await asyncio.gather(a.redeem(a.check_offline(raw)), b.redeem(b.check_offline(raw)),
                                   return_exceptions=True)
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, RedeemError)]
    assert len(wins) == 1 and len(losses) == 1
    assert losses[0].error_type in (ErrorType.TOKEN_ALREADY_SPENT, ErrorType.TOKEN_PENDING)


async def test_foreign_mint_and_junk_cause_zero_requests(
    mint0: MintProcess, mint100: MintProcess, consumer100: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await make_service([mint0.url])
    # A real, spendable token, but from a mint we do not accept.
    foreign = await consumer100.token(50, split=[32, 16, 2])
    before = (mint0.requests, mint100.requests)

    err = refused(svc, foreign)
    assert err.error_type == ErrorType.NON_WHITELISTED_MINT and err.token_untouched
    assert err.reply.message == f"Mint {mint100.url} is not accepted by this provider"
    with pytest.raises(RedeemError) as info:  # redeem() re-checks: a caller cannot skip the whitelist
        await svc.redeem(decode_token(foreign))
    assert info.value.error_type == ErrorType.NON_WHITELISTED_MINT

    attacker = refused(svc, VECTORS["v3_attacker_mint"]["token"])
    assert attacker.error_type == ErrorType.NON_WHITELISTED_MINT
    assert "attacker.example" in attacker.reply.message
    junk_tokens = [VECTORS["not_a_token"]["token"], "cashuB", "hello", foreign + "\n",
                   foreign.replace("cashuB", "cashub")]
    for junk in junk_tokens:
        assert refused(svc, junk).error_type == ErrorType.INVALID_TOKEN

    assert (mint0.requests, mint100.requests) == before
    # Untouched: the consumer still owns the foreign token.
    assert await consumer100.receive(foreign) == 50 - 1  # their own swap pays mint100's fee


async def test_usd_tokens_are_refused_before_any_swap(
    mint0: MintProcess, make_service: ServiceFactory, tmp_path: Path
) -> None:
    usd = await ConsumerWallet.open(mint0.url, tmp_path / "usd-consumer", unit="usd")
    try:
        raw = await usd.token(250)  # $2.50
        svc = await make_service([mint0.url])
        before = mint0.requests

        err = refused(svc, raw)
        assert err.error_type == ErrorType.UNSUPPORTED_UNIT and err.token_untouched
        assert err.reply.message == "Token unit Usd is not supported"

        # Relabelled as sat: the keyset (known since start) still says usd, so it is refused the same way.
        tok = decode_token(raw)
        relabelled = encode_v4(tok.mint, "sat", list(tok.proofs))
        assert refused(svc, relabelled).error_type == ErrorType.UNSUPPORTED_UNIT

        # A crafted custom unit shows cdk's Debug spelling.
        custom = encode_v4(tok.mint, "xyz", list(tok.proofs))
        assert refused(svc, custom).reply.message == 'Token unit Custom("xyz") is not supported'

        assert mint0.requests == before
        assert set(await usd.proof_states(raw)) == {"UNSPENT"}
        assert await usd.receive(raw) == 250
    finally:
        await usd.close()


async def test_multi_mint_token_is_invalid_and_untouched(
    mint0: MintProcess, mint100: MintProcess, consumer0: ConsumerWallet, consumer100: ConsumerWallet,
    make_service: ServiceFactory,
) -> None:
    a = decode_token(await consumer0.token(8))
    b = decode_token(await consumer100.token(8))
    raw = encode_v3([(a.mint, list(a.proofs)), (b.mint, list(b.proofs))])
    svc = await make_service([mint0.url, mint100.url])
    before = (mint0.requests, mint100.requests)

    err = refused(svc, raw)
    assert err.error_type == ErrorType.INVALID_TOKEN and err.token_untouched
    assert err.reply.message == "Invalid Cashu token: token has no mint URL: Unsupported token"
    assert (mint0.requests, mint100.requests) == before
    assert set(await consumer0.proof_states(a.raw)) == {"UNSPENT"}
    assert set(await consumer100.proof_states(b.raw)) == {"UNSPENT"}


async def test_underpaying_token_is_detected_before_redeeming(
    mint100: MintProcess, consumer100: ConsumerWallet, make_service: ServiceFactory
) -> None:
    # Tier: 100 msat/s, 60 s minimum -> 6000 msats. A 6-sat token with 3 proofs nets 5 sat after the fee.
    required = minimum_msats(100, 60)
    svc = await make_service([mint100.url])
    raw = await consumer100.token(6, split=[4, 1, 1])
    tok = svc.check_offline(raw)
    assert tok.amount * 1000 >= required  # face value alone would look sufficient...
    assert svc.expected_msats(tok) == 5000 < required  # ...but not after the mint's fee
    # The core refuses without redeeming; the consumer can still spend their token.
    assert set(await consumer100.proof_states(raw)) == {"UNSPENT"}
    assert await consumer100.receive(raw) == 5


async def test_concurrent_redeems_are_serialised_and_all_land(
    mint0: MintProcess, consumer0: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await make_service([mint0.url])
    raws = [await consumer0.token(n) for n in (1, 2, 3, 4, 5)]
    got = await asyncio.gather(*(svc.redeem(svc.check_offline(r)) for r in raws))
    assert sorted(g.amount for g in got) == [1, 2, 3, 4, 5]
    assert await svc.balance() == {mint0.url: 15}


async def test_received_proofs_are_durable_and_recoverable(
    mint0: MintProcess, consumer0: ConsumerWallet, tmp_path: Path
) -> None:
    wallet_dir = tmp_path / "durable"
    svc = PaymentService(wallet_dir, [mint0.url])
    await svc.start()
    raw = await consumer0.token(33)
    tok = svc.check_offline(raw)
    got = await svc.redeem(tok)
    await svc.close()

    # A new process on the same directory (as after a crash) sees the money and the receipt.
    again = PaymentService(wallet_dir, [mint0.url])
    await again.start()
    try:
        assert await again.balance() == {mint0.url: 33}
        assert await again.recover(tok) == got
        assert refused(again, raw).error_type == ErrorType.TOKEN_ALREADY_SPENT
        never = decode_token(await consumer0.token(2))
        assert await again.recover(never) is None
    finally:
        await again.close()


async def test_recover_finds_a_swap_whose_receipt_was_lost(
    mint0: MintProcess, consumer0: ConsumerWallet, make_service: ServiceFactory
) -> None:
    svc = await make_service([mint0.url])
    tok = svc.check_offline(await consumer0.token(12))
    got = await svc.redeem(tok)
    # Simulate a crash between Nutshell's commit and our receipt: the wallet DB alone must tell.
    db = svc._ledger()
    with db:
        db.execute("DELETE FROM receipts")
    assert await svc.recover(tok) == got


async def test_mint_down_is_a_network_error_and_leaves_the_token_spendable(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    from tests.support.mint import run_mint

    async with run_mint(tmp_path / "flaky-mint") as mint:
        consumer = await ConsumerWallet.open(mint.url, tmp_path / "flaky-consumer")
        try:
            raw = await consumer.token(40)
            warm = await make_service([mint.url], name="warm")  # knows the keysets
            await mint.stop()

            cold = await make_service([mint.url], name="cold")  # starts fine while the mint is down
            for svc in (warm, cold):
                with pytest.raises(RedeemError) as info:
                    await svc.redeem(svc.check_offline(raw))
                err = info.value
                assert err.error_type == ErrorType.MINT_NETWORK_ERROR
                assert err.reply.message.startswith("Could not reach mint: ")
                assert err.token_untouched

            await mint.start()
            # Not cached as a failure, and untouched: it redeems once the mint is back (cold refreshes keysets).
            assert (await cold.redeem(cold.check_offline(raw))).amount == 40
            assert set(await consumer.proof_states(raw)) == {"SPENT"}
        finally:
            await consumer.close()

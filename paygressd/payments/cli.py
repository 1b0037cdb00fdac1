"""Operator wallet commands: ``paygressd wallet balance|send|pay`` on the wallet under ``config.wallet_dir``.

Nothing here imports Nutshell at module level, so ``paygressd --help`` stays fast and side-effect free;
``paygressd.cli`` is imported lazily too (it imports us to register the subcommand).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from paygressd.payments.service import PaymentService

T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from paygressd.cli import _add_config_arg

    wallet = sub.add_parser(
        "wallet",
        help="inspect and spend the provider's ecash",
        description="Operator commands on the provider's Cashu wallet (the one the daemon redeems into).",
    )
    wsub = wallet.add_subparsers(dest="wallet_command", metavar="WALLET_COMMAND", required=True)

    p = wsub.add_parser("balance", help="spendable balance per mint (sat)")
    _add_config_arg(p)
    p.set_defaults(func=cmd_balance)

    p = wsub.add_parser("send", help="print a Cashu token worth AMOUNT sat",
                        description="Take AMOUNT sat out of the wallet as a token (printed on stdout).")
    _add_config_arg(p)
    p.add_argument("amount", type=_positive_int, metavar="AMOUNT", help="amount in sat")
    p.add_argument("--mint", metavar="URL", help="mint to take it from (default: the one with the largest balance)")
    p.set_defaults(func=cmd_send)

    p = wsub.add_parser("pay", help="pay a Lightning invoice with ecash (melt)",
                        description="Melt ecash at a whitelisted mint to pay a BOLT11 invoice.")
    _add_config_arg(p)
    p.add_argument("bolt11", metavar="BOLT11", help="the invoice")
    p.add_argument("--mint", metavar="URL", help="mint to pay from (default: the first that can cover it)")
    p.set_defaults(func=cmd_pay)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _run(args: argparse.Namespace, action: Callable[[PaymentService], Awaitable[T]]) -> T:
    from paygressd.cli import load_checked_config
    from paygressd.logging import setup_logging

    cfg = load_checked_config(args)
    # Logs go to stderr so that stdout carries only the result (e.g. a token for a script to capture).
    setup_logging("warning", stream=sys.stderr)

    async def go() -> T:
        from paygressd.payments.service import PaymentService

        svc = PaymentService(cfg.wallet_dir, list(cfg.cashu.mints))
        await svc.start()
        try:
            return await action(svc)
        finally:
            await svc.close()

    return asyncio.run(go())


def _payment_errors(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A wallet command's PaymentError becomes one line on stderr and exit code 1."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        from paygressd.payments.service import PaymentError

        try:
            return cmd(args)
        except PaymentError as exc:
            print(f"paygressd: {exc}", file=sys.stderr)
            return 1

    return run


@_payment_errors
def cmd_balance(args: argparse.Namespace) -> int:
    balances = _run(args, lambda svc: svc.balance())
    for mint, amount in balances.items():
        print(f"{mint}: {amount} sat")
    print(f"total: {sum(balances.values())} sat")
    return 0


@_payment_errors
def cmd_send(args: argparse.Namespace) -> int:
    print(_run(args, lambda svc: svc.send(args.amount, args.mint)))
    return 0


@_payment_errors
def cmd_pay(args: argparse.Namespace) -> int:
    result = _run(args, lambda svc: svc.pay_invoice(args.bolt11, args.mint))
    if not result.paid:
        print(f"paygressd: payment is pending at {result.mint}; check again later", file=sys.stderr)
        return 3
    print(f"paid {result.amount_sat} sat (+{result.fee_paid_sat} sat fee) from {result.mint}")
    if result.preimage:
        print(f"preimage: {result.preimage}")
    return 0

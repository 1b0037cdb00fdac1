"""``paygressd consumer list|spawn|topup|status``: the paygress-cli 0.1.9 consumer flows, for testing a provider.

Output is the reply JSON on stdout (one line); exit status 0 for a success reply, 1 for an error reply or an
unrecognised one, 3 on timeout, 2 on a local refusal (provider offline, unknown tier, bad key, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from nostr_sdk import Keys

from paygressd.consumer import (
    DEFAULT_RELAYS,
    SPAWN_TIMEOUT,
    STATUS_TIMEOUT,
    TOPUP_TIMEOUT,
    Consumer,
    ConsumerError,
    ProviderListing,
    Reply,
    precheck_spawn,
    reply_json,
)
from paygressd.payments.errors import RedeemError
from paygressd.payments.tokens import decode_token
from paygressd.wire.models import ErrorReply

DEFAULT_IDENTITY = Path.home() / ".paygress" / "identity"


def _keys(args: argparse.Namespace) -> Keys:
    if args.nostr_key:
        return Keys.parse(args.nostr_key)
    path = Path(args.identity)
    if path.exists():
        return Keys.parse(path.read_text().strip())
    # Like paygress-cli: a consumer identity is created on first use.
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = Keys.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(keys.secret_key().to_bech32() + "\n")
    return keys


def _token(args: argparse.Namespace) -> str:
    """``--token -`` (the default) reads one line from stdin, so the token is never in a waiting process's argv."""
    if args.token not in (None, "-"):
        return str(args.token)
    token = sys.stdin.readline().strip()
    if not token:
        raise ConsumerError("no token: pass --token TOKEN or write it to stdin")
    return token


def _token_mint(token: str) -> str | None:
    """The token's mint for paygress-cli's whitelist pre-check; None when it does not decode (the provider says why)."""
    try:
        return decode_token(token).mint
    except RedeemError:
        return None


def _relays(args: argparse.Namespace) -> list[str]:
    return [r.strip() for r in args.relays.split(",") if r.strip()] if args.relays else list(DEFAULT_RELAYS)


def _listing_json(p: ProviderListing) -> dict[str, object]:
    return {"provider": p.offer.provider_npub, "hostname": p.offer.hostname, "online": p.online,
            "last_heartbeat": p.heartbeat.timestamp if p.heartbeat else None, "offer": p.offer.to_wire()}


def _exit_for(reply: Reply | None) -> int:
    if reply is None:
        print("null")
        print("paygressd consumer: no reply before the timeout (a token may already be spent)", file=sys.stderr)
        return 3
    print(reply_json(reply))
    return 1 if isinstance(reply, ErrorReply | str) else 0


async def _run(args: argparse.Namespace) -> int:
    async with Consumer(_keys(args), _relays(args)) as c:
        if args.consumer_cmd == "list":
            for listing in await c.list_offers():
                print(json.dumps(_listing_json(listing), ensure_ascii=False))
            return 0
        found = await c.find_provider(args.provider)
        if found is None:
            raise ConsumerError(f"Provider '{args.provider}' not found")
        if args.consumer_cmd == "spawn":
            token = _token(args)
            precheck_spawn(found, args.tier, _token_mint(token))
            return _exit_for(await c.spawn(found.provider_hex, token, tier=args.tier, ssh_user=args.ssh_user,
                                           ssh_password=args.ssh_pass, timeout=args.timeout or SPAWN_TIMEOUT))
        if args.consumer_cmd == "topup":
            return _exit_for(await c.topup(found.provider_hex, args.pod_id, _token(args),
                                           timeout=args.timeout or TOPUP_TIMEOUT))
        return _exit_for(await c.status(found.provider_hex, args.pod_id, timeout=args.timeout or STATUS_TIMEOUT))


def cmd_consumer(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except ConsumerError as exc:
        print(f"paygressd consumer: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # key parse errors etc.: one line, no traceback
        print(f"paygressd consumer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "consumer",
        help="talk to a provider like paygress-cli 0.1.9 (list, spawn, topup, status)",
        description="Find providers and send spawn/top-up/status requests exactly as paygress-cli 0.1.9 does.",
    )
    p.add_argument("--relays", help="comma-separated relay URLs (default: damus, nos.lol, primal)")
    p.add_argument("--nostr-key", help="consumer secret key (nsec or hex); default: the identity file")
    p.add_argument("--identity", default=str(DEFAULT_IDENTITY), help="identity file (created if missing)")
    p.add_argument("--timeout", type=float, help="reply timeout in seconds (default: the CLI's per command)")
    p.set_defaults(func=cmd_consumer)
    cmds = p.add_subparsers(dest="consumer_cmd", metavar="ACTION", required=True)
    cmds.add_parser("list", help="list offers with online status")
    s = cmds.add_parser("spawn", help="rent a VM")
    s.add_argument("--provider", required=True, help="hex, npub, hex prefix (>= 8) or hostname")
    s.add_argument("--token", default="-", help="Cashu token; '-' (default) reads it from stdin")
    s.add_argument("--tier", default="basic")
    s.add_argument("--ssh-user", default="user")
    s.add_argument("--ssh-pass", default=None)
    t = cmds.add_parser("topup", help="extend a lease")
    t.add_argument("--provider", required=True)
    t.add_argument("--pod-id", required=True)
    t.add_argument("--token", default="-", help="Cashu token; '-' (default) reads it from stdin")
    st = cmds.add_parser("status", help="show a lease")
    st.add_argument("--provider", required=True)
    st.add_argument("--pod-id", required=True)

"""Command line: ``paygressd run|keygen|...``. Each subcommand is a thin edge over the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from paygressd import __version__
from paygressd.config import Config, ConfigError, config_path, load_config
from paygressd.core.keys import KeyFileError, load_keys, write_new_key

Handler = Callable[[argparse.Namespace], int]


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="FILE", help="config file (TOML); default: $PAYGRESSD_CONFIG"
    )


def load_checked_config(args: argparse.Namespace) -> Config:
    """Config plus key file: the daemon refuses to start on any error in either."""
    path = config_path(getattr(args, "config", None))
    cfg = load_config(path)
    try:
        load_keys(cfg.provider.key_file)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: provider.key_file: {exc}") from exc
    return cfg


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        keys = write_new_key(out)
    except FileExistsError:
        print(f"paygressd: {out} exists; refusing to overwrite a key", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"paygressd: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    pk = keys.public_key()
    print(f"npub: {pk.to_bech32()}")
    print(f"hex:  {pk.to_hex()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_checked_config(args)
    from paygressd.daemon import run_daemon

    return run_daemon(cfg, log_level=args.log_level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paygressd",
        description="Rent KVM virtual machines for Cashu ecash over Nostr (paygress 0.1.9 compatible).",
    )
    parser.add_argument("--version", action="version", version=f"paygressd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the provider daemon",
        description="Publish offers and heartbeats, answer spawn/top-up/status DMs, and run the VMs.",
    )
    _add_config_arg(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "keygen",
        help="create a new provider key file",
        description="Write a fresh secret key (nsec) with mode 0600 and print its npub and hex public key."
        " Never overwrites an existing file.",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the key")
    p.set_defaults(func=cmd_keygen)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """Subcommands owned by other areas register themselves here."""
    from paygressd.demo import register as demo
    from paygressd.nostr.cli import register as consumer
    from paygressd.ops.cli import register as ops
    from paygressd.payments.cli import register as wallet

    return [wallet, ops, consumer, demo]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except (ConfigError, KeyFileError) as exc:
        print(f"paygressd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""``paygressd check`` and ``paygressd leases``; ``register(sub)`` adds them to the main parser.

Nothing heavy is imported at module level, so ``paygressd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="preflight: config, key, qemu/KVM, image, ports, disk, relays, mints, clock",
        description="Check everything the daemon needs, one line per check (ok / warn / FAIL). Exits 1 when "
        "any check fails. Starts nothing and changes nothing; the accelerator probe boots a throw-away "
        "guest kernel for a few seconds. Run it as the service user to see what the daemon sees.",
    )
    _add_config(p)
    p.add_argument("--key-file", metavar="FILE",
                   help="check this key file instead of provider.key_file (e.g. /etc/paygressd/nostr.key when "
                        "the config names the systemd credential, which exists only inside the service)")
    p.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="per relay / mint network timeout (default 5)")
    p.add_argument("--kvm-probe-timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="how long the KVM probe guest may take to show its kernel running (default 20)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "leases",
        help="list active leases and their VMs",
        description="Active leases from the state database with their VM's state; safe while the daemon runs. "
        "Run it as the service user (files in the state dir must keep their owner).",
    )
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print a JSON array (full owner hex and npub, "
                                                        "expires_at as unix time and RFC 3339)")
    p.set_defaults(func=cmd_leases)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config file (TOML); default: $PAYGRESSD_CONFIG")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def cmd_check(args: argparse.Namespace) -> int:
    from paygressd.config import ConfigError, config_path
    from paygressd.ops.check import CheckResult, run_checks
    from paygressd.vm.accel import PROBE_TIMEOUT_KERNEL

    try:
        path = config_path(args.config)
    except ConfigError as exc:
        print(f"FAIL config: {exc}", flush=True)
        return 1

    def emit(r: CheckResult) -> None:
        print(r.line(), flush=True)

    results = asyncio.run(run_checks(
        path,
        key_file=Path(args.key_file) if args.key_file else None,
        network_within=args.timeout,
        kvm_timeout=args.kvm_probe_timeout or PROBE_TIMEOUT_KERNEL,
        emit=emit,
    ))
    failed = [r.name for r in results if r.failed]
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_leases(args: argparse.Namespace) -> int:
    from paygressd.config import config_path, load_config
    from paygressd.ops.leases import collect, db_missing_note, render_json, render_table

    cfg = load_config(config_path(args.config))
    if not cfg.db_path.exists():
        print(db_missing_note(cfg.db_path), file=sys.stderr)
    rows = asyncio.run(collect(cfg))
    sys.stdout.write(render_json(rows) if args.json else render_table(rows))
    return 0

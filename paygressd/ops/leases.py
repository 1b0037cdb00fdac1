"""``paygressd leases``: the active leases and the state of their VMs, as a table or JSON.

Safe beside a running daemon: SQLite WAL lets this process read while the daemon writes, and the VM state
comes from the same /proc + pidfile + serial-marker logic the daemon uses, without touching any VM.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nostr_sdk import PublicKey

from paygressd.config import Config
from paygressd.store import Lease, Store
from paygressd.vm.kvm import KvmBackend
from paygressd.vm.qemu import VmPaths
from paygressd.wire.models import rfc3339


@dataclass(frozen=True)
class LeaseRow:
    lease_id: int
    vmid: int
    owner: str  # hex
    owner_npub: str
    tier: str
    port: int
    expires_at: int
    expires_at_rfc3339: str
    expires_in: int  # seconds; <= 0 means the expiry is due (the daemon ends it within moments)
    state: str  # running | starting | stopped | absent (VmState)


class _ReadOnlyKvm(KvmBackend):
    """KvmBackend.status() without its one side effect: muting a ready guest's serial console over QMP.

    That is the daemon's job; an operator command must not talk to a tenant's qemu.
    """

    async def _mute_serial(self, vmid: int, paths: VmPaths) -> None:
        return None


def npub_of(owner_hex: str) -> str:
    try:
        return str(PublicKey.parse(owner_hex).to_bech32())
    except Exception:
        return owner_hex  # a malformed key in the store is shown as it is


def short_npub(npub: str) -> str:
    """``npub1abcd…wxyz``: enough to tell owners apart in a table."""
    return npub if len(npub) <= 14 else f"{npub[:9]}…{npub[-4:]}"


def format_remaining(seconds: int) -> str:
    """``4m12s``, ``3h07m``, ``2d05h``; ``expired`` once the time is up."""
    if seconds <= 0:
        return "expired"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def lease_row(lease: Lease, state: str, now: int) -> LeaseRow:
    return LeaseRow(
        lease_id=lease.id, vmid=lease.vmid, owner=lease.owner, owner_npub=npub_of(lease.owner),
        tier=lease.tier_id, port=lease.port, expires_at=lease.expires_at,
        expires_at_rfc3339=rfc3339(lease.expires_at), expires_in=lease.expires_at - now, state=state,
    )


async def collect(config: Config, now: int | None = None) -> list[LeaseRow]:
    """Active leases with their VM's state; [] when the daemon has never run (no database is created)."""
    if not config.db_path.exists():
        return []
    store = Store(config.db_path)
    try:
        leases = store.active_leases()
    finally:
        store.close()
    backend = _ReadOnlyKvm(config.kvm, config.provider.state_dir)
    states = await asyncio.gather(*(backend.status(le.vmid) for le in leases))
    t = int(time.time()) if now is None else now
    return [lease_row(le, str(st), t) for le, st in zip(leases, states, strict=True)]


_COLUMNS = ("VMID", "OWNER", "TIER", "PORT", "EXPIRES IN", "STATE")


def render_table(rows: Sequence[LeaseRow]) -> str:
    if not rows:
        return "no active leases\n"
    cells = [_COLUMNS] + [
        (str(r.vmid), short_npub(r.owner_npub), r.tier, str(r.port), format_remaining(r.expires_in), r.state)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def render_json(rows: Sequence[LeaseRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2) + "\n"


def db_missing_note(path: Path) -> str:
    return f"no lease database at {path} (the daemon has not run with this state_dir yet)"

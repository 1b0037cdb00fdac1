"""The durable state: leases, processed events, the redemption journal and counters.

SQLite in WAL mode with synchronous=FULL: a call that returns has hit the disk, so callers can reply
afterwards. Migrations are numbered functions; ``PRAGMA user_version`` records the last one applied.
VM passwords are never stored.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class LeaseState(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"


class JournalState(StrEnum):
    RECEIVED = "received"  # token accepted for redemption, swap not known to have happened
    REDEEMED = "redeemed"  # the wallet holds the money; the request is not fulfilled yet
    FULFILLED = "fulfilled"  # lease created or extended: the money is earned
    REFUND_PREPARED = "refund_prepared"  # a refund token exists and must reach the requester
    REFUNDED = "refunded"  # the refund was sent (a relay acknowledged it)
    FAILED = "failed"  # the swap failed: no money moved


@dataclass(frozen=True)
class Lease:
    id: int
    vmid: int
    port: int
    owner: str
    tier_id: str
    created_at: int
    expires_at: int
    state: LeaseState
    guest_user: str | None = None


@dataclass(frozen=True)
class JournalEntry:
    id: int
    request_event_id: str
    requester: str
    scheme: str
    purpose: str
    mint: str
    token_hash: str
    state: JournalState
    amount_msats: int | None
    unit: str | None
    lease_id: int | None
    refund_token: str | None
    created_at: int
    updated_at: int


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the migration's transaction early; run statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _m1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE leases (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            vmid INTEGER NOT NULL,
            port INTEGER NOT NULL,
            owner TEXT NOT NULL,
            tier_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            state TEXT NOT NULL,
            ended_at INTEGER
        );
        CREATE UNIQUE INDEX leases_active_vmid ON leases(vmid) WHERE state = 'active';
        CREATE UNIQUE INDEX leases_active_port ON leases(port) WHERE state = 'active';
        CREATE INDEX leases_expiry ON leases(expires_at) WHERE state = 'active';
        CREATE TABLE processed_events (
            event_id TEXT PRIMARY KEY,
            seen_at INTEGER NOT NULL
        );
        CREATE INDEX processed_events_seen ON processed_events(seen_at);
        CREATE TABLE redemptions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_event_id TEXT NOT NULL,
            requester TEXT NOT NULL,
            scheme TEXT NOT NULL,
            purpose TEXT NOT NULL,
            mint TEXT NOT NULL,
            token_hash TEXT NOT NULL,
            state TEXT NOT NULL,
            amount_msats INTEGER,
            unit TEXT,
            lease_id INTEGER,
            refund_token TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        CREATE INDEX redemptions_state ON redemptions(state);
        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );
        """
    )


def _m2(db: sqlite3.Connection) -> None:
    # The consumer's own login name, created in the guest beside root (upstream ignores it).
    db.execute("ALTER TABLE leases ADD COLUMN guest_user TEXT")


def _m3(db: sqlite3.Connection) -> None:
    # The raw token, kept only while the swap outcome is unknown, so a crash mid-swap can be recovered.
    db.execute("ALTER TABLE redemptions ADD COLUMN pending_token TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1, _m2, _m3]


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._lock:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this paygressd knows "
                    f"({len(MIGRATIONS)}); refusing to run an older release on newer state"
                )
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                with self._tx() as db:
                    migration(db)
                    db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------ leases

    def insert_lease(
        self, vmid: int, port: int, owner: str, tier_id: str, created_at: int, expires_at: int,
        guest_user: str | None = None, journal_id: int | None = None,
    ) -> Lease:
        """Persist a new active lease; with ``journal_id`` the redemption is marked fulfilled atomically."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO leases (vmid, port, owner, tier_id, created_at, expires_at, state, guest_user)"
                " VALUES (?, ?, ?, ?, ?, ?, 'active', ?)",
                (vmid, port, owner, tier_id, created_at, expires_at, guest_user),
            )
            lease_id = int(cur.lastrowid or 0)
            if journal_id is not None:
                self._set_journal(db, journal_id, JournalState.FULFILLED, lease_id=lease_id)
        lease = self.lease(lease_id)
        assert lease is not None
        return lease

    def lease(self, lease_id: int) -> Lease | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM leases WHERE id = ?", (lease_id,)).fetchone()
        return _lease(row) if row else None

    def active_lease_by_vmid(self, vmid: int) -> Lease | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM leases WHERE vmid = ? AND state = 'active'", (vmid,)
            ).fetchone()
        return _lease(row) if row else None

    def latest_lease_by_vmid(self, vmid: int) -> Lease | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM leases WHERE vmid = ? ORDER BY id DESC LIMIT 1", (vmid,)
            ).fetchone()
        return _lease(row) if row else None

    def active_leases(self) -> list[Lease]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM leases WHERE state = 'active' ORDER BY vmid").fetchall()
        return [_lease(r) for r in rows]

    def active_leases_of(self, owner: str) -> list[Lease]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM leases WHERE state = 'active' AND owner = ? ORDER BY vmid", (owner,)
            ).fetchall()
        return [_lease(r) for r in rows]

    def extend_lease(self, lease_id: int, seconds: int, now: int, journal_id: int | None = None) -> Lease | None:
        """Extend from the current expiry, only if the lease is still active and unexpired.

        None means the lease ended or expired meanwhile (the caller refunds). With ``journal_id``
        the redemption is marked fulfilled in the same transaction.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE leases SET expires_at = expires_at + ? WHERE id = ? AND state = 'active'"
                " AND expires_at > ?",
                (seconds, lease_id, now),
            )
            if cur.rowcount != 1:
                return None
            if journal_id is not None:
                self._set_journal(db, journal_id, JournalState.FULFILLED, lease_id=lease_id)
        return self.lease(lease_id)

    def end_lease(self, lease_id: int, now: int) -> bool:
        """End a lease whose time is up. False when it is not active or a top-up extended it meanwhile."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE leases SET state = 'ended', ended_at = ? WHERE id = ? AND state = 'active'"
                " AND expires_at <= ?",
                (now, lease_id, now),
            )
            ended = cur.rowcount == 1
            if ended:
                db.execute(
                    "INSERT INTO counters (name, value) VALUES ('jobs_completed', 1)"
                    " ON CONFLICT(name) DO UPDATE SET value = value + 1"
                )
        return ended

    def next_expiry(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(expires_at) FROM leases WHERE state = 'active'").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def expired_leases(self, now: int) -> list[Lease]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM leases WHERE state = 'active' AND expires_at <= ? ORDER BY expires_at", (now,)
            ).fetchall()
        return [_lease(r) for r in rows]

    # ------------------------------------------------------------ processed events

    def claim_event(self, event_id: str, now: int | None = None) -> bool:
        """Record an inbound event id; False when it was already handled (other relay, or before a restart)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO processed_events (event_id, seen_at) VALUES (?, ?)",
                (event_id, now if now is not None else int(time.time())),
            )
            return cur.rowcount == 1

    def event_seen(self, event_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM processed_events WHERE event_id = ?", (event_id,)).fetchone()
        return row is not None

    def prune_events(self, older_than: int) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM processed_events WHERE seen_at < ?", (older_than,)).rowcount

    # ------------------------------------------------------------ redemption journal

    def journal_open(
        self, request_event_id: str, requester: str, scheme: str, purpose: str, mint: str, token_hash: str,
        pending_token: str | None = None,
    ) -> int:
        """Record a redemption about to start. ``pending_token`` is kept until the swap outcome is known."""
        now = int(time.time())
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO redemptions (request_event_id, requester, scheme, purpose, mint, token_hash, state,"
                " created_at, updated_at, pending_token) VALUES (?, ?, ?, ?, ?, ?, 'received', ?, ?, ?)",
                (request_event_id, requester, scheme, purpose, mint, token_hash, now, now, pending_token),
            )
            return int(cur.lastrowid or 0)

    def journal_pending_token(self, journal_id: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT pending_token FROM redemptions WHERE id = ?", (journal_id,)).fetchone()
        return None if row is None else row[0]

    def journal_redeemed(self, journal_id: int, amount_msats: int, unit: str) -> None:
        with self._tx() as db:
            self._set_journal(
                db, journal_id, JournalState.REDEEMED, amount_msats=amount_msats, unit=unit, pending_token=None
            )

    def journal_failed(self, journal_id: int) -> None:
        with self._tx() as db:
            self._set_journal(db, journal_id, JournalState.FAILED, pending_token=None)

    def journal_fulfilled(self, journal_id: int, lease_id: int) -> None:
        with self._tx() as db:
            self._set_journal(db, journal_id, JournalState.FULFILLED, lease_id=lease_id)

    def journal_refund_prepared(self, journal_id: int, refund_token: str) -> None:
        """Store the refund token before it is sent, so a crash resends the same token, never a new one."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM redemptions WHERE id = ?", (journal_id,)).fetchone()
            if row is None or row["state"] != JournalState.REDEEMED:
                raise ValueError(f"journal {journal_id} is not awaiting a refund")
            self._set_journal(db, journal_id, JournalState.REFUND_PREPARED, refund_token=refund_token)

    def journal_refunded(self, journal_id: int) -> bool:
        """Mark a prepared refund as sent. Idempotent: a repeated call (a second relay ack) is False and
        does not count the refund twice."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM redemptions WHERE id = ?", (journal_id,)).fetchone()
            if row is not None and row["state"] == JournalState.REFUNDED:
                return False
            if row is None or row["state"] != JournalState.REFUND_PREPARED:
                raise ValueError(f"journal {journal_id} has no prepared refund")
            self._set_journal(db, journal_id, JournalState.REFUNDED)
            db.execute(
                "INSERT INTO counters (name, value) VALUES ('refunds_paid', 1)"
                " ON CONFLICT(name) DO UPDATE SET value = value + 1"
            )
            return True

    def journal(self, journal_id: int) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM redemptions WHERE id = ?", (journal_id,)).fetchone()
        return _journal(row) if row else None

    def journal_unfinished(self) -> list[JournalEntry]:
        """Entries whose money is in our wallet but whose request was neither fulfilled nor refunded,
        plus entries whose swap outcome is unknown (crash mid-swap)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM redemptions WHERE state IN ('received', 'redeemed', 'refund_prepared') ORDER BY id"
            ).fetchall()
        return [_journal(r) for r in rows]

    def journal_for_event(self, request_event_id: str) -> list[JournalEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM redemptions WHERE request_event_id = ? ORDER BY id", (request_event_id,)
            ).fetchall()
        return [_journal(r) for r in rows]

    @staticmethod
    def _set_journal(db: sqlite3.Connection, journal_id: int, state: JournalState, **fields: object) -> None:
        sets = ["state = ?", "updated_at = ?"]
        values: list[object] = [state.value, int(time.time())]
        for name, value in fields.items():
            sets.append(f"{name} = ?")
            values.append(value)
        values.append(journal_id)
        db.execute(f"UPDATE redemptions SET {', '.join(sets)} WHERE id = ?", values)

    # ------------------------------------------------------------ counters

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def add_counter(self, name: str, delta: int = 1) -> int:
        with self._tx() as db:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, delta),
            )
            return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def set_counter_if_absent(self, name: str, value: int) -> int:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO counters (name, value) VALUES (?, ?)", (name, value))
            return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        id=row["id"], vmid=row["vmid"], port=row["port"], owner=row["owner"], tier_id=row["tier_id"],
        created_at=row["created_at"], expires_at=row["expires_at"], state=LeaseState(row["state"]),
        guest_user=row["guest_user"],
    )


def _journal(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(
        id=row["id"], request_event_id=row["request_event_id"], requester=row["requester"],
        scheme=row["scheme"], purpose=row["purpose"], mint=row["mint"], token_hash=row["token_hash"],
        state=JournalState(row["state"]), amount_msats=row["amount_msats"], unit=row["unit"],
        lease_id=row["lease_id"], refund_token=row["refund_token"], created_at=row["created_at"],
        updated_at=row["updated_at"],
    )

"""The durable store: migrations keep data, WAL is on, events are handled once, leases and the journal
move only along the allowed transitions. A restart (close + reopen) loses nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from paygressd import store as store_mod
from paygressd.store import MIGRATIONS, JournalState, LeaseState, Store

NOW = 1_780_000_000
OWNER = "ee6afe4b4a6e4fe49d6c35359d1161a6fd26fbe5d6eefcbab1c9c147731bf08a"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "paygressd.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def reopen(s: Store) -> Store:
    s.close()
    return Store(s.path)


# ---------------------------------------------------------------- schema


def test_fresh_db_is_fully_migrated(db_path: Path) -> None:
    s = Store(db_path)
    assert s.schema_version == len(MIGRATIONS)
    lease = s.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600, guest_user="alice")
    assert lease.guest_user == "alice"
    s.close()
    # Reopening a current DB runs nothing and changes nothing.
    s = Store(db_path)
    assert s.schema_version == len(MIGRATIONS)
    assert s.lease(lease.id) == lease
    s.close()


def test_v1_db_is_upgraded_and_keeps_its_data(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("BEGIN")
    store_mod._m1(raw)
    raw.execute("PRAGMA user_version = 1")
    raw.execute(
        "INSERT INTO leases (vmid, port, owner, tier_id, created_at, expires_at, state)"
        " VALUES (1000, 31000, ?, 'basic', ?, ?, 'active')", (OWNER, NOW, NOW + 600),
    )
    raw.execute("INSERT INTO processed_events (event_id, seen_at) VALUES ('ev1', ?)", (NOW,))
    raw.execute(
        "INSERT INTO redemptions (request_event_id, requester, scheme, purpose, mint, token_hash, state,"
        " amount_msats, unit, created_at, updated_at) VALUES ('ev1', ?, 'nip04', 'spawn', 'http://m', 'h',"
        " 'redeemed', 100000, 'sat', ?, ?)", (OWNER, NOW, NOW),
    )
    raw.execute("INSERT INTO counters (name, value) VALUES ('jobs_completed', 7)")
    raw.execute("COMMIT")
    raw.close()

    s = Store(db_path)
    assert s.schema_version == len(MIGRATIONS)
    [lease] = s.active_leases()
    assert (lease.vmid, lease.port, lease.owner, lease.expires_at, lease.guest_user) == (
        1000, 31000, OWNER, NOW + 600, None)
    assert not s.claim_event("ev1", NOW)
    [entry] = s.journal_unfinished()
    assert (entry.state, entry.amount_msats) == (JournalState.REDEEMED, 100_000)
    assert s.counter("jobs_completed") == 7
    # The new column works for new rows.
    assert s.insert_lease(1001, 31001, OWNER, "basic", NOW, NOW + 60, guest_user="bob").guest_user == "bob"
    s.close()


def test_failed_migration_rolls_back_completely(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(db_path)
    lease = s.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    s.close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE leases ADD COLUMN half_done TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(db_path)
    monkeypatch.undo()

    s = Store(db_path)
    assert s.schema_version == len(MIGRATIONS)
    cols = {r[1] for r in s._db.execute("PRAGMA table_info(leases)")}
    assert "half_done" not in cols
    assert s.lease(lease.id) == lease
    s.close()


def test_wal_mode_and_full_sync(store: Store, db_path: Path) -> None:
    other = sqlite3.connect(db_path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    assert db_path.with_name(db_path.name + "-wal").exists()


def test_committed_writes_are_visible_to_another_connection(store: Store, db_path: Path) -> None:
    # A second process (e.g. a CLI reading state) sees each write as soon as the call returns.
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    other = sqlite3.connect(db_path)
    assert other.execute("SELECT vmid FROM leases WHERE id = ?", (lease.id,)).fetchone() == (1000,)
    other.close()


# ---------------------------------------------------------------- processed events


def test_claim_event_exactly_once_across_reopen(store: Store) -> None:
    assert store.claim_event("a" * 64, NOW)
    assert not store.claim_event("a" * 64, NOW + 1)
    s = reopen(store)
    try:
        assert not s.claim_event("a" * 64, NOW + 2)
        assert s.event_seen("a" * 64)
        assert s.claim_event("b" * 64, NOW)
        assert not s.event_seen("c" * 64)
    finally:
        s.close()


def test_claim_event_exactly_once_under_concurrency(db_path: Path) -> None:
    # Several relays deliver the same event to several connections at once: one winner.
    stores = [Store(db_path) for _ in range(4)]
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(s: Store, event_id: str) -> None:
        barrier.wait()
        won = s.claim_event(event_id, NOW)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=worker, args=(stores[i % 4], "e" * 64)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(results) == [False] * 7 + [True]


def test_prune_events(store: Store) -> None:
    store.claim_event("old", NOW - 10_000)
    store.claim_event("new", NOW)
    assert store.prune_events(NOW - 100) == 1
    assert store.claim_event("old", NOW)  # forgotten after pruning
    assert not store.claim_event("new", NOW)


# ---------------------------------------------------------------- leases


def test_insert_and_query_leases(store: Store) -> None:
    a = store.insert_lease(1001, 31001, OWNER, "basic", NOW, NOW + 600)
    b = store.insert_lease(1000, 31000, "other", "standard", NOW, NOW + 60)
    assert [lz.vmid for lz in store.active_leases()] == [1000, 1001]
    assert store.active_leases_of(OWNER) == [a]
    assert store.active_lease_by_vmid(1000) == b
    assert store.next_expiry() == NOW + 60
    assert store.expired_leases(NOW + 60) == [b]
    assert store.expired_leases(NOW + 59) == []
    assert a.state == LeaseState.ACTIVE


def test_active_vmid_and_port_are_unique(store: Store) -> None:
    store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_lease(1000, 31001, OWNER, "basic", NOW, NOW + 600)
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_lease(1001, 31000, OWNER, "basic", NOW, NOW + 600)
    assert len(store.active_leases()) == 1  # the failed inserts left nothing behind


def test_vmid_and_port_reusable_after_end(store: Store) -> None:
    old = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 60)
    assert store.end_lease(old.id, NOW + 60)
    new = store.insert_lease(1000, 31000, OWNER, "basic", NOW + 61, NOW + 661)
    assert store.latest_lease_by_vmid(1000) == new
    assert store.active_lease_by_vmid(1000) == new


def test_extend_lease(store: Store) -> None:
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    extended = store.extend_lease(lease.id, 300, NOW + 100)
    assert extended is not None and extended.expires_at == NOW + 900  # from the old expiry, not from now
    s = reopen(store)
    try:
        assert s.lease(lease.id).expires_at == NOW + 900  # type: ignore[union-attr]
    finally:
        s.close()


def test_extend_refuses_expired_lease(store: Store) -> None:
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    assert store.extend_lease(lease.id, 300, NOW + 600) is None  # expires_at == now counts as expired
    assert store.extend_lease(lease.id, 300, NOW + 601) is None
    assert store.lease(lease.id).expires_at == NOW + 600  # type: ignore[union-attr]


def test_extend_refuses_ended_lease(store: Store) -> None:
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    assert store.end_lease(lease.id, NOW + 600)
    assert store.extend_lease(lease.id, 300, NOW) is None
    assert store.lease(lease.id).state == LeaseState.ENDED  # type: ignore[union-attr]


def test_extend_unknown_lease(store: Store) -> None:
    assert store.extend_lease(999, 300, NOW) is None


def test_end_lease_counts_jobs_completed_once(store: Store) -> None:
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    assert store.counter("jobs_completed") == 0
    assert store.end_lease(lease.id, NOW + 600)
    assert not store.end_lease(lease.id, NOW + 700)
    assert store.counter("jobs_completed") == 1
    s = reopen(store)
    try:
        assert not s.end_lease(lease.id, NOW + 800)
        assert s.counter("jobs_completed") == 1
        assert s.active_leases() == []
    finally:
        s.close()


def test_end_lease_loses_to_a_topup(store: Store) -> None:
    # The expiry sweep read an old expiry; a top-up moved it meanwhile: the lease must stay.
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    store.extend_lease(lease.id, 600, NOW + 599)
    assert not store.end_lease(lease.id, NOW + 600)
    assert store.lease(lease.id).state == LeaseState.ACTIVE  # type: ignore[union-attr]
    assert store.counter("jobs_completed") == 0


# ---------------------------------------------------------------- the redemption journal


def open_entry(s: Store, event: str = "ev1") -> int:
    return s.journal_open(event, OWNER, "nip04", "spawn", "http://127.0.0.1:3338", "tokenhash")


def test_journal_spawn_path(store: Store) -> None:
    jid = open_entry(store)
    assert store.journal(jid).state == JournalState.RECEIVED  # type: ignore[union-attr]
    assert [e.id for e in store.journal_unfinished()] == [jid]
    store.journal_redeemed(jid, 100_000, "sat")
    e = store.journal(jid)
    assert e is not None and (e.state, e.amount_msats, e.unit) == (JournalState.REDEEMED, 100_000, "sat")
    assert [e.id for e in store.journal_unfinished()] == [jid]
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 2000, journal_id=jid)
    e = store.journal(jid)
    assert e is not None and (e.state, e.lease_id) == (JournalState.FULFILLED, lease.id)
    assert store.journal_unfinished() == []


def test_journal_topup_fulfilled_atomically_with_the_extension(store: Store) -> None:
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    jid = open_entry(store, "ev-topup")
    store.journal_redeemed(jid, 60_000, "sat")
    assert store.extend_lease(lease.id, 600, NOW + 10, journal_id=jid) is not None
    assert store.journal(jid).state == JournalState.FULFILLED  # type: ignore[union-attr]


def test_journal_stays_unfinished_when_the_extension_is_refused(store: Store) -> None:
    lease = store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 600)
    jid = open_entry(store, "ev-late")
    store.journal_redeemed(jid, 60_000, "sat")
    assert store.extend_lease(lease.id, 600, NOW + 700, journal_id=jid) is None
    # Money in the wallet, nothing delivered: it must be refunded, so it stays unfinished.
    assert store.journal(jid).state == JournalState.REDEEMED  # type: ignore[union-attr]
    assert [e.id for e in store.journal_unfinished()] == [jid]


def test_journal_failed_swap(store: Store) -> None:
    jid = open_entry(store)
    store.journal_failed(jid)
    assert store.journal(jid).state == JournalState.FAILED  # type: ignore[union-attr]
    assert store.journal_unfinished() == []


def test_journal_refund_path_survives_restart(store: Store) -> None:
    jid = open_entry(store)
    store.journal_redeemed(jid, 100_000, "sat")
    store.journal_refund_prepared(jid, "cashuBrefund")
    s = reopen(store)
    try:
        [e] = s.journal_unfinished()
        # After a crash the same refund token is resent, never a new one.
        assert (e.id, e.state, e.refund_token) == (jid, JournalState.REFUND_PREPARED, "cashuBrefund")
        s.journal_refunded(jid)
        assert s.journal(jid).state == JournalState.REFUNDED  # type: ignore[union-attr]
        assert s.journal_unfinished() == []
        assert s.counter("refunds_paid") == 1
    finally:
        s.close()


@pytest.mark.parametrize("state", ["received", "fulfilled", "failed", "refund_prepared"])
def test_refund_prepared_only_from_redeemed(store: Store, state: str) -> None:
    jid = open_entry(store)
    if state != "received":
        store.journal_redeemed(jid, 1000, "sat")
    if state == "fulfilled":
        store.journal_fulfilled(jid, store.insert_lease(1000, 31000, OWNER, "basic", NOW, NOW + 60).id)
    elif state == "failed":
        store.journal_failed(jid)
    elif state == "refund_prepared":
        store.journal_refund_prepared(jid, "cashuBfirst")
    with pytest.raises(ValueError, match="not awaiting a refund"):
        store.journal_refund_prepared(jid, "cashuBsecond")
    e = store.journal(jid)
    assert e is not None and e.state == JournalState(state)
    assert e.refund_token in (None, "cashuBfirst")


def test_refund_prepared_unknown_entry(store: Store) -> None:
    with pytest.raises(ValueError):
        store.journal_refund_prepared(12345, "cashuBx")


def test_journal_refunded_counts_once(store: Store) -> None:
    jid = open_entry(store)
    store.journal_redeemed(jid, 100_000, "sat")
    store.journal_refund_prepared(jid, "cashuBrefund")
    assert store.journal_refunded(jid)
    assert not store.journal_refunded(jid)  # a second acknowledgement of the same refund DM
    assert store.counter("refunds_paid") == 1


@pytest.mark.parametrize("state", ["received", "redeemed", "failed"])
def test_journal_refunded_needs_a_prepared_refund(store: Store, state: str) -> None:
    # "Refunded" without a stored refund token would hide money we still owe from the restart sweep.
    jid = open_entry(store)
    if state == "redeemed":
        store.journal_redeemed(jid, 1000, "sat")
    elif state == "failed":
        store.journal_failed(jid)
    with pytest.raises(ValueError, match="no prepared refund"):
        store.journal_refunded(jid)
    assert store.journal(jid).state == JournalState(state)  # type: ignore[union-attr]
    assert store.counter("refunds_paid") == 0


def test_journal_for_event(store: Store) -> None:
    a = open_entry(store, "ev1")
    b = open_entry(store, "ev1")
    open_entry(store, "ev2")
    assert [e.id for e in store.journal_for_event("ev1")] == [a, b]
    assert store.journal_for_event("nope") == []


# ---------------------------------------------------------------- counters


def test_counters(store: Store) -> None:
    assert store.counter("x") == 0
    assert store.add_counter("x") == 1
    assert store.add_counter("x", 5) == 6
    assert store.set_counter_if_absent("x", 100) == 6
    assert store.set_counter_if_absent("y", 100) == 100
    s = reopen(store)
    try:
        assert (s.counter("x"), s.counter("y")) == (6, 100)
    finally:
        s.close()

"""Unit tests of the provider core alone: its payments, backend and messenger are fakes, the store is real.

What they pin is the order of work a consumer can observe: what is refused before any money moves, what is
refunded after, and that ownership, expiry and top-up races behave.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from paygressd.config import Config
from paygressd.nostr.transport import Inbound
from paygressd.payments import errors as perr
from paygressd.payments.errors import RedeemError
from paygressd.payments.service import Redeemed
from paygressd.payments.tokens import DecodedToken
from paygressd.provider.service import Provider
from paygressd.store import JournalState, Store
from paygressd.vm.backend import Capacity, CapacityError, ReconcileReport, Reservation, VmRequest, VmState, WantedVm
from paygressd.wire.models import (
    AccessDetails,
    ErrorReply,
    SpawnRequest,
    StatusReply,
    StatusRequest,
    TopUpReply,
    TopUpRequest,
)

OWNER = "a" * 64
OTHER = "b" * 64
MINT = "http://127.0.0.1:3338"
# A real, decodable V3 token (vectors.json v3_testnut_100sat); recovery decodes what the journal kept.
DECODABLE = json.loads((Path(__file__).parents[1] / "data" / "vectors.json").read_text())["tokens"][
    "v3_testnut_100sat"]["token"]


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class FakePayments:
    clock: Clock
    face_sats: int = 100
    fail: RedeemError | None = None
    advance_on_redeem: float = 0.0
    redeemed: list[str] = field(default_factory=list)
    refunds: dict[str, str] = field(default_factory=dict)
    recoverable: Redeemed | None = None

    def check_offline(self, raw: str) -> DecodedToken:
        if raw.startswith("junk"):
            raise perr.invalid_token("Unsupported token")
        return DecodedToken(raw=raw, mint=MINT, unit="sat", amount=self.face_sats, keyset_ids=("00",),
                            token_hash=f"h-{raw}", proofs=(), unit_label="Sat", proofs_hash=f"p-{raw}")

    def expected_msats(self, tok: DecodedToken) -> int:
        return tok.amount * 1000

    async def redeem(self, tok: DecodedToken) -> Redeemed:
        self.redeemed.append(tok.raw)
        self.clock.t += self.advance_on_redeem
        if self.fail is not None:
            raise self.fail
        return Redeemed(msats=tok.amount * 1000, amount=tok.amount, unit="sat", mint=tok.mint)

    async def recover(self, tok: DecodedToken) -> Redeemed | None:
        return self.recoverable

    async def make_refund(self, mint: str, unit: str, amount: int, *, key: str | None = None) -> str:
        assert key is not None
        return self.refunds.setdefault(key, f"cashuBrefund{len(self.refunds)}x{amount}")


@dataclass
class FakeBackend:
    isolation_level: str = "dedicated-host"
    accel: str = "tcg"
    full: bool = False
    fail_create: bool = False
    next_vmid: int = 1000
    reserved: dict[int, Reservation] = field(default_factory=dict)
    created: set[int] = field(default_factory=set)
    deleted: list[int] = field(default_factory=list)

    async def start(self) -> None:
        pass

    async def stop(self, vmid: int) -> None:
        self.created.discard(vmid)

    def reserve(self, cpu_millicores: int, memory_mb: int, disk_gb: int) -> Reservation:
        if self.full:
            raise CapacityError("not enough memory: 0 MB free")
        r = Reservation(self.next_vmid, 31000 + self.next_vmid - 1000, cpu_millicores, memory_mb, disk_gb)
        self.next_vmid += 1
        self.reserved[r.vmid] = r
        return r

    def release(self, r: Reservation) -> None:
        self.reserved.pop(r.vmid, None)

    async def create(self, req: VmRequest) -> None:
        if self.fail_create:
            raise RuntimeError("qemu-img: Could not open base image")
        self.created.add(req.reservation.vmid)

    async def wait_ready(self, vmid: int, timeout: float) -> bool:
        return True

    async def status(self, vmid: int) -> VmState:
        return VmState.RUNNING if vmid in self.created else VmState.ABSENT

    async def delete(self, vmid: int) -> None:
        self.deleted.append(vmid)
        self.created.discard(vmid)
        self.reserved.pop(vmid, None)

    def capacity(self) -> Capacity:
        return Capacity(4000, 8192, 100, 4000, 8192, 100)

    async def reconcile(self, wanted: list[WantedVm]) -> ReconcileReport:
        return ReconcileReport(adopted=[w.vmid for w in wanted])


@dataclass
class FakeMessenger:
    sent: list[tuple[str, str, str]] = field(default_factory=list)
    ack: bool = True

    async def send_dm(self, to_hex: str, scheme: str, payload_json: str) -> bool:
        self.sent.append((to_hex, scheme, payload_json))
        return self.ack


@dataclass
class Rig:
    provider: Provider
    payments: FakePayments
    backend: FakeBackend
    messenger: FakeMessenger
    store: Store
    clock: Clock


def _config(tmp_path: Path) -> Config:
    return Config.model_validate({
        "provider": {"public_ip": "203.0.113.7", "key_file": tmp_path / "k", "state_dir": tmp_path,
                     "minimum_duration_seconds": 60},
        "nostr": {"relays": ["ws://127.0.0.1:1"]},
        "cashu": {"mints": [MINT]},
        "kvm": {"base_image": tmp_path / "b.qcow2", "vm_root": tmp_path / "vm"},
        "tier": [
            {"id": "basic", "name": "Basic", "description": "1 vCPU", "cpu_millicores": 1000, "memory_mb": 1024,
             "rate_msats_per_sec": 1000},
            {"id": "big", "name": "Big", "description": "2 vCPU", "cpu_millicores": 2000, "memory_mb": 2048,
             "rate_msats_per_sec": 2000},
        ],
    })


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    clock = Clock()
    store = Store(tmp_path / "db.sqlite3")
    payments, backend, messenger = FakePayments(clock), FakeBackend(), FakeMessenger()
    provider = Provider(_config(tmp_path), "f" * 64, store, payments, backend, messenger, clock=clock)
    return Rig(provider, payments, backend, messenger, store, clock)


def _msg(rig: Rig, event_id: str = "e1", requester: str = OWNER) -> Inbound:
    return Inbound(event_id=event_id, requester=requester, scheme="nip04", created_at=int(rig.clock.t), content="")


def _spawn(token: str = "cashuBgood", **kw: object) -> SpawnRequest:
    fields: dict[str, object] = {"cashu_token": token, "pod_spec_id": "basic", "pod_image": "ubuntu:22.04",
                                 "ssh_username": "user", "ssh_password": "W9ZG2GIUOWiPkYID"}
    fields.update(kw)
    return SpawnRequest.model_validate(fields)


async def _lease(rig: Rig, sats: int = 100, event_id: str = "e1") -> AccessDetails:
    rig.payments.face_sats = sats
    reply = await rig.provider.handle(_msg(rig, event_id), _spawn(f"cashuB{event_id}"))
    assert isinstance(reply, AccessDetails), reply
    return reply


async def test_spawn_reply_matches_upstream_shape(rig: Rig) -> None:
    reply = await _lease(rig)
    assert reply.pod_npub == "container-1000" and reply.node_port == 31000
    assert reply.instructions[:6] == [
        "🚀 Workload provisioned successfully!", "👤 Username: root", "🔑 Password: W9ZG2GIUOWiPkYID",
        "⌛ Expires: 2027-01-15 08:01:40 UTC", "Access: You can connect to the container using SSH.",
        "  ssh -p 31000 root@203.0.113.7",
    ]
    assert reply.expires_at == "2027-01-15T08:01:40+00:00"  # now + 100 000 msats / 1000
    assert reply.host_address == "203.0.113.7"
    assert "ssh -p 31000 user@203.0.113.7" in reply.instructions[-1]
    entry = rig.store.journal_for_event("e1")[0]
    assert entry.state == JournalState.FULFILLED


@pytest.mark.parametrize(
    ("request_fields", "error_type"),
    [
        ({"template_slug": "nostr-relay"}, "template_unsupported"),
        ({"pod_spec_id": "gold"}, "unknown_spec"),
        ({"cashu_token": "junk"}, "invalid_token"),
        ({"replication": {"mode": "warm-standby", "standby_providers": []}}, "not_addressed"),
    ],
)
async def test_refusals_before_money_moves(rig: Rig, request_fields: dict[str, object], error_type: str) -> None:
    reply = await rig.provider.handle(_msg(rig), _spawn(**request_fields))
    assert isinstance(reply, ErrorReply) and reply.error_type == error_type
    assert rig.payments.redeemed == [] and rig.backend.reserved == {}


async def test_underpayment_refused_before_redeem(rig: Rig) -> None:
    rig.payments.face_sats = 59  # 59 s < 60 s minimum
    reply = await rig.provider.handle(_msg(rig), _spawn())
    assert isinstance(reply, ErrorReply)
    assert reply.message == "Insufficient payment for minimum duration. Required: 60000 msats for 60s"
    assert rig.payments.redeemed == []


async def test_no_capacity_refused_before_redeem(rig: Rig) -> None:
    rig.backend.full = True
    reply = await rig.provider.handle(_msg(rig), _spawn())
    assert isinstance(reply, ErrorReply) and reply.error_type == "capacity_exhausted"
    assert rig.payments.redeemed == []


async def test_absent_tier_picks_the_first(rig: Rig) -> None:
    reply = await rig.provider.handle(_msg(rig), _spawn(pod_spec_id=None))
    assert isinstance(reply, AccessDetails) and reply.pod_spec_name == "Basic"


async def test_redeem_failure_releases_reservation(rig: Rig) -> None:
    rig.payments.fail = perr.already_spent()
    reply = await rig.provider.handle(_msg(rig), _spawn())
    assert isinstance(reply, ErrorReply) and reply.error_type == "token_already_spent"
    assert rig.backend.reserved == {}
    assert rig.store.journal_for_event("e1")[0].state == JournalState.FAILED


async def test_backend_failure_refunds_once(rig: Rig) -> None:
    rig.backend.fail_create = True
    msg = _msg(rig)
    reply = await rig.provider.handle(msg, _spawn())
    assert isinstance(reply, ErrorReply) and reply.error_type == "backend_error"
    assert reply.refund_token == "cashuBrefund0x100"
    assert reply.details is not None and reply.refund_token in reply.details
    assert rig.backend.reserved == {} and rig.store.active_leases() == []
    rig.provider.after_reply(msg, sent=True)
    assert rig.store.journal_for_event("e1")[0].state == JournalState.REFUNDED
    assert await rig.provider.refund_unfinished() == 0  # nothing owed any more


async def test_unsent_refund_is_resent_with_the_same_token_at_start(rig: Rig) -> None:
    rig.backend.fail_create = True
    msg = _msg(rig)
    reply = await rig.provider.handle(msg, _spawn())
    assert isinstance(reply, ErrorReply)
    rig.provider.after_reply(msg, sent=False)
    assert await rig.provider.refund_unfinished() == 1
    (to, scheme, payload), = rig.messenger.sent
    assert (to, scheme) == (OWNER, "nip04")
    assert ErrorReply.from_json(payload).refund_token == reply.refund_token
    assert await rig.provider.refund_unfinished() == 0


async def test_start_up_refunds_a_redeemed_but_unfulfilled_spawn(rig: Rig) -> None:
    jid = rig.store.journal_open("e9", OWNER, "nip17", "spawn", MINT, "h", pending_token="cashuBx")
    rig.store.journal_redeemed(jid, 50_000, "sat")
    assert await rig.provider.refund_unfinished() == 1
    (to, scheme, payload), = rig.messenger.sent
    assert (to, scheme) == (OWNER, "nip17")
    assert ErrorReply.from_json(payload).refund_token == "cashuBrefund0x50"
    assert await rig.provider.refund_unfinished() == 0 and len(rig.messenger.sent) == 1


async def test_crash_mid_swap_is_recovered_through_the_wallet(rig: Rig) -> None:
    jid = rig.store.journal_open("e9", OWNER, "nip04", "spawn", MINT, "h", pending_token=DECODABLE)
    rig.payments.recoverable = Redeemed(msats=7000, amount=7, unit="sat", mint=MINT)
    assert await rig.provider.refund_unfinished() == 1
    assert rig.store.journal(jid) is not None and rig.store.journal(jid).state == JournalState.REFUNDED  # type: ignore[union-attr]
    jid2 = rig.store.journal_open("e10", OWNER, "nip04", "spawn", MINT, "h2", pending_token=DECODABLE)
    rig.payments.recoverable = None  # the swap never happened: the token is still the consumer's
    assert await rig.provider.refund_unfinished() == 0
    assert rig.store.journal(jid2).state == JournalState.FAILED  # type: ignore[union-attr]


async def test_topup_extends_from_current_expiry(rig: Rig) -> None:
    lease = await _lease(rig)
    rig.clock.t += 30
    rig.payments.face_sats = 10
    reply = await rig.provider.handle(_msg(rig, "t1"), TopUpRequest(pod_npub="container-1000", cashu_token="cashuBt"))
    assert isinstance(reply, TopUpReply)
    assert reply.extended_duration_seconds == 10
    assert reply.new_expires_at == "2027-01-15T08:01:50+00:00"
    assert lease.expires_at == "2027-01-15T08:01:40+00:00"
    assert reply.message == "Lease extended by 10s (10000 msats @ 1000 msats/sec)"


@pytest.mark.parametrize(
    ("pod", "requester", "error_type"),
    [("container-x", OWNER, "invalid_pod_id"), ("1001", OWNER, "not_found"), ("1000", OTHER, "not_owner")],
)
async def test_topup_refusals_leave_the_token(rig: Rig, pod: str, requester: str, error_type: str) -> None:
    await _lease(rig)
    before = list(rig.payments.redeemed)
    reply = await rig.provider.handle(_msg(rig, "t1", requester), TopUpRequest(pod_npub=pod, cashu_token="cashuBt"))
    assert isinstance(reply, ErrorReply) and reply.error_type == error_type
    assert rig.payments.redeemed == before


async def test_topup_racing_expiry_is_refunded(rig: Rig) -> None:
    await _lease(rig)
    rig.clock.t += 99
    rig.payments.advance_on_redeem = 5  # the lease runs out while the mint swaps
    reply = await rig.provider.handle(_msg(rig, "t1"), TopUpRequest(pod_npub="container-1000", cashu_token="cashuBt"))
    assert isinstance(reply, ErrorReply) and reply.error_type == "race_lost"
    assert reply.refund_token is not None


async def test_status_is_for_the_owner_only(rig: Rig) -> None:
    await _lease(rig)
    mine = await rig.provider.handle(_msg(rig, "s1"), StatusRequest(pod_id="container-1000"))
    assert isinstance(mine, StatusReply)
    assert (mine.pod_id, mine.status, mine.ssh_port, mine.ssh_host, mine.ssh_username) == (
        "1000", "Running", 31000, "203.0.113.7", "root")
    bare = await rig.provider.handle(_msg(rig, "s2"), StatusRequest(pod_id="1000"))
    assert isinstance(bare, StatusReply) and bare.time_remaining_seconds == 100
    theirs = await rig.provider.handle(_msg(rig, "s3", OTHER), StatusRequest(pod_id="1000"))
    assert isinstance(theirs, ErrorReply)
    assert theirs.message == "Workload 1000 not found or you don't have access"


async def test_expiry_destroys_the_vm_and_counts_the_job(rig: Rig) -> None:
    await _lease(rig)
    task = asyncio.create_task(rig.provider.expiry_loop())
    try:
        rig.clock.t += 100
        rig.provider._expiry_wakeup.set()
        for _ in range(100):
            if rig.backend.deleted:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert rig.backend.deleted == [1000]
    assert rig.store.active_leases() == [] and rig.store.counter("jobs_completed") == 1
    status = await rig.provider.handle(_msg(rig, "s9"), StatusRequest(pod_id="container-1000"))
    assert isinstance(status, StatusReply) and status.status == "Expired"


async def test_a_crashing_handler_becomes_an_error_reply(rig: Rig) -> None:
    async def boom(*_: object) -> None:
        raise RuntimeError("disk on fire")

    rig.backend.status = boom  # type: ignore[method-assign,assignment]
    await _lease(rig)
    reply = await rig.provider.handle(_msg(rig, "s1"), StatusRequest(pod_id="1000"))
    assert isinstance(reply, ErrorReply)


def test_heartbeat_capacity_is_what_the_host_has_left() -> None:
    from paygressd.provider.stats import available_capacity

    backend = FakeBackend()
    backend.capacity = lambda: Capacity(1000, 3072, 40, 4000, 8192, 100)  # type: ignore[method-assign]
    cap = available_capacity(backend)
    assert (cap.cpu_available, cap.memory_mb_available, cap.storage_gb_available) == (25_000, 3072, 40)


async def test_expiry_survives_a_failed_pass(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    await _lease(rig)
    real = rig.store.expired_leases
    calls = {"n": 0}

    def flaky(now: int) -> list[object]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database is locked")
        return real(now)  # type: ignore[return-value]

    monkeypatch.setattr(rig.store, "expired_leases", flaky)
    monkeypatch.setattr(rig.provider, "now", lambda: int(rig.clock.t))
    rig.clock.t += 100
    task = asyncio.create_task(rig.provider.expiry_loop())
    try:
        for _ in range(200):
            if rig.backend.deleted:
                break
            await asyncio.sleep(0.05)
            rig.provider._expiry_wakeup.set()
    finally:
        task.cancel()
    assert calls["n"] >= 2 and rig.backend.deleted == [1000]


async def test_a_failing_readiness_probe_still_answers_the_paid_spawn(rig: Rig) -> None:
    async def broken(vmid: int, timeout: float) -> bool:
        raise OSError("serial log vanished")

    rig.backend.wait_ready = broken  # type: ignore[method-assign]
    reply = await rig.provider.handle(_msg(rig), _spawn())
    assert isinstance(reply, AccessDetails)
    assert reply.instructions[-1].startswith("⏳")
    assert rig.store.journal_for_event("e1")[0].state == JournalState.FULFILLED

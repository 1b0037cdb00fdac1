"""Spawn, top-up and status handlers, expiry, and refunds: the rental lifecycle of protocol §3.

Order of work in a spawn is significant: everything that can refuse without moving money runs first
(template gate, tier, offline token checks, capacity/id/port reservation). After the swap, any failure
refunds the received amount with a fresh token, recorded in the journal before it is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from paygressd import failpoints
from paygressd.config import Config, Tier
from paygressd.core import rules
from paygressd.core.keys import same_key
from paygressd.logging import forget_secret, get_logger, register_secret
from paygressd.nostr.transport import Inbound
from paygressd.ops.metrics import Metrics, spawn_outcome
from paygressd.payments.errors import RedeemError
from paygressd.payments.service import Redeemed
from paygressd.payments.tokens import DecodedToken, decode_token
from paygressd.provider.ports import Backend, Messenger, Payments
from paygressd.store import JournalEntry, JournalState, Lease, Store
from paygressd.vm.backend import CapacityError, Reservation, VmRequest, VmState, WantedVm
from paygressd.wire import errors
from paygressd.wire.dispatch import Request
from paygressd.wire.models import (
    AccessDetails,
    ErrorReply,
    SpawnRequest,
    StatusReply,
    StatusRequest,
    TopUpReply,
    TopUpRequest,
    WireModel,
    human_utc,
    rfc3339,
)

log = get_logger(__name__)

# paygress-cli waits 120 s for a spawn reply; leave room for the reply to cross the relays.
SPAWN_REPLY_BUDGET_SECONDS = 105


@dataclass
class _Refund:
    journal_id: int
    reply: ErrorReply


class Provider:
    def __init__(
        self,
        config: Config,
        own_hex: str,
        store: Store,
        payments: Payments,
        backend: Backend,
        messenger: Messenger,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.config = config
        self.own_hex = own_hex
        self.store = store
        self.payments = payments
        self.backend = backend
        self.messenger = messenger
        self.clock = clock
        self.accepting = True
        self._expiry_wakeup = asyncio.Event()
        # Refund replies awaiting delivery, by request event id: marked refunded once a relay acks.
        self._pending_refunds: dict[str, int] = {}
        self._deleting: set[int] = set()

    def now(self) -> int:
        return int(self.clock())

    # ------------------------------------------------------------ dispatch

    async def handle(self, msg: Inbound, req: Request) -> WireModel:
        """One request → one reply. Never raises: an unexpected error becomes an error reply."""
        try:
            if isinstance(req, SpawnRequest):
                reply = await self.spawn(msg, req)
                self.metrics.count_spawn(spawn_outcome(reply))
                return reply
            if isinstance(req, TopUpRequest):
                return await self.topup(msg, req)
            return await self.status(msg, req)
        except Exception:
            log.exception("handler failed", event_id=msg.event_id, kind=type(req).__name__)
            # A payment taken before the failure stays in the journal and is refunded by DM at the next start.
            return errors.error(
                errors.ErrorType.BACKEND_ERROR, "Internal provider error; any payment taken is refunded"
            )

    def after_reply(self, msg: Inbound, sent: bool) -> None:
        """Called once the reply to ``msg`` was (or could not be) delivered."""
        journal_id = self._pending_refunds.pop(msg.event_id, None)
        if journal_id is not None and sent:
            self.store.journal_refunded(journal_id)
        elif journal_id is not None:
            log.error("refund reply not acknowledged by any relay; resent at next start", journal_id=journal_id)

    # ------------------------------------------------------------ spawn

    async def spawn(self, msg: Inbound, req: SpawnRequest) -> WireModel:
        # Start of the daemon-side spawn timeline (bench/spawn.py measures from here).
        log.info("spawn received", event_id=msg.event_id)
        if not self.accepting:
            return errors.shutting_down()
        if req.template_slug:
            return errors.template_unsupported()
        if req.replication is not None and req.replication.mode == "warm-standby":
            # Warm standby is not offered; only a spawn naming us as primary is served (as a plain lease).
            if req.primary_npub is None or not same_key(req.primary_npub, self.own_hex):
                return errors.error(
                    errors.ErrorType.NOT_ADDRESSED,
                    "warm-standby spawn arrived at a provider not designated as primary or standby",
                )
        tier = self._choose_tier(req.pod_spec_id)
        if isinstance(tier, ErrorReply):
            return tier
        minimum = self.config.provider.minimum_duration_seconds
        try:
            tok = self.payments.check_offline(req.cashu_token)
        except RedeemError as exc:
            return exc.reply
        if rules.lease_seconds(self.payments.expected_msats(tok), tier.rate_msats_per_sec) < minimum:
            return errors.insufficient_payment_spawn(minimum, tier.rate_msats_per_sec)
        try:
            reservation = self.backend.reserve(tier.cpu_millicores, tier.memory_mb, tier.disk_gb)
        except CapacityError as exc:
            return errors.capacity_exhausted(str(exc))
        try:
            return await self._spawn_reserved(msg, req, tier, tok, reservation)
        except BaseException:
            # Nothing was created under this reservation (create cleans up after itself).
            if self.store.active_lease_by_vmid(reservation.vmid) is None:
                self.backend.release(reservation)
            raise

    async def _spawn_reserved(
        self, msg: Inbound, req: SpawnRequest, tier: Tier, tok: DecodedToken, reservation: Reservation
    ) -> WireModel:
        journal_id = self.store.journal_open(
            msg.event_id, msg.requester, msg.scheme, "spawn", tok.mint, tok.token_hash, pending_token=tok.raw
        )
        redeem_started = time.monotonic()
        try:
            redeemed = await self._redeem(tok)
        except RedeemError as exc:
            self.store.journal_failed(journal_id)
            self.backend.release(reservation)
            return exc.reply
        redeem_ms = round((time.monotonic() - redeem_started) * 1000, 1)
        self.store.journal_redeemed(journal_id, redeemed.msats, redeemed.unit)
        failpoints.hit("spawn_after_redeem")
        log.info("spawn paid", event_id=msg.event_id, msats=redeemed.msats, tier=tier.id, vmid=reservation.vmid,
                 redeem_ms=redeem_ms)

        minimum = self.config.provider.minimum_duration_seconds
        duration = rules.spawn_duration(redeemed.msats, tier.rate_msats_per_sec, minimum)
        if isinstance(duration, rules.Insufficient):
            self.backend.release(reservation)
            reason = errors.insufficient_payment_spawn(minimum, tier.rate_msats_per_sec)
            return await self._refund(msg, journal_id, reason)

        password = rules.choose_password(req.ssh_password)
        register_secret(password)
        try:
            guest_user = rules.guest_username(req.ssh_username)
            return await self._create_vm(msg, tier, reservation, journal_id, password, guest_user, duration)
        finally:
            forget_secret(password)

    async def _create_vm(
        self, msg: Inbound, tier: Tier, reservation: Reservation, journal_id: int, password: str,
        guest_user: str | None, duration: int,
    ) -> WireModel:
        started = time.monotonic()
        try:
            await self.backend.create(VmRequest(reservation=reservation, password=password, guest_user=guest_user))
        except Exception as exc:
            log.error("vm create failed", vmid=reservation.vmid, error=str(exc))
            self.backend.release(reservation)
            return await self._refund(msg, journal_id, errors.backend_error(str(exc)))
        log.info("vm started", vmid=reservation.vmid, seconds=round(time.monotonic() - started, 3))

        now = self.now()
        lease = self.store.insert_lease(
            reservation.vmid, reservation.port, msg.requester, tier.id, now, now + duration,
            guest_user=guest_user, journal_id=journal_id,
        )
        self._expiry_wakeup.set()
        budget = max(1.0, min(self.config.kvm.ssh_ready_timeout_seconds,
                              msg.created_at + SPAWN_REPLY_BUDGET_SECONDS - self.clock()))
        try:
            ready = await self.backend.wait_ready(lease.vmid, budget)
        except Exception as exc:
            # The lease is paid and persisted: answer with the access details whatever the probe did.
            log.error("readiness probe failed", vmid=lease.vmid, error=str(exc))
            ready = False
        log.info("spawn done", vmid=lease.vmid, ready=ready, expires_at=lease.expires_at)
        return self._access_details(lease, tier, password, guest_user, ready)

    async def _redeem(self, tok: DecodedToken) -> Redeemed:
        started = time.monotonic()
        try:
            return await self.payments.redeem(tok)
        finally:
            self.metrics.observe_redeem(time.monotonic() - started)

    def _choose_tier(self, spec_id: str | None) -> Tier | ErrorReply:
        if not self.config.tier:
            return errors.no_specs()
        if spec_id is None:
            return self.config.tier[0]
        tier = self.config.tier_by_id(spec_id)
        if tier is None:
            # Upstream silently bills the first tier (§8 item 2); we refuse before any money moves.
            return errors.unknown_spec(spec_id, [t.id for t in self.config.tier])
        return tier

    def _access_details(
        self, lease: Lease, tier: Tier, password: str, guest_user: str | None, ready: bool
    ) -> AccessDetails:
        host = self.config.provider.public_ip
        instructions = [
            "🚀 Workload provisioned successfully!",
            "👤 Username: root",
            f"🔑 Password: {password}",
            f"⌛ Expires: {human_utc(lease.expires_at)}",
            "Access: You can connect to the container using SSH.",
            f"  ssh -p {lease.port} root@{host}",
        ]
        if guest_user is not None:
            instructions += [
                f"👤 Also: {guest_user} (same password, sudo)",
                f"  ssh -p {lease.port} {guest_user}@{host}",
            ]
        if not ready:
            instructions.append("⏳ The VM is still booting: SSH will accept the password within a minute or two.")
        return AccessDetails(
            pod_npub=rules.pod_npub(lease.vmid),
            node_port=lease.port,
            expires_at=rfc3339(lease.expires_at),
            cpu_millicores=tier.cpu_millicores,
            memory_mb=tier.memory_mb,
            pod_spec_name=tier.name,
            pod_spec_description=tier.description,
            instructions=instructions,
            host_address=host,
        )

    # ------------------------------------------------------------ top-up

    async def topup(self, msg: Inbound, req: TopUpRequest) -> WireModel:
        vmid = rules.parse_pod_id(req.pod_npub)
        if vmid is None:
            return errors.invalid_pod_id(req.pod_npub)
        lease = self.store.active_lease_by_vmid(vmid)
        if lease is None:
            return errors.topup_not_found(req.pod_npub)
        if lease.owner != msg.requester:
            return errors.not_owner()
        if lease.expires_at <= self.now():
            return errors.lease_expired(req.pod_npub)
        tier = self.config.tier_by_id(lease.tier_id)
        if tier is None:
            return errors.spec_unavailable(req.pod_npub, lease.tier_id)
        try:
            tok = self.payments.check_offline(req.cashu_token)
        except RedeemError as exc:
            return exc.reply
        expected = self.payments.expected_msats(tok)
        if rules.lease_seconds(expected, tier.rate_msats_per_sec) == 0:
            return errors.insufficient_payment_topup(expected, tier.rate_msats_per_sec)

        journal_id = self.store.journal_open(
            msg.event_id, msg.requester, msg.scheme, "topup", tok.mint, tok.token_hash, pending_token=tok.raw
        )
        try:
            redeemed = await self._redeem(tok)
        except RedeemError as exc:
            self.store.journal_failed(journal_id)
            return exc.reply
        self.store.journal_redeemed(journal_id, redeemed.msats, redeemed.unit)
        seconds = rules.lease_seconds(redeemed.msats, tier.rate_msats_per_sec)
        if seconds == 0:
            reason = errors.insufficient_payment_topup(redeemed.msats, tier.rate_msats_per_sec)
            return await self._refund(msg, journal_id, reason)
        extended = self.store.extend_lease(lease.id, seconds, self.now(), journal_id=journal_id)
        if extended is None:
            # The lease expired while the swap ran: the token is refunded, not kept (upstream keeps it).
            return await self._refund(msg, journal_id, errors.race_lost())
        self._expiry_wakeup.set()
        log.info("topup done", vmid=vmid, seconds=seconds, expires_at=extended.expires_at)
        return TopUpReply(
            success=True,
            pod_npub=req.pod_npub,
            extended_duration_seconds=seconds,
            new_expires_at=rfc3339(extended.expires_at),
            message=rules.topup_message(seconds, redeemed.msats, tier.rate_msats_per_sec),
        )

    # ------------------------------------------------------------ status

    async def status(self, msg: Inbound, req: StatusRequest) -> WireModel:
        vmid = rules.parse_pod_id(req.pod_id)
        lease: Lease | None
        if vmid is None:
            # Upstream answers a non-numeric id with one of the requester's leases; keep that, owner-only.
            mine = self.store.active_leases_of(msg.requester)
            lease = mine[0] if mine else None
        else:
            lease = self.store.latest_lease_by_vmid(vmid)
        if lease is None or lease.owner != msg.requester:
            return errors.status_not_found(req.pod_id)
        now = self.now()
        remaining = max(0, lease.expires_at - now)
        if lease.state != "active" or remaining == 0:
            state = "Expired"
        else:
            vm = await self.backend.status(lease.vmid)
            state = {VmState.RUNNING: "Running", VmState.STARTING: "Starting"}.get(vm, "Stopped")
        tier = self.config.tier_by_id(lease.tier_id)
        return StatusReply(
            pod_id=str(lease.vmid),
            status=state,
            expires_at=rfc3339(lease.expires_at),
            time_remaining_seconds=remaining,
            cpu_millicores=tier.cpu_millicores if tier else 1000,
            memory_mb=tier.memory_mb if tier else 1024,
            ssh_host=self.config.provider.public_ip,
            ssh_port=lease.port,
            ssh_username="root",
        )

    # ------------------------------------------------------------ refunds

    async def _refund(self, msg: Inbound, journal_id: int, reason: ErrorReply) -> ErrorReply:
        entry = self.store.journal(journal_id)
        assert entry is not None
        reply = await self._prepare_refund(entry, reason)
        self._pending_refunds[msg.event_id] = journal_id
        return reply

    async def _prepare_refund(self, entry: JournalEntry, reason: ErrorReply) -> ErrorReply:
        token = entry.refund_token
        if token is None:
            assert entry.amount_msats is not None and entry.unit is not None
            amount = entry.amount_msats // 1000 if entry.unit == "sat" else entry.amount_msats
            # Keyed by the journal entry: asking twice (e.g. after a crash) yields the same token.
            token = await self.payments.make_refund(entry.mint, entry.unit, amount, key=f"journal:{entry.id}")
            self.store.journal_refund_prepared(entry.id, token)
        log.info("refund prepared", journal_id=entry.id, msats=entry.amount_msats)
        return reason.model_copy(
            update={
                "details": f"Your payment was refunded; redeem this token to recover it: {token}",
                "refund_token": token,
            }
        )

    async def refund_unfinished(self) -> int:
        """At start-up: refund every redemption whose request was never fulfilled, exactly once."""
        sent = 0
        for entry in self.store.journal_unfinished():
            if entry.state == JournalState.RECEIVED:
                # Crashed mid-swap: ask the wallet whether the swap went through.
                recovered = await self._recover(entry)
                if recovered is None:
                    continue
                entry = recovered
            reason = errors.backend_error("the provider restarted before your request was completed")
            try:
                reply = await self._prepare_refund(entry, reason)
            except Exception as exc:
                log.error("refund could not be prepared; retried at next start", journal_id=entry.id, error=str(exc))
                continue
            if await self.messenger.send_dm(entry.requester, entry.scheme, reply.to_json()):
                self.store.journal_refunded(entry.id)
                sent += 1
            else:
                log.error("refund DM not acknowledged; retried at next start", journal_id=entry.id)
        return sent

    async def _recover(self, entry: JournalEntry) -> JournalEntry | None:
        raw = self.store.journal_pending_token(entry.id)
        if raw is None:
            self.store.journal_failed(entry.id)
            return None
        try:
            redeemed = await self.payments.recover(decode_token(raw))
        except RedeemError:
            redeemed = None
        except Exception as exc:
            log.error("swap outcome unknown; retried at next start", journal_id=entry.id, error=str(exc))
            return None
        if redeemed is None:
            # We never received it: the token is still the consumer's.
            self.store.journal_failed(entry.id)
            return None
        self.store.journal_redeemed(entry.id, redeemed.msats, redeemed.unit)
        return self.store.journal(entry.id)

    # ------------------------------------------------------------ expiry and reconcile

    async def reconcile(self) -> None:
        await self._expire_due()
        wanted = [self._wanted(lease) for lease in self.store.active_leases()]
        report = await self.backend.reconcile([w for w in wanted if w is not None])
        log.info("reconciled", adopted=report.adopted, restarted=report.restarted, removed=report.removed,
                 failed=report.failed)

    def _wanted(self, lease: Lease) -> WantedVm | None:
        tier = self.config.tier_by_id(lease.tier_id)
        if tier is None:
            log.error("lease references a tier no longer configured", vmid=lease.vmid, tier=lease.tier_id)
            return None
        return WantedVm(vmid=lease.vmid, port=lease.port, cpu_millicores=tier.cpu_millicores,
                        memory_mb=tier.memory_mb, disk_gb=tier.disk_gb)

    async def expiry_loop(self) -> None:
        """Sleep until the next expiry in the store (or a change), then end and destroy what is due."""
        while True:
            try:
                await self._expire_due()
                nxt = self.store.next_expiry()
            except Exception:
                # A failed pass (e.g. a locked database) must not stop expiry for good: retry shortly.
                log.exception("expiry pass failed")
                nxt = self.now() + 5
            wait = 60.0 if nxt is None else max(0.2, min(60.0, nxt - self.clock() + 0.05))
            self._expiry_wakeup.clear()
            try:
                await asyncio.wait_for(self._expiry_wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def _expire_due(self) -> None:
        now = self.now()
        for lease in self.store.expired_leases(now):
            if self.store.end_lease(lease.id, now):
                log.info("lease expired", vmid=lease.vmid, lease_id=lease.id)
                await self._delete_vm(lease.vmid)

    async def _delete_vm(self, vmid: int) -> None:
        if vmid in self._deleting:
            return
        self._deleting.add(vmid)
        try:
            await self.backend.delete(vmid)
        except Exception as exc:
            # The lease is ended; reconcile at the next start removes what is left.
            log.error("vm delete failed", vmid=vmid, error=str(exc))
        finally:
            self._deleting.discard(vmid)

    # ------------------------------------------------------------ discovery stats

    def active_workloads(self) -> int:
        return len(self.store.active_leases())

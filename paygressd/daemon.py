"""The daemon's life: start every part in order, run until SIGTERM, stop without losing anything.

Start: store → payments → backend (accel) → reconcile VMs with leases → relays → refund what the journal
says → listen. Stop: refuse new requests, let in-flight ones finish within a bound, leave paid VMs running.
"""

from __future__ import annotations

import asyncio
import signal

from nostr_sdk import Keys

from paygressd.config import Config
from paygressd.core.keys import load_keys
from paygressd.logging import get_logger, register_secret, setup_logging
from paygressd.nostr.discovery import Discovery, StoreStats
from paygressd.nostr.inbox import Inbox
from paygressd.nostr.transport import NostrTransport
from paygressd.ops.metrics import Metrics, parse_listen, serve_metrics
from paygressd.payments.service import PaymentService
from paygressd.provider.service import Provider
from paygressd.provider.stats import available_capacity
from paygressd.store import Store
from paygressd.vm.kvm import KvmBackend

log = get_logger(__name__)


def run_daemon(config: Config, log_level: str = "info") -> int:
    setup_logging(log_level)
    keys = load_keys(config.provider.key_file)
    register_secret(keys.secret_key().to_hex())
    register_secret(keys.secret_key().to_bech32())
    try:
        return asyncio.run(Daemon(config, keys).run())
    except KeyboardInterrupt:
        return 0


class Daemon:
    def __init__(self, config: Config, keys: Keys) -> None:
        self.config = config
        self.keys = keys
        self.own_hex = keys.public_key().to_hex()
        self._stop = asyncio.Event()

    async def run(self) -> int:
        """0 after SIGTERM/SIGINT; 1 when a part died on its own, so systemd's Restart=on-failure acts."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)

        if cfg.metrics.enabled:
            parse_listen(cfg.metrics.listen)  # refuse a bad or non-loopback address before any side effect
        store = Store(cfg.db_path)
        payments = PaymentService(cfg.wallet_dir, cfg.cashu.mints)
        await payments.start()
        backend = KvmBackend(cfg.kvm, cfg.provider.state_dir)
        await backend.start()
        log.info("backend ready", accel=backend.accel, isolation=backend.isolation_level)

        transport = NostrTransport.from_config(self.keys, cfg, store)
        metrics = Metrics()
        provider = Provider(cfg, self.own_hex, store, payments, backend, transport, metrics=metrics)
        await provider.reconcile()
        await transport.start()
        refunded = await provider.refund_unfinished()
        if refunded:
            log.info("start-up refunds sent", count=refunded)

        stats = StoreStats(store, capacity=lambda: available_capacity(backend))
        discovery = Discovery(transport, self.keys, cfg, stats, backend.isolation_level)
        inbox = Inbox(
            transport,
            provider.handle,
            max_concurrent=cfg.provider.max_concurrent_requests,
            request_max_age=cfg.provider.request_max_age_seconds,
            rate_limit_requests=cfg.provider.rate_limit_requests,
            rate_limit_window=cfg.provider.rate_limit_window_seconds,
            after_reply=provider.after_reply,
        )
        tasks = [
            asyncio.create_task(inbox.run(), name="inbox"),
            asyncio.create_task(discovery.run(), name="discovery"),
            asyncio.create_task(provider.expiry_loop(), name="expiry"),
        ]
        metrics.gauge_fn("paygressd_active_leases", lambda: len(store.active_leases()))
        metrics.counter_fn("paygressd_refunds_paid_total", lambda: store.counter("refunds_paid"))
        metrics.gauge_fn(
            "paygressd_relay_connected",
            lambda: {u: float(s == "connected") for u, s in transport.relay_states().items()},
        )
        server = await serve_metrics(cfg.metrics.listen, metrics) if cfg.metrics.enabled else None
        log.info("paygressd listening", pubkey=self.own_hex, relays=cfg.nostr.relays, accel=backend.accel)
        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = False
        for t in done:
            if t is not stop_wait:
                failed = True
                log.error("task ended unexpectedly", task=t.get_name(), error=repr(t.exception()))
        stop_wait.cancel()

        log.info("stopping: no new requests; in-flight requests get a bounded grace period")
        provider.accepting = False
        inbox.stop_accepting()
        await inbox.drain(cfg.provider.shutdown_grace_seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            server.close()
            await server.wait_closed()
        await transport.close()
        await payments.close()
        store.close()
        log.info("stopped; VMs keep running under their leases")
        return 1 if failed else 0

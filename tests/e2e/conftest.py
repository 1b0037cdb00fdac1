"""The end-to-end world: a LocalRelay, a Nutshell mint (FakeWallet), paygressd as a subprocess, a consumer.

Everything is real and on loopback; the module shares one event loop and one world to keep boots few.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from nostr_sdk import Keys

from paygressd.consumer import Consumer
from paygressd.vm.kvm import KvmBackend
from tests.support.daemon import DaemonConfig, DaemonProcess
from tests.support.guest import kvm_section, missing_reason
from tests.support.mint import ConsumerWallet, MintProcess, run_mint
from tests.support.relay import TestRelay


@dataclass
class World:
    relay: TestRelay
    mint: MintProcess
    config: DaemonConfig
    config_path: Path
    daemon: DaemonProcess
    wallet: ConsumerWallet
    consumer: Consumer

    @property
    def provider(self) -> str:
        return self.config.pubkey_hex

    @property
    def vm_root(self) -> Path:
        return self.config.work / "state" / "vm"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    why = missing_reason("mini")
    if why is not None:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("e2e")
    relay = TestRelay()
    await relay.start()
    try:
        async with run_mint(base / "mint", input_fee_ppk=0) as mint:
            cfg = DaemonConfig(work=base / "provider", relays=[relay.url], mints=[mint.url])
            path = cfg.write()
            daemon = DaemonProcess(path)
            wallet = await ConsumerWallet.open(mint.url, base / "consumer-wallet")
            consumer = Consumer(Keys.generate(), [relay.url])
            await consumer.start()
            try:
                await daemon.start()
                yield World(relay, mint, cfg, path, daemon, wallet, consumer)
            finally:
                await consumer.close()
                await wallet.close()
                if daemon.proc is not None:
                    await daemon.stop()
                # Whatever a failed test left behind: no qemu survives the suite.
                await KvmBackend(kvm_section("mini", base / "provider" / "state" / "vm")).reconcile([])
    finally:
        await relay.stop()

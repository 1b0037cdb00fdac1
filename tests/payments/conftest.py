"""Fixtures for the payments suite: real Nutshell mints (FakeWallet) on loopback, shared per session.

Every async test here runs on the session event loop (the mints' counting proxies live on it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from paygressd.payments.service import PaymentService
from tests.support.mint import ConsumerWallet, MintProcess, run_mint

ServiceFactory = Callable[..., Awaitable[PaymentService]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mint0(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MintProcess]:
    """Input fee 0; sat, msat and usd keysets."""
    async with run_mint(tmp_path_factory.mktemp("mint0"), input_fee_ppk=0, units=("sat", "msat", "usd")) as m:
        yield m


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mint100(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MintProcess]:
    """Nutshell's default input fee: 100 ppk per proof."""
    async with run_mint(tmp_path_factory.mktemp("mint100"), input_fee_ppk=100, units=("sat",)) as m:
        yield m


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def consumer0(mint0: MintProcess, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsumerWallet]:
    c = await ConsumerWallet.open(mint0.url, tmp_path_factory.mktemp("consumer0"))
    yield c
    await c.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def consumer100(
    mint100: MintProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ConsumerWallet]:
    c = await ConsumerWallet.open(mint100.url, tmp_path_factory.mktemp("consumer100"))
    yield c
    await c.close()


@pytest_asyncio.fixture(loop_scope="session")
async def make_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """make_service(whitelist, name="provider") -> a started PaymentService with its own wallet dir."""
    made: list[PaymentService] = []

    async def make(whitelist: list[str], name: str = "provider") -> PaymentService:
        svc = PaymentService(tmp_path / name, whitelist)
        await svc.start()
        made.append(svc)
        return svc

    yield make
    for svc in made:
        await svc.close()

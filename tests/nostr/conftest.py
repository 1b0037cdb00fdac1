"""Fixtures for the Nostr transport tests (a real LocalRelay on loopback)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The repository root, so that ``tests.support`` and ``tests.nostr`` import the same way from every suite.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.relay import TestRelay, local_relay


@pytest.fixture
async def relay() -> AsyncIterator[TestRelay]:
    async with local_relay() as r:
        yield r


@pytest.fixture
async def relay2() -> AsyncIterator[TestRelay]:
    async with local_relay() as r:
        yield r

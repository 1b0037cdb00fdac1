"""``paygressd consumer`` (list, status, spawn pre-checks) as a separate process against a live provider."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from paygressd.nostr.discovery import Discovery, StoreStats
from tests.nostr.harness import consumer, make_config, running_provider, wait_for
from tests.support.relay import TestRelay

pytestmark = pytest.mark.relay

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = (
    "import argparse, sys; from paygressd.nostr.cli import register; p = argparse.ArgumentParser(); "
    "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


async def _cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "faulthandler", "-c", LAUNCH, *argv, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_consumer_cli_lists_and_queries_a_live_provider(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov:
        cfg = make_config(tmp_path, [relay.url], name="CliOwl")
        discovery = Discovery(prov.transport, prov.keys, cfg, StoreStats(prov.transport.store), "dedicated-host")
        task = asyncio.create_task(discovery.run())
        try:
            assert await wait_for(lambda: discovery.beats_published >= 1, 10)
            common = ["consumer", "--relays", relay.url, "--identity", str(tmp_path / "id"), "--timeout", "20"]
            code, out, _ = await _cli(*common, "list")
            assert code == 0
            [line] = out.splitlines()
            listing = json.loads(line)
            assert listing["provider"] == prov.hex and listing["hostname"] == "CliOwl" and listing["online"]
            assert (tmp_path / "id").stat().st_mode & 0o077 == 0  # identity created private

            code, out, _ = await _cli(*common, "status", "--provider", "cliowl", "--pod-id", "1000")
            assert code == 0
            assert json.loads(out)["pod_id"] == "1000"

            code, _, err = await _cli(*common, "spawn", "--provider", prov.hex, "--token", "cashuBx", "--tier", "gold")
            assert code == 2 and "Tier 'gold' not available" in err
            assert [type(r).__name__ for _, r in prov.handler.calls] == ["StatusRequest"]  # nothing sent for spawn
        finally:
            discovery.stop()
            await asyncio.wait_for(task, 10)


async def test_consumer_cli_refuses_an_offline_provider(relay: TestRelay, tmp_path: Path) -> None:
    async with running_provider([relay.url], tmp_path / "db.sqlite3") as prov, consumer([relay.url]) as c:
        cfg = make_config(tmp_path, [relay.url])
        discovery = Discovery(prov.transport, prov.keys, cfg, StoreStats(prov.transport.store), "dedicated-host")
        assert await discovery.publish_offer()  # an offer but no heartbeat: offline
        assert [p.online for p in await c.list_offers()] == [False]
        code, _, err = await _cli("consumer", "--relays", relay.url, "--identity", str(tmp_path / "id"),
                                  "spawn", "--provider", prov.hex, "--token", "cashuBx")
        assert code == 2 and "Provider appears to be offline." in err
        assert prov.handler.calls == []

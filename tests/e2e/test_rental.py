"""A consumer rents a VM end to end, with only real parts: relay, mint, paygressd subprocess, qemu guest, SSH.

The consumer speaks like paygress-cli 0.1.9 (NIP-04 requests, first provider DM is the reply). Requests here
follow each other within seconds, so the consumer only looks back to its own request (``lookback=0``); with
the CLI's 60 s look-back a stored earlier reply would be taken instead (protocol §1.8).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pytest
from nostr_sdk import Keys

from paygressd.consumer import Consumer
from paygressd.devkit.ports import port_free
from paygressd.wire.models import AccessDetails, ErrorReply, StatusReply, TopUpReply
from tests.e2e.conftest import World
from tests.support.guest import ssh_run

pytestmark = [pytest.mark.vm, pytest.mark.mint, pytest.mark.relay, pytest.mark.asyncio(loop_scope="module")]

PASSWORD = "Rent4lPassw0rdXY"


def _ts(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339).timestamp())


def _qemu_alive(vm_dir: Path) -> bool:
    try:
        pid = int((vm_dir / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


async def _spawn(world: World, sats: int, **kw: object) -> AccessDetails | ErrorReply:
    token = await world.wallet.token(sats)
    reply = await world.consumer.spawn(world.provider, token, lookback=0, **kw)  # type: ignore[arg-type]
    assert isinstance(reply, AccessDetails | ErrorReply), f"no parseable reply: {reply!r}"
    return reply


async def _wait_gone(world: World, vmid: int, port: int, until: float) -> None:
    vm_dir = world.vm_root / str(vmid)
    while time.time() < until:
        if not vm_dir.exists() and port_free(port):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"VM {vmid} still present after its lease expired: dir={vm_dir.exists()}")


async def test_offer_is_listed_online(world: World) -> None:
    listings = await world.consumer.list_offers()
    mine = [x for x in listings if x.provider_hex == world.provider]
    assert len(mine) == 1, listings
    offer = mine[0].offer
    assert mine[0].online
    assert offer.provider_npub == world.provider
    assert offer.isolation_level == "dedicated-host"
    assert [s.id for s in offer.specs] == ["basic"]
    assert offer.whitelisted_mints == [world.mint.url]


async def test_rent_login_status_topup_expire(world: World) -> None:
    started = time.time()
    reply = await _spawn(world, 45, tier="basic", ssh_user="alice", ssh_password=PASSWORD)
    assert isinstance(reply, AccessDetails), reply
    vmid = int(reply.pod_npub.removeprefix("container-"))
    assert reply.pod_npub == f"container-{vmid}"
    assert reply.host_address == "127.0.0.1"
    assert f"🔑 Password: {PASSWORD}" in reply.instructions
    assert f"  ssh -p {reply.node_port} root@127.0.0.1" in reply.instructions
    expires = _ts(reply.expires_at)
    assert started + 45 - 2 <= expires <= time.time() + 45

    # The consumer logs in with the password it chose, as root and as the username it asked for.
    proc = await asyncio.to_thread(ssh_run, "127.0.0.1", reply.node_port, "root", PASSWORD, "uname -a; id -un")
    assert proc.returncode == 0, proc.stderr
    assert "Linux" in proc.stdout and "root" in proc.stdout
    proc = await asyncio.to_thread(ssh_run, "127.0.0.1", reply.node_port, "alice", PASSWORD, "id -un")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "alice"

    status = await world.consumer.status(world.provider, reply.pod_npub, lookback=0)
    assert isinstance(status, StatusReply), status
    assert (status.pod_id, status.status, status.ssh_port) == (str(vmid), "Running", reply.node_port)
    assert status.expires_at == reply.expires_at

    # Once over NIP-17 (SDK-style), bare numeric id.
    status17 = await world.consumer.status(world.provider, str(vmid), scheme="nip17", lookback=0)
    assert isinstance(status17, StatusReply), status17
    assert status17.status == "Running"

    # Someone else asking about this lease learns nothing.
    async with Consumer(Keys.generate(), [world.relay.url]) as stranger:
        raw = await stranger.request(world.provider, f'{{"pod_id":"{reply.pod_npub}"}}', 30, lookback=0)
    assert raw is not None
    err = ErrorReply.from_json(raw)
    assert err.error_type == "not_found"

    token = await world.wallet.token(10)
    top = await world.consumer.topup(world.provider, reply.pod_npub, token, lookback=0)
    assert isinstance(top, TopUpReply), top
    assert top.extended_duration_seconds == 10
    assert _ts(top.new_expires_at) == expires + 10
    assert top.message == "Lease extended by 10s (10000 msats @ 1000 msats/sec)"

    # Expiry: the VM, its directory and its port are gone within a few seconds of the new expiry.
    await _wait_gone(world, vmid, reply.node_port, until=expires + 10 + 8)
    assert time.time() >= expires + 10 - 1
    status = await world.consumer.status(world.provider, reply.pod_npub, lookback=0)
    assert isinstance(status, StatusReply), status
    assert status.status == "Expired" and status.time_remaining_seconds == 0


async def test_double_spend_is_refused(world: World) -> None:
    token = await world.wallet.token(40)
    assert await world.wallet.receive(token) == 40  # the consumer spends it elsewhere first
    reply = await world.consumer.spawn(world.provider, token, lookback=0)
    assert isinstance(reply, ErrorReply), reply
    assert reply.error_type == "token_already_spent"


async def test_underpayment_is_refused_untouched(world: World) -> None:
    token = await world.wallet.token(10)  # 10 s at 1 sat/s, below the 30 s minimum
    reply = await world.consumer.spawn(world.provider, token, lookback=0)
    assert isinstance(reply, ErrorReply), reply
    assert reply.error_type == "insufficient_payment"
    assert reply.message == "Insufficient payment for minimum duration. Required: 30000 msats for 30s"
    assert await world.wallet.proof_states(token) == ["UNSPENT"] * len(await world.wallet.proof_states(token))
    assert await world.wallet.receive(token) == 10


async def test_backend_failure_refunds(world: World) -> None:
    base = world.config.work / "images" / "base-mini.qcow2"
    hidden = base.with_suffix(".hidden")
    base.rename(hidden)
    try:
        reply = await _spawn(world, 40)
    finally:
        hidden.rename(base)
    assert isinstance(reply, ErrorReply), reply
    assert reply.error_type == "backend_error"
    assert reply.refund_token is not None and reply.details is not None
    assert reply.refund_token in reply.details
    assert await world.wallet.receive(reply.refund_token) == 40
    assert not any(world.vm_root.glob("10*")), "a failed create left a VM directory behind"


async def test_restart_mid_lease_keeps_vm_and_expiry(world: World) -> None:
    reply = await _spawn(world, 35, ssh_password=PASSWORD)
    assert isinstance(reply, AccessDetails), reply
    vmid = int(reply.pod_npub.removeprefix("container-"))
    vm_dir = world.vm_root / str(vmid)
    assert await world.daemon.stop() == 0
    assert _qemu_alive(vm_dir), "SIGTERM to the daemon killed a paid VM"
    await world.daemon.start()
    status = await world.consumer.status(world.provider, reply.pod_npub, lookback=0)
    assert isinstance(status, StatusReply), status
    assert status.status == "Running" and status.ssh_port == reply.node_port
    proc = await asyncio.to_thread(ssh_run, "127.0.0.1", reply.node_port, "root", PASSWORD, "echo still-here")
    assert proc.returncode == 0 and "still-here" in proc.stdout, proc.stderr
    await _wait_gone(world, vmid, reply.node_port, until=_ts(reply.expires_at) + 8)


async def test_sigterm_lets_an_inflight_spawn_finish(world: World) -> None:
    """SIGTERM while a paid spawn is booting: the spawn completes and is answered, the daemon exits 0, the VM stays."""
    token = await world.wallet.token(35)
    paid_before = sum(1 for e in world.daemon.events() if e.get("event") == "spawn paid")
    spawn = asyncio.create_task(world.consumer.spawn(world.provider, token, ssh_password=PASSWORD, lookback=0))
    for _ in range(600):
        if sum(1 for e in world.daemon.events() if e.get("event") == "spawn paid") > paid_before:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the spawn was never paid")
    assert world.daemon.proc is not None
    world.daemon.proc.terminate()
    assert await world.daemon.wait_exit(60) == 0
    reply = await spawn
    assert isinstance(reply, AccessDetails), reply
    vmid = int(reply.pod_npub.removeprefix("container-"))
    assert _qemu_alive(world.vm_root / str(vmid)), "the paid VM did not survive the daemon's shutdown"
    await world.daemon.start()
    proc = await asyncio.to_thread(ssh_run, "127.0.0.1", reply.node_port, "root", PASSWORD, "echo after-restart")
    assert proc.returncode == 0 and "after-restart" in proc.stdout, proc.stderr
    await _wait_gone(world, vmid, reply.node_port, until=_ts(reply.expires_at) + 8)


async def test_crash_between_redeem_and_reply_refunds_once(world: World) -> None:
    await world.daemon.stop()
    world.daemon.env = {"PAYGRESSD_FAILPOINT": "spawn_after_redeem"}
    await world.daemon.start()
    token = await world.wallet.token(40)
    payload = world.consumer.spawn_payload(token)
    sent = time.time()
    first = asyncio.create_task(world.consumer.request(world.provider, payload, 20, lookback=0))
    assert await world.daemon.wait_exit(30) == 86, "the daemon did not die at the crash point"
    assert await first is None, "a reply went out although the daemon died before replying"

    world.daemon.env = {}
    waiting = asyncio.create_task(world.consumer.collect_replies(world.provider, since=int(sent), duration=15))
    await world.daemon.start()
    replies = await waiting
    assert len(replies) == 1, replies
    err = ErrorReply.from_json(replies[0])
    assert err.refund_token is not None
    assert await world.wallet.receive(err.refund_token) == 40


async def test_consumer_cli_rents_from_the_daemon(world: World, tmp_path: Path) -> None:
    """`paygressd consumer` (what an operator runs from another machine) completes a rental, token on stdin."""
    import json
    import sys

    identity = tmp_path / "identity"
    common = [sys.executable, "-m", "paygressd", "consumer", "--relays", world.relay.url, "--identity", str(identity)]

    async def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *common, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 150)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await cli("list")
    assert code == 0, err
    assert any(json.loads(line)["provider"] == world.provider and json.loads(line)["online"]
               for line in out.splitlines()), out

    token = await world.wallet.token(35)
    code, out, err = await cli("spawn", "--provider", world.provider[:12], "--ssh-pass", PASSWORD, stdin=token + "\n")
    assert code == 0, (out, err)
    assert token not in out + err
    reply = AccessDetails.from_json(out.strip().splitlines()[-1])
    proc = await asyncio.to_thread(ssh_run, "127.0.0.1", reply.node_port, "root", PASSWORD, "echo via-cli")
    assert proc.returncode == 0 and "via-cli" in proc.stdout, proc.stderr
    vmid = int(reply.pod_npub.removeprefix("container-"))
    await _wait_gone(world, vmid, reply.node_port, until=_ts(reply.expires_at) + 8)


async def test_daemon_log_holds_no_secrets(world: World) -> None:
    """After every rental above, the daemon's own log holds no token, password or secret key."""
    import re

    text = world.daemon.log_text()
    assert "spawn paid" in text  # the log is the real one, with the rentals in it
    assert re.search(r"cashu[AB][A-Za-z0-9_\-]{20,}", text) is None
    assert PASSWORD not in text
    secret = (world.config.work / "provider.key").read_text().strip()
    assert secret not in text
    assert Keys.parse(secret).secret_key().to_hex() not in text

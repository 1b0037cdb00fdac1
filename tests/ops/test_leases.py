"""``paygressd leases``: active leases from the store, with their VM's state, as a table and as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from nostr_sdk import Keys

from paygressd.config import Config, load_config
from paygressd.ops import leases
from paygressd.ops.cli import register
from paygressd.store import Store
from paygressd.vm.backend import VmRequest
from paygressd.vm.kvm import KvmBackend
from paygressd.vm.qemu import VmPaths
from tests.support.guest import kvm_section, missing_reason, ssh_run

NOW = 1_800_000_000


def _config(tmp_path: Path) -> Config:
    path = tmp_path / "paygressd.toml"
    path.write_text(f"""
[provider]
public_ip = "127.0.0.1"
key_file = "provider.key"
state_dir = "state"
[nostr]
relays = ["ws://127.0.0.1:1"]
[cashu]
mints = ["http://127.0.0.1:1"]
[kvm]
base_image = "{tmp_path}/base.qcow2"
vm_root = "state/vm"
listen_address = "127.0.0.1"
[[tier]]
id = "basic"
name = "Basic"
description = "d"
cpu_millicores = 1000
memory_mb = 512
rate_msats_per_sec = 10
""")
    return load_config(path)


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Config, list[Keys]]:
    cfg = _config(tmp_path)
    owners = [Keys.generate(), Keys.generate()]
    store = Store(cfg.db_path)
    try:
        store.insert_lease(1001, 31001, owners[0].public_key().to_hex(), "basic", NOW - 100, NOW + 252)
        # time is up but the daemon has not ended it yet: still listed, as "expired"
        store.insert_lease(1002, 31002, owners[1].public_key().to_hex(), "basic", NOW - 900, NOW - 5)
        ended = store.insert_lease(1003, 31003, owners[1].public_key().to_hex(), "basic", NOW - 900, NOW - 60)
        assert store.end_lease(ended.id, NOW)
    finally:
        store.close()
    # vm 1002 left its directory behind but no qemu runs: "stopped"; vm 1001 has nothing: "absent"
    (cfg.kvm.vm_root / "1002").mkdir(parents=True)
    return cfg, owners


def test_format_remaining() -> None:
    assert leases.format_remaining(252) == "4m12s"
    assert leases.format_remaining(59) == "59s"
    assert leases.format_remaining(3 * 3600 + 7 * 60 + 5) == "3h07m"
    assert leases.format_remaining(2 * 86400 + 5 * 3600) == "2d05h"
    assert leases.format_remaining(0) == "expired"
    assert leases.format_remaining(-30) == "expired"


async def test_rows_carry_owner_expiry_and_vm_state(populated: tuple[Config, list[Keys]]) -> None:
    cfg, owners = populated
    rows = await leases.collect(cfg, now=NOW)
    assert [(r.vmid, r.port, r.tier, r.state, r.expires_in) for r in rows] == [
        (1001, 31001, "basic", "absent", 252), (1002, 31002, "basic", "stopped", -5)]
    assert rows[0].owner == owners[0].public_key().to_hex()
    assert rows[0].owner_npub == owners[0].public_key().to_bech32()
    assert rows[0].expires_at_rfc3339 == "2027-01-15T08:04:12+00:00"


async def test_table(populated: tuple[Config, list[Keys]]) -> None:
    cfg, owners = populated
    text = leases.render_table(await leases.collect(cfg, now=NOW))
    lines = text.splitlines()
    assert lines[0].split() == ["VMID", "OWNER", "TIER", "PORT", "EXPIRES", "IN", "STATE"]
    npub = owners[0].public_key().to_bech32()
    assert lines[1].split() == ["1001", f"{npub[:9]}…{npub[-4:]}", "basic", "31001", "4m12s", "absent"]
    assert lines[2].split()[-2:] == ["expired", "stopped"]
    assert len(lines) == 3  # the ended lease is not listed
    # columns line up
    assert lines[1].index("31001") == lines[0].index("PORT")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paygressd")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_command_json(populated: tuple[Config, list[Keys]], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg, owners = populated
    args = _parser().parse_args(["leases", "--config", str(tmp_path / "paygressd.toml"), "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["vmid"] for d in data] == [1001, 1002]
    first = data[0]
    assert set(first) == {"lease_id", "vmid", "owner", "owner_npub", "tier", "port", "expires_at",
                          "expires_at_rfc3339", "expires_in", "state"}
    assert first["owner"] == owners[0].public_key().to_hex()
    assert first["owner_npub"] == owners[0].public_key().to_bech32()
    assert first["expires_at"] == NOW + 252 and first["expires_at_rfc3339"] == "2027-01-15T08:04:12+00:00"
    assert first["state"] == "absent" and data[1]["state"] == "stopped"
    assert cfg.db_path.exists()


def test_command_table_and_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    args = _parser().parse_args(["leases", "--config", str(tmp_path / "paygressd.toml")])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert captured.out == "no active leases\n"
    assert "no lease database" in captured.err
    assert not cfg.db_path.exists()  # listing never creates the daemon's state

    Store(cfg.db_path).close()
    assert args.func(args) == 0
    assert capsys.readouterr().out == "no active leases\n"


@pytest.mark.vm
async def test_a_real_guest_shows_running_and_listing_leaves_it_alone(tmp_path: Path) -> None:
    """Boot the mini guest, list it: "starting" then "running"; the listing must not mute its serial console
    (that is the daemon's job, done over QMP): a line the guest writes to ttyS0 afterwards still arrives."""
    why = missing_reason("mini")
    if why is not None:
        pytest.skip(why)
    base = _config(tmp_path)
    kvm = kvm_section("mini", base.kvm.vm_root)
    cfg = base.model_copy(update={"kvm": kvm})
    backend = KvmBackend(kvm)
    try:
        await backend.start()
        r = backend.reserve(1000, 256, 1)
        await backend.create(VmRequest(r, "Mini7Guest4Pass9x", None))
        store = Store(cfg.db_path)
        store.insert_lease(r.vmid, r.port, Keys.generate().public_key().to_hex(), "basic", NOW, NOW + 600)
        store.close()

        seen: list[str] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 90
        while loop.time() < end:
            (row,) = await leases.collect(cfg, now=NOW)
            if not seen or seen[-1] != row.state:
                seen.append(row.state)
            if row.state == "running":
                break
            await asyncio.sleep(0.5)
        assert seen[-1] == "running", seen
        assert set(seen) <= {"starting", "running"}

        serial = VmPaths.for_vm(kvm.vm_root, r.vmid).serial
        proc = await asyncio.to_thread(ssh_run, "127.0.0.1", r.port, "root", "Mini7Guest4Pass9x",
                                       "echo still-unmuted > /dev/ttyS0", deadline=30)
        assert proc.returncode == 0, proc.stderr
        for _ in range(20):
            if b"still-unmuted" in serial.read_bytes():
                break
            await asyncio.sleep(0.1)
        assert b"still-unmuted" in serial.read_bytes()
    finally:
        await KvmBackend(kvm).reconcile([])  # removes every VM (and qemu) under vm_root

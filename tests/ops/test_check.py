"""``paygressd check``: every check passes on a good setup and fails (with a reason) on a broken one.

Real parts on loopback: a Nutshell mint, a nostr-sdk LocalRelay, qemu and the mini guest images, sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from paygressd.config import Tier, load_config
from paygressd.ops import check
from paygressd.ops.check import Status
from paygressd.ops.cli import register
from tests.support.daemon import DaemonConfig
from tests.support.guest import free_port_block, guest_dir, kvm_section, missing_reason
from tests.support.mint import MintProcess, free_port, run_mint
from tests.support.relay import TestRelay, local_relay

PVM_HOST = Path("/sys/module/kvm_pvm").exists()
module_loop = pytest.mark.asyncio(loop_scope="module")


def needs_mini() -> None:
    why = missing_reason("mini")
    if why is not None:
        pytest.skip(why)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mint(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MintProcess]:
    async with run_mint(tmp_path_factory.mktemp("mint")) as m:
        yield m


@pytest_asyncio.fixture(loop_scope="module")
async def relay() -> AsyncIterator[TestRelay]:
    async with local_relay() as r:
        yield r


@pytest.fixture
def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def _tier(disk_gb: int) -> Tier:
    return Tier(id="t", name="T", description="d", cpu_millicores=1000, memory_mb=512, rate_msats_per_sec=1,
                disk_gb=disk_gb)


# ------------------------------------------------------------------------------------------ config, key


def test_config_valid_and_invalid(tmp_path: Path) -> None:
    good = DaemonConfig(work=tmp_path / "p", relays=["ws://127.0.0.1:1"], mints=["http://127.0.0.1:1"]).write()
    r, cfg = check.check_config(good)
    assert r.status is Status.OK and cfg is not None
    assert r.line().startswith("ok   config: ")

    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("[kvm]\n", "[kvm]\nbase_imag = 'typo'\n"))
    r, cfg = check.check_config(bad)
    assert cfg is None and r.failed
    assert str(bad) in r.detail and "kvm.base_imag: unknown key" in r.detail
    assert r.line().startswith("FAIL config: ")


def test_key_file_permissions(tmp_path: Path) -> None:
    cfg = DaemonConfig(work=tmp_path, relays=["ws://x:1"], mints=["http://x:1"])
    cfg.write()
    key = tmp_path / "provider.key"
    r = check.check_key(key)
    assert r.status is Status.OK
    assert cfg.pubkey_hex in r.detail and "npub1" in r.detail

    key.chmod(0o644)
    r = check.check_key(key)
    assert r.failed and "0644" in r.detail and "chmod 600" in r.detail

    r = check.check_key(tmp_path / "missing.key")
    assert r.failed and "cannot read key file" in r.detail


# ------------------------------------------------------------------------------------------ qemu, accel


async def test_qemu_and_qemu_img() -> None:
    r = await check.check_qemu("qemu-system-x86_64")
    assert r.status is Status.OK and "QEMU emulator version" in r.detail
    r = await check.check_qemu("/nonexistent/qemu-system-x86_64")
    assert r.failed and "No such file" in r.detail

    r = await check.check_qemu_img("qemu-img")
    assert r.status is Status.OK and "qemu-img version" in r.detail
    r = await check.check_qemu_img("qemu-img-that-does-not-exist")
    assert r.failed and "qemu-utils" in r.detail


async def test_accel_auto_reports_what_really_boots(tmp_path: Path) -> None:
    needs_mini()
    r = await check.check_accel(kvm_section("mini", tmp_path / "vm", accel="auto"), kvm_timeout=4.0)
    if PVM_HOST:
        # /dev/kvm is there, but kvm_pvm does not run stock kernels: the operator must read "TCG fallback"
        assert r.status is Status.WARN, r.detail
        assert r.detail.startswith("TCG fallback (software emulation): KVM unusable here because ")
        assert "kvm_pvm" in r.detail and "booted under tcg" in r.detail
    else:
        assert r.status in (Status.OK, Status.WARN), r.detail
        assert r.detail.startswith("KVM" if r.status is Status.OK else "TCG fallback")


async def test_accel_forced_tcg_passes_and_forced_kvm_fails_where_kvm_hangs(tmp_path: Path) -> None:
    needs_mini()
    r = await check.check_accel(kvm_section("mini", tmp_path / "vm", accel="tcg"))
    assert r.status is Status.OK and r.detail.startswith("TCG (software emulation)")
    if PVM_HOST:
        r = await check.check_accel(kvm_section("mini", tmp_path / "vm", accel="kvm"), kvm_timeout=3.0)
        assert r.failed and "accel = \"kvm\" but KVM does not boot the guest here" in r.detail


async def test_accel_fails_when_qemu_cannot_run(tmp_path: Path) -> None:
    needs_mini()
    kvm = kvm_section("mini", tmp_path / "vm", accel="auto").model_copy(update={"qemu_binary": "/bin/false"})
    r = await check.check_accel(kvm, kvm_timeout=3.0)
    assert r.failed and "neither accelerator boots the guest" in r.detail


# ------------------------------------------------------------------------------------------ images


async def test_base_image_real_and_broken(tmp_path: Path) -> None:
    needs_mini()
    r = await check.check_base_image(guest_dir() / "base-mini.qcow2")
    assert r.status is Status.OK and "qcow2" in r.detail
    assert r.facts["virtual_size"] == 64 * 2**20

    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(os.urandom(64 * 1024))  # qemu-img calls this "raw"
    r = await check.check_base_image(garbage)
    assert r.failed and "no disk image" in r.detail

    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"QFI\xfb" + os.urandom(100))  # qcow2 magic, garbage header
    r = await check.check_base_image(broken)
    assert r.failed and "qemu-img cannot read it" in r.detail

    r = await check.check_base_image(tmp_path / "missing.qcow2")
    assert r.failed and "does not exist" in r.detail

    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(510) + b"\x55\xaa" + bytes(1 << 20))  # MBR boot signature: a plausible raw disk
    r = await check.check_base_image(raw)
    assert r.status is Status.OK and "raw" in r.detail


def test_kernel_and_initrd(tmp_path: Path) -> None:
    needs_mini()
    assert check.check_kernel(guest_dir() / "vmlinuz").status is Status.OK
    assert check.check_initrd(guest_dir() / "mini-initrd.gz").detail.endswith("gzip initramfs")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a kernel" * 100)
    assert "not a Linux kernel" in check.check_kernel(garbage).detail
    assert "not an initramfs" in check.check_initrd(garbage).detail
    assert check.check_kernel(tmp_path / "missing").failed
    assert check.check_initrd(tmp_path / "missing").failed


# ------------------------------------------------------------------------------------------ host


@pytest.fixture
def port_block() -> Iterator[tuple[int, int]]:
    yield free_port_block(3)


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


def test_ports_free_partly_taken_all_taken(port_block: tuple[int, int]) -> None:
    lo, hi = port_block
    r = check.check_ports("127.0.0.1", port_block)
    assert r.status is Status.OK and "all 3" in r.detail

    held = _listen(lo + 1)
    try:
        r = check.check_ports("127.0.0.1", port_block)
        assert r.status is Status.WARN and f"taken: {lo + 1} " in r.detail and "2 of 3" in r.detail
    finally:
        held.close()

    held_all = [_listen(p) for p in range(lo, hi + 1)]
    try:
        r = check.check_ports("127.0.0.1", port_block)
        assert r.failed and "none of 3" in r.detail and "Address already in use" in r.detail
    finally:
        for s in held_all:
            s.close()


def test_ports_on_an_address_this_host_does_not_have(port_block: tuple[int, int]) -> None:
    r = check.check_ports("192.0.2.1", port_block)  # TEST-NET-1: never a local address
    assert r.failed and "Cannot assign requested address" in r.detail


def test_disk_space(tmp_path: Path) -> None:
    vm_root = tmp_path / "not" / "created" / "yet"
    r = check.check_disk(vm_root, [_tier(1), _tier(2)])
    assert r.status is Status.OK and "needs 2 GB per lease" in r.detail
    assert not vm_root.exists()

    r = check.check_disk(vm_root, [_tier(10**7)])  # 10 PB
    assert r.failed and "not enough for one lease" in r.detail
    # an overlay is never smaller than the base image it sits on
    r = check.check_disk(vm_root, [_tier(1)], base_virtual_bytes=10**7 * 2**30)
    assert r.failed and f"needs {10**7} GB" in r.detail


# ------------------------------------------------------------------------------------------ network


@module_loop
async def test_relay_reachable(relay: TestRelay) -> None:
    r = await check.check_relay(relay.url)
    assert r.status is Status.OK and "answered EOSE" in r.detail
    assert r.name == f"relay {relay.url}"


@module_loop
async def test_relay_unreachable_or_not_a_relay(closed_port: int, mint: MintProcess) -> None:
    r = await check.check_relay(f"ws://127.0.0.1:{closed_port}")
    assert r.failed and "Connection refused" in r.detail

    # an HTTP server that is not a relay
    r = await check.check_relay(f"ws://127.0.0.1:{mint.port}")
    assert r.failed and "no WebSocket upgrade" in r.detail

    # accepts, never answers
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        r = await check.check_relay(f"ws://127.0.0.1:{port}", within=0.5)
        assert r.failed and "no answer within 0.5 s" in r.detail
        assert time.monotonic() - t0 < 3
    finally:
        silent.close()


@module_loop
async def test_mint_reachable_with_keysets(mint: MintProcess) -> None:
    r = await check.check_mint(mint.url)
    assert r.status is Status.OK and "active keyset(s) (sat)" in r.detail
    assert abs(r.facts["clock_offset"]) < 5  # the mint's Date header, same host clock
    assert mint.proxy is not None and "/v1/keysets" in mint.proxy.paths


async def _http_server(status: str, body: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@module_loop
async def test_mint_unreachable_or_without_keysets(closed_port: int, relay: TestRelay) -> None:
    r = await check.check_mint(f"http://127.0.0.1:{closed_port}")
    assert r.failed and "cannot connect: Connection refused" in r.detail

    for status, body, expect in [
        ("200 OK", b'{"keysets": []}', "no active keyset"),
        ("200 OK", b"<html>hello</html>", "did not return a NUT-02 keyset list"),
        ("404 Not Found", b"", "answered HTTP 404"),
    ]:
        server = await _http_server(status, body)
        try:
            r = await check.check_mint(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
            assert r.failed and expect in r.detail, r.detail
        finally:
            server.close()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for a throw-away self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def _tls_proxy(ctx: ssl.SSLContext, upstream_port: int) -> asyncio.Server:
    """TLS in front of a loopback port, as nginx is in front of most relays and mints."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


@module_loop
async def test_wss_relay_and_https_mint(relay: TestRelay, mint: MintProcess,
                                        tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    relay_tls = await _tls_proxy(server_ctx, relay.port)
    mint_tls = await _tls_proxy(server_ctx, mint.port)
    try:
        wss = f"wss://127.0.0.1:{relay_tls.sockets[0].getsockname()[1]}"
        https = f"https://127.0.0.1:{mint_tls.sockets[0].getsockname()[1]}"
        r = await check.check_relay(wss, tls=client_ctx)
        assert r.status is Status.OK and "answered EOSE" in r.detail, r.detail
        r = await check.check_mint(https, tls=client_ctx)
        assert r.status is Status.OK and "active keyset(s) (sat)" in r.detail, r.detail
        # the system trust store does not know this certificate: both say so in words
        r = await check.check_relay(wss)
        assert r.failed and "TLS certificate not accepted: self-signed certificate" in r.detail, r.detail
        r = await check.check_mint(https)
        assert r.failed and "TLS certificate not accepted: self-signed certificate" in r.detail, r.detail
    finally:
        relay_tls.close()
        mint_tls.close()


def test_clock() -> None:
    now = time.time()
    assert check.check_clock([("mint a", 1.2), ("relay b", -0.5)], now).status is Status.OK
    r = check.check_clock([("mint a", 45.0)], now)
    assert r.status is Status.WARN and "behind" in r.detail and "mint a" in r.detail
    r = check.check_clock([("mint a", -120.0), ("mint b", -118.0), ("relay c", 0.0)], now)
    assert r.failed and "ahead of 3 server(s)" in r.detail
    assert check.check_clock([], now).status is Status.WARN
    r = check.check_clock([("mint a", 0.0)], datetime(2001, 1, 1, tzinfo=UTC).timestamp())
    assert r.failed and "before this release" in r.detail


def test_metrics_check(tmp_path: Path) -> None:
    path = DaemonConfig(work=tmp_path, relays=["ws://x:1"], mints=["http://x:1"]).write()
    cfg = load_config(path)
    assert check.check_metrics(cfg) is None  # off by default: no line at all
    port = free_port()
    on = cfg.model_copy(update={"metrics": cfg.metrics.model_copy(
        update={"enabled": True, "listen": f"127.0.0.1:{port}"})})
    r = check.check_metrics(on)
    assert r is not None and r.status is Status.OK
    public = on.model_copy(update={"metrics": on.metrics.model_copy(update={"listen": f"0.0.0.0:{port}"})})
    r = check.check_metrics(public)
    assert r is not None and r.failed and "not a loopback address" in r.detail


# ------------------------------------------------------------------------------------------ the command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paygressd")
    register(parser.add_subparsers(dest="command"))
    return parser


def _run_cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


@module_loop
async def test_command_good_setup_exits_0(tmp_path: Path, relay: TestRelay, mint: MintProcess,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    needs_mini()
    path = DaemonConfig(work=tmp_path, relays=[relay.url], mints=[mint.url], accel="tcg").write()
    # the command runs its own event loop (asyncio.run), so it gets a thread; relay and mint serve meanwhile
    rc = await asyncio.to_thread(_run_cli, ["check", "--config", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    names = [line.split(":", 1)[0] for line in out.splitlines()]
    assert names == ["ok   config", "ok   key", "ok   qemu", "ok   qemu-img", "ok   base image", "ok   kernel",
                     "ok   initrd", "ok   ports", "ok   disk", f"ok   relay {relay.url.split(':')[0]}",
                     f"ok   mint {mint.url.split(':')[0]}", "ok   clock", "ok   accel"]


@module_loop
async def test_command_broken_setup_exits_1(tmp_path: Path, relay: TestRelay, closed_port: int,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    needs_mini()
    cfg = DaemonConfig(work=tmp_path, relays=[relay.url, f"ws://127.0.0.1:{closed_port}"],
                       mints=[f"http://127.0.0.1:{closed_port}"], accel="tcg")
    path = cfg.write()
    (tmp_path / "provider.key").chmod(0o644)
    rc = await asyncio.to_thread(_run_cli, ["check", "--config", str(path), "--timeout", "2"])
    captured = capsys.readouterr()
    assert rc == 1
    fails = [line for line in captured.out.splitlines() if line.startswith("FAIL")]
    assert [f.split(":", 1)[0] for f in fails] == ["FAIL key", "FAIL relay ws", "FAIL mint http"]
    assert f"ok   relay {relay.url}" in captured.out  # the good relay is still reported good
    assert "3 check(s) failed" in captured.err


def test_command_invalid_config_stops_at_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[provider]\npublic_ip = 1\n")
    rc = _run_cli(["check", "--config", str(bad)])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.startswith(f"FAIL config: {bad}: provider.public_ip")
    assert "key:" not in out  # nothing else is checked against a config that does not load


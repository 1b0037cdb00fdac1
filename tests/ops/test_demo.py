"""``paygressd demo`` runs a whole rental with real parts and leaves nothing behind, also when interrupted.

The demo runs as a subprocess exactly as a user would start it (through ``paygressd.demo.main``, so the test
does not depend on the subcommand being wired into the main CLI); it boots a real mini guest under qemu.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from paygressd.vm import host
from tests.support.guest import REPO, guest_dir, missing_reason

pytestmark = [pytest.mark.vm, pytest.mark.mint, pytest.mark.relay]

DEMO = "import sys; from paygressd.demo import main; sys.exit(main(sys.argv[1:]))"
STEP = r"^\[\s*\d+\.\ds\] "


@pytest.fixture(autouse=True)
def _needs_guest() -> None:
    why = missing_reason("mini")
    if why is not None:
        pytest.skip(why)


def _leftovers(work: Path) -> list[str]:
    """Processes whose command line or working directory is inside the demo's work dir (mint, daemon, qemu)."""
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(work) in cmdline or cwd.startswith(str(work)):
            found.append(f"{entry.name}: {cmdline[:200]} (cwd {cwd})")
    return found


def _work_dir(stdout: str) -> Path:
    m = re.search(STEP + r"setup: work dir (\S+)$", stdout, re.M)
    assert m, stdout
    return Path(m.group(1))


async def _start() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", DEMO, "--images", str(guest_dir()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,  # import this checkout
    )


async def test_demo_rents_a_vm_end_to_end_and_cleans_up() -> None:
    proc = await _start()
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 300)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"

    for pattern in [
        r"paygressd: accel = (kvm|tcg) \(",
        r"offer: listed: paygressd-demo \([0-9a-f]{16}…\), online",
        r"spawn: access details received \(container-\d+, port \d+\)",
        r"ssh: logged in as root",
        r"topup: paid 10 sat more: Lease extended by 10s \(10000 msats @ 1000 msats/sec\)",
        r"status: Running, \d+ s left",
        r"expired: container-\d+ is gone: qemu stopped, its disk removed, port \d+ closed",
        r"expired: status says Expired, 0 s left",
        r"cleanup: paygressd stopped, mint stopped, relay shut down, no VM left, work dir removed",
    ]:
        assert re.search(STEP + pattern, out, re.M), f"missing {pattern!r} in:\n{out}"
    # The VM's own answer to `uname -a`, printed under the ssh step.
    assert re.search(r"^\s+\| Linux paygress-\d+ \S+ .* x86_64", out, re.M), out
    # The steps come in the order of the story.
    order = [out.index(f"] {s}:") for s in ("offer", "pay", "spawn", "ssh", "topup", "status", "expired")]
    assert order == sorted(order), out

    work = _work_dir(out)
    assert not work.exists(), f"{work} left behind"
    assert _leftovers(work) == []
    assert host.scan_qemus(work / "provider" / "state" / "vm") == {}


async def test_ctrl_c_during_spawn_stops_everything() -> None:
    proc = await _start()
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []

    async def until_booting() -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            seen.append(line)
            if "spawn: qemu started" in line:
                return
        raise AssertionError("demo ended before the VM started:\n" + "".join(seen))

    await asyncio.wait_for(until_booting(), 180)
    work = _work_dir("".join(seen))
    vm_root = work / "provider" / "state" / "vm"
    assert host.scan_qemus(vm_root), "the demo said qemu started, but no qemu runs under its vm_root"

    proc.send_signal(signal.SIGINT)
    rest_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = "".join(seen) + rest_b.decode(), err_b.decode()
    assert proc.returncode == 130, f"stdout:\n{out}\nstderr:\n{err}"
    assert "paygressd demo: interrupted by SIGINT; stopping everything the demo started" in err
    # paygressd leaves a paid VM running when it stops; the demo's own sweep must remove it.
    assert re.search(STEP + r"cleanup: paygressd stopped, mint stopped, relay shut down, 1 leftover VM\(s\) removed,"
                     r" work dir removed$", out, re.M), out
    assert "done:" not in out
    assert host.scan_qemus(vm_root) == {}
    assert _leftovers(work) == []
    assert not work.exists()


async def test_sigterm_while_paygressd_starts_leaves_nothing() -> None:
    """Stopped while paygressd is still starting (probing the accelerator with a throwaway qemu)."""
    proc = await _start()
    assert proc.stdout is not None
    seen: list[str] = []
    while line := (await asyncio.wait_for(proc.stdout.readline(), 120)).decode():
        seen.append(line)
        if "] mint: " in line:
            break
    work = _work_dir("".join(seen))
    config = work / "provider" / "paygressd.toml"
    for _ in range(100):  # until paygressd has been launched
        if config.exists():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = "".join(seen) + rest_b.decode(), err_b.decode()
    assert proc.returncode == 143, f"stdout:\n{out}\nstderr:\n{err}"
    assert "paygressd demo: interrupted by SIGTERM" in err
    assert re.search(STEP + r"cleanup: paygressd stopped, mint stopped, relay shut down, .*work dir removed$", out,
                     re.M), out
    assert "offer:" not in out
    assert _leftovers(work) == []
    assert not work.exists()

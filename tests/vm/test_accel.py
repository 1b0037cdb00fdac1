"""Acceleration: "auto" must find out whether KVM really boots a guest, and remember the answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from paygressd.vm import accel
from paygressd.vm.accel import CACHE_NAME, check_accel, detect_accel, kvm_device_usable, probe
from tests.support.guest import kvm_section, missing_reason

pytestmark = pytest.mark.vm
PVM_HOST = Path("/sys/module/kvm_pvm").exists()


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    why = missing_reason("mini")
    if why:
        pytest.skip(why)
    return tmp_path


async def test_probe_sees_the_kernel_run_under_tcg(mini: Path) -> None:
    ok, why = await probe("qemu-system-x86_64", "tcg", kvm_section("mini", mini / "vm"))
    assert ok, why
    assert "booted under tcg" in why


async def test_probe_reports_a_qemu_that_cannot_start(mini: Path) -> None:
    cfg = kvm_section("mini", mini / "vm")
    ok, why = await probe("qemu-system-x86_64", "no-such-accel", cfg)
    assert not ok and "exited with" in why


async def test_config_tcg_is_obeyed_without_probing(mini: Path) -> None:
    v = await detect_accel(kvm_section("mini", mini / "vm", accel="tcg"), mini)
    assert (v.accel, v.kvm_works) == ("tcg", None)
    assert not (mini / CACHE_NAME).exists()


async def test_auto_on_this_host_and_the_verdict_is_cached(mini: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the probe kernel panics after ~2 s under TCG and well under 1 s with working KVM; 8 s keeps the
    # test short on hosts where KVM hangs (the production deadline is 20 s)
    monkeypatch.setattr(accel, "PROBE_TIMEOUT_KERNEL", 8.0)
    cfg = kvm_section("mini", mini / "vm", accel="auto")
    v = await detect_accel(cfg, mini)
    usable, _ = kvm_device_usable()
    if PVM_HOST:
        # PVM: /dev/kvm works, stock guest kernels hang in the decompressor -> must fall back to TCG
        assert (v.accel, v.kvm_works) == ("tcg", False), v.reason
        assert "within" in v.reason
    elif not usable:
        assert (v.accel, v.kvm_works) == ("tcg", False)
    else:
        assert v.accel == ("kvm" if v.kvm_works else "tcg")
    if usable:
        again = await detect_accel(cfg, mini)
        assert again.cached and (again.accel, again.kvm_works) == (v.accel, v.kvm_works)
        assert (mini / CACHE_NAME).is_file()


async def test_check_reports_both_accelerators(mini: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_TIMEOUT_KERNEL", 8.0)
    results = await check_accel(kvm_section("mini", mini / "vm", accel="auto"))
    assert [m.split(":")[0] for _, m in results] == ["kvm", "tcg"]
    assert results[1][0], results[1][1]  # TCG always works where qemu is installed
    if PVM_HOST:
        assert not results[0][0]

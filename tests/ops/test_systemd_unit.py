"""The shipped systemd unit: hardening directives, systemd's own exposure score, and `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.systemd_unit import parse_unit

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "paygressd.service"
MAX_EXPOSURE = 3.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd; deploy/setup-dev.sh does)",
)


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, list[str]], key: str) -> str:
    values = unit.get(f"Service.{key}")
    assert values, f"{key}= missing from the unit"
    return values[-1]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("User", "paygressd"),
        ("Group", "paygressd"),
        ("SupplementaryGroups", "kvm"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/paygressd"),
        ("StateDirectory", "paygressd"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallArchitectures", "native"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("CapabilityBoundingSet", ""),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/kvm rw"),
        ("LoadCredential", "nostr.key:/etc/paygressd/nostr.key"),
        # Paid VMs are qemu children: a daemon restart must not kill them.
        ("KillMode", "process"),
        ("Restart", "on-failure"),
        ("Type", "simple"),
        ("ExecStart", "/opt/paygressd/venv/bin/paygressd run --config /etc/paygressd/config.toml"),
    ],
)
def test_directive(unit: dict[str, list[str]], key: str, value: str) -> None:
    assert one(unit, key) == value


def test_syscall_filter_lets_qemu_install_its_own_sandbox(unit: dict[str, list[str]]) -> None:
    # qemu -sandbox on needs seccomp(2); @system-service alone makes qemu refuse to start.
    allowed = " ".join(unit["Service.SystemCallFilter"]).split()
    assert "@system-service" in allowed and "seccomp" in allowed
    assert not any(v.startswith("~") for v in unit["Service.SystemCallFilter"]), "an allow list only"


def test_no_private_devices_it_would_hide_dev_kvm(unit: dict[str, list[str]]) -> None:
    assert "Service.PrivateDevices" not in unit


def test_no_memory_deny_write_execute_qemu_tcg_needs_wx(unit: dict[str, list[str]]) -> None:
    # qemu inherits the daemon's seccomp filter; its TCG JIT maps W+X memory.
    assert "Service.MemoryDenyWriteExecute" not in unit
    text = UNIT.read_text()
    assert re.search(r"^#.*MemoryDenyWriteExecute.*\n#.*TCG.*W\+X", text, re.M), "the relaxation needs its reason"


def test_no_private_users_it_would_unmap_the_kvm_group(unit: dict[str, list[str]]) -> None:
    assert "Service.PrivateUsers" not in unit


def test_installs_into_multi_user(unit: dict[str, list[str]]) -> None:
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def exposure(unit_path: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, f"no exposure figure in systemd-analyze output:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(1))


@needs_analyze
def test_exposure_at_most_3(tmp_path: Path) -> None:
    level = exposure(UNIT)
    assert level <= MAX_EXPOSURE, f"systemd-analyze security: exposure {level} > {MAX_EXPOSURE}"


@needs_analyze
def test_exposure_figure_reacts_to_hardening(tmp_path: Path) -> None:
    # The parse is real: stripping the sandbox must make systemd score the unit far worse.
    bare = tmp_path / "paygressd.service"
    keep = ("ExecStart=", "User=", "Group=", "[", "Type=")
    bare.write_text("\n".join(ln for ln in UNIT.read_text().splitlines() if ln.startswith(keep)) + "\n")
    assert exposure(bare) > exposure(UNIT) + 3.0


def _verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_analyze
def test_verify_clean_apart_from_the_missing_binary() -> None:
    proc = _verify(UNIT)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    missing_binary = "Command /opt/paygressd/venv/bin/paygressd is not executable"
    unexpected = [ln for ln in lines if missing_binary not in ln]
    assert unexpected == [], "systemd-analyze verify complained:\n" + "\n".join(unexpected)


@needs_analyze
def test_verify_fully_clean_with_an_existing_binary(tmp_path: Path) -> None:
    # Same unit, ExecStart pointed at a binary that exists here: verify must then say nothing at all.
    copy = tmp_path / "paygressd.service"
    copy.write_text(UNIT.read_text().replace("/opt/paygressd/venv/bin/paygressd", shutil.which("true") or "/bin/true"))
    proc = _verify(copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""

"""deploy/install.sh into a temporary root: what an operator gets on disk, and that a re-run changes nothing.

Not covered here (needs a real host): apt-get, and enabling/starting the unit under systemd as PID 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from paygressd.config import load_config
from paygressd.core.keys import load_keys
from tests.support.systemd_unit import parse_unit

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
UNIT = REPO / "systemd" / "paygressd.service"
TEMPLATE = REPO / "config.example.toml"
# The venv running these tests has paygressd installed: link it instead of pip-installing (fast path).
TEST_VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root (it chowns to the service user)")


def install(root: Path, *args: str, src: Path = REPO, venv: bool = True) -> str:
    cmd = ["bash", str(src / "deploy" / "install.sh"), "--root", str(root)]
    if venv:
        cmd += ["--venv-from", str(TEST_VENV)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"install.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stderr


def failing_install(root: Path, *args: str) -> str:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0, "install.sh should have refused"
    return proc.stderr


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root with its type, mode, owner, mtime and content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                detail: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                detail = None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, detail)
    return out


def account(root: Path, db: str, name: str) -> list[str]:
    for line in (root / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {db}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("root")
    return root, install(root, "--skip-image")


def test_second_run_changes_nothing(installed: tuple[Path, str]) -> None:
    root, first = installed
    assert "done: 0 change(s)" not in first
    before = snapshot(root)
    second = install(root, "--skip-image")
    assert "done: 0 change(s)" in second, second
    assert snapshot(root) == before


def test_service_user_in_kvm_group(installed: tuple[Path, str]) -> None:
    root, _ = installed
    user = account(root, "passwd", "paygressd")
    assert user[5] == "/var/lib/paygressd"
    assert user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000, "a system account"
    assert "paygressd" in account(root, "group", "kvm")[3].split(",")
    # No password: nobody logs in as the service user.
    assert account(root, "shadow", "paygressd")[1].startswith("!")


def test_directories_owned_and_closed(installed: tuple[Path, str]) -> None:
    root, _ = installed
    uid = int(account(root, "passwd", "paygressd")[2])
    gid = int(account(root, "group", "paygressd")[2])
    expected = {
        "etc/paygressd": (0o750, 0, gid),
        "var/lib/paygressd": (0o750, uid, gid),
        "var/lib/paygressd/vm": (0o750, uid, gid),
        "var/lib/paygressd/images": (0o750, 0, gid),
    }
    for rel, (mode, owner, group) in expected.items():
        st = (root / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, owner, group), rel


def test_key_is_root_only_and_loads(installed: tuple[Path, str]) -> None:
    root, log = installed
    key = root / "etc/paygressd/nostr.key"
    st = key.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    keys = load_keys(key)
    # The operator sees the npub (to tell consumers) in the install log.
    assert keys.public_key().to_bech32() in log


def test_config_validates_and_points_at_the_credential(installed: tuple[Path, str]) -> None:
    root, _ = installed
    path = root / "etc/paygressd/config.toml"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == int(account(root, "group", "paygressd")[2]), "the daemon reads it through its group"
    cfg = load_config(path)
    unit = parse_unit(UNIT.read_text())
    cred_name = unit["Service.LoadCredential"][0].split(":", 1)[0]
    assert cfg.provider.key_file == Path("/run/credentials") / UNIT.name / cred_name
    assert cfg.provider.state_dir == Path("/var/lib/paygressd")
    assert "/var/lib/paygressd" in unit["Service.ReadWritePaths"]
    assert cfg.kvm.vm_root == Path("/var/lib/paygressd/vm")
    assert cfg.kvm.base_image == Path("/var/lib/paygressd/images/base.qcow2")
    assert cfg.kvm.kernel == Path("/var/lib/paygressd/images/vmlinuz")
    assert cfg.kvm.initrd == Path("/var/lib/paygressd/images/initrd.img")
    assert cfg.kvm.cmdline is not None and "root=/dev/vda" in cfg.kvm.cmdline
    # The rest is the template's, untouched.
    template = load_config(TEMPLATE)
    assert cfg.tier == template.tier
    assert cfg.nostr == template.nostr


def test_unit_and_exec_path_land(installed: tuple[Path, str]) -> None:
    root, _ = installed
    landed = root / "etc/systemd/system/paygressd.service"
    assert landed.read_bytes() == UNIT.read_bytes()
    assert stat.S_IMODE(landed.stat().st_mode) == 0o644
    unit = parse_unit(landed.read_text())
    exe, *args = unit["Service.ExecStart"][0].split()
    assert os.access(root / exe.lstrip("/"), os.X_OK), f"{exe} missing in the installed tree"
    assert (root / args[args.index("--config") + 1].lstrip("/")).is_file()
    assert (root / "etc/sysusers.d/paygressd.conf").is_file()
    assert (root / "opt/paygressd/doc/operations.md").read_bytes() == (REPO / "docs/operations.md").read_bytes()


def test_operator_edits_and_key_survive_a_rerun(tmp_path: Path) -> None:
    install(tmp_path, "--skip-image")
    config = tmp_path / "etc/paygressd/config.toml"
    key = tmp_path / "etc/paygressd/nostr.key"
    ip = load_config(config).provider.public_ip
    edited = config.read_text().replace(f'public_ip = "{ip}"', 'public_ip = "192.168.77.7"')
    config.write_text(edited)
    secret = key.read_bytes()
    key.chmod(0o644)  # an operator's slip: the next run must close it again, not replace the key
    log = install(tmp_path, "--skip-image")
    assert config.read_text() == edited
    assert load_config(config).provider.public_ip == "192.168.77.7"
    assert key.read_bytes() == secret
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "done: 1 change(s)" in log


def test_example_public_ip_is_flagged(installed: tuple[Path, str]) -> None:
    # The example config's address (a documentation range) would be published to consumers: say so.
    _, log = installed
    assert "is an example address" in log


def test_public_ip_and_mini_flavour(tmp_path: Path) -> None:
    log = install(tmp_path, "--skip-image", "--flavour", "mini", "--public-ip", "192.168.77.44")
    assert "example address" not in log
    cfg = load_config(tmp_path / "etc/paygressd/config.toml")
    assert cfg.provider.public_ip == "192.168.77.44"
    assert cfg.kvm.base_image == Path("/var/lib/paygressd/images/base-mini.qcow2")
    assert cfg.kvm.initrd == Path("/var/lib/paygressd/images/mini-initrd.gz")
    assert cfg.kvm.kernel == Path("/var/lib/paygressd/images/vmlinuz")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")
def test_import_cloud_image(tmp_path: Path) -> None:
    # An operator's raw disk image becomes the qcow2 base; it boots through its own bootloader, so no kernel.
    raw = tmp_path / "cloud.img"
    raw.write_bytes(b"\x55\xaa" * 256 + bytes(1024 * 1024 - 512))
    root = tmp_path / "root"
    install(root, "--image", str(raw))
    base = root / "var/lib/paygressd/images/base.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(base)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == raw.stat().st_size
    assert stat.S_IMODE(base.stat().st_mode) == 0o440, "the base image is never written"
    converted = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(base)], capture_output=True, text=True
    )
    assert converted.returncode == 0, converted.stdout + converted.stderr
    cfg = load_config(root / "etc/paygressd/config.toml")
    assert cfg.kvm.base_image == Path("/var/lib/paygressd/images/base.qcow2")
    assert (cfg.kvm.kernel, cfg.kvm.initrd, cfg.kvm.cmdline) == (None, None, None)
    assert "done: 0 change(s)" in install(root, "--image", str(raw))


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    log = install(root, "--skip-image", "--dry-run")
    assert list(root.iterdir()) == []
    assert "would: generate the provider key" in log
    assert "would: install" in log


def test_refuses_missing_image_and_template(tmp_path: Path) -> None:
    err = failing_install(tmp_path / "a", "--venv-from", str(TEST_VENV), "--image", str(tmp_path / "nope.img"))
    assert "no such file" in err
    proc = subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--root",
            str(tmp_path / "b"),
            "--venv-from",
            str(TEST_VENV),
            "--skip-image",
            "--config-template",
            str(tmp_path / "missing.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "no config template" in proc.stderr
    assert not (tmp_path / "b/etc/paygressd/config.toml").exists()


def copy_source(dst: Path) -> Path:
    dst.mkdir()
    for name in ("pyproject.toml", "README.md", "config.example.toml"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, dst / name)
    for sub in ("paygressd", "deploy", "systemd", "docs"):
        shutil.copytree(REPO / sub, dst / sub, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def test_pip_install_into_a_fresh_venv_and_upgrade(tmp_path: Path) -> None:
    # The real path: python3 -m venv + pip install from the source tree (about 30 s from the local mirror).
    src = copy_source(tmp_path / "src")
    root = tmp_path / "root"
    install(root, "--skip-image", src=src, venv=False)
    venv = root / "opt/paygressd/venv"
    assert not venv.is_symlink()
    version = subprocess.run([str(venv / "bin/paygressd"), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("paygressd ")
    assert not (src / "build").exists(), "pip must not build inside the source tree"
    assert "done: 0 change(s)" in install(root, "--skip-image", src=src, venv=False)

    # Upgrade: new code with the same version number still lands; config and key stay as they were.
    kept = {p: (root / p).read_bytes() for p in ("etc/paygressd/config.toml", "etc/paygressd/nostr.key")}
    marker = "UPGRADE_MARKER = 1\n"
    with (src / "paygressd/__init__.py").open("a") as fh:
        fh.write(marker)
    log = install(root, "--skip-image", src=src, venv=False)
    assert "pip install paygressd" in log
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c", "import paygressd; print(paygressd.UPGRADE_MARKER)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repo: its paygressd/ would shadow the installed package
    )
    assert probe.stdout.strip() == "1", probe.stderr
    assert {p: (root / p).read_bytes() for p in kept} == kept


def test_dry_run_is_the_operator_check(tmp_path: Path) -> None:
    # `install.sh --dry-run` on an installed system validates config and key without changing anything.
    install(tmp_path, "--skip-image")
    assert "config ok" in install(tmp_path, "--skip-image", "--dry-run")
    config = tmp_path / "etc/paygressd/config.toml"
    config.write_text(config.read_text() + "\n[bogus]\nx = 1\n")
    before = snapshot(tmp_path)
    err = failing_install(tmp_path, "--venv-from", str(TEST_VENV), "--skip-image", "--dry-run")
    assert "bogus: unknown key" in err
    assert snapshot(tmp_path) == before

"""The operator's first contact: `paygressd keygen`, `--version`, `--help`, and `run` refusing a broken config."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from nostr_sdk import Keys

from paygressd import __version__
from paygressd.cli import main

REPO = Path(__file__).resolve().parents[1]

BROKEN = """
[provider]
public_ip = "203.0.113.7"
key_file = "provider.key"
state_dir = "state"

[nostr]
relays = ["ws://127.0.0.1:7777"]

[cashu]
mints = ["http://127.0.0.1:3338"]

[kvm]
base_image = "base.qcow2"
vm_root = "vm"

[[tier]]
id = "basic"
name = "Basic"
description = "1 vCPU"
cpu_millicores = 1000
memory_mb = 1024
rate_msats_per_sec = 0
"""


def _printed_keys(out: str) -> tuple[str, str]:
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    return fields["npub"].strip(), fields["hex"].strip()


# ---------------------------------------------------------------- keygen


def test_keygen_writes_0600_and_prints_the_matching_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "provider.key"
    assert main(["keygen", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    keys = Keys.parse(out.read_text().strip())
    assert out.read_text().startswith("nsec1")
    npub, hexkey = _printed_keys(capsys.readouterr().out)
    assert npub == keys.public_key().to_bech32()
    assert hexkey == keys.public_key().to_hex()
    assert len(hexkey) == 64 and hexkey == hexkey.lower()
    # The secret itself is never printed.
    assert keys.secret_key().to_bech32() not in capsys.readouterr().out


def test_keygen_gives_a_new_key_each_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["keygen", "--out", str(tmp_path / "a")])
    main(["keygen", "--out", str(tmp_path / "b")])
    assert (tmp_path / "a").read_text() != (tmp_path / "b").read_text()


def test_keygen_mode_ignores_a_permissive_umask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0)
    try:
        assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "provider.key"
    assert main(["keygen", "--out", str(out)]) == 0
    before = out.read_text()
    capsys.readouterr()
    assert main(["keygen", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"{out} exists; refusing to overwrite a key" in captured.err
    assert captured.out == ""
    assert out.read_text() == before


def test_keygen_does_not_follow_a_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "elsewhere.key"
    link = tmp_path / "provider.key"
    link.symlink_to(target)  # dangling: writing through it would create a key where nobody looks
    assert main(["keygen", "--out", str(link)]) == 1
    assert not target.exists()
    assert "refusing to overwrite" in capsys.readouterr().err


def test_keygen_into_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "no" / "such" / "dir" / "k"
    assert main(["keygen", "--out", str(out)]) == 1
    assert f"cannot write {out}: No such file or directory" in capsys.readouterr().err


def test_keygen_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["keygen"])
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


# ---------------------------------------------------------------- --version, --help


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"paygressd {__version__}"


def test_help_lists_run_and_keygen(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    # Each subcommand is listed on its own line with its one-line help.
    assert re.search(r"^\s+run\s+\S", out, re.MULTILINE), out
    assert re.search(r"^\s+keygen\s+\S", out, re.MULTILINE), out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "keygen" in capsys.readouterr().out


def test_run_help_mentions_the_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "PAYGRESSD_CONFIG" in capsys.readouterr().out


# ---------------------------------------------------------------- run refuses a broken config


def test_run_with_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "paygressd.toml"
    conf.write_text(BROKEN)
    assert main(["run", "--config", str(conf)]) != 0
    err = capsys.readouterr().err
    assert f"{conf}: tier[0].rate_msats_per_sec: Input should be greater than or equal to 1" in err


def test_run_with_broken_config_from_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "from-env.toml"
    conf.write_text(BROKEN.replace('public_ip = "203.0.113.7"\n', ""))
    monkeypatch.setenv("PAYGRESSD_CONFIG", str(conf))
    assert main(["run"]) != 0
    err = capsys.readouterr().err
    assert f"{conf}: provider.public_ip: required key is missing" in err


def test_run_without_any_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYGRESSD_CONFIG", raising=False)
    assert main(["run"]) != 0
    assert "no config file: pass --config FILE or set PAYGRESSD_CONFIG" in capsys.readouterr().err


def test_run_refuses_a_group_readable_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "paygressd.toml"
    conf.write_text(BROKEN.replace("rate_msats_per_sec = 0", "rate_msats_per_sec = 50"))
    assert main(["keygen", "--out", str(tmp_path / "provider.key")]) == 0
    (tmp_path / "provider.key").chmod(0o640)
    capsys.readouterr()
    assert main(["run", "--config", str(conf)]) != 0
    err = capsys.readouterr().err
    assert f"{tmp_path.resolve() / 'provider.key'}: key file mode is 0640" in err


def test_real_process_exits_nonzero_with_the_message(tmp_path: Path) -> None:
    conf = tmp_path / "paygressd.toml"
    conf.write_text(BROKEN)
    env = {k: v for k, v in os.environ.items() if k != "PAYGRESSD_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "paygressd", "run", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert f"paygressd: {conf}: tier[0].rate_msats_per_sec: " in proc.stderr
    assert proc.stdout == ""


def test_installed_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "paygressd"
    if not script.exists():
        pytest.skip("paygressd console script not installed in this environment")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"paygressd {__version__}"
    out = tmp_path / "k"
    proc = subprocess.run([str(script), "keygen", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert _printed_keys(proc.stdout)[1] == Keys.parse(out.read_text().strip()).public_key().to_hex()

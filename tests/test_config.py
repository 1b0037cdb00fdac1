"""Config loading: each class of operator mistake gives one message naming the file, the key and the problem."""

from __future__ import annotations

import argparse
import copy
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nostr_sdk import Keys
from pydantic import BaseModel

from paygressd.cli import load_checked_config
from paygressd.config import (
    ENV_CONFIG,
    CashuSection,
    Config,
    ConfigError,
    KvmSection,
    MetricsSection,
    NostrSection,
    ProviderSection,
    Tier,
    config_path,
    load_config,
)
from paygressd.core.keys import KeyFileError, load_keys

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"

BASE: dict[str, Any] = {
    "provider": {"public_ip": "203.0.113.7", "key_file": "provider.key", "state_dir": "state"},
    "nostr": {"relays": ["ws://127.0.0.1:7777"]},
    "cashu": {"mints": ["http://127.0.0.1:3338"]},
    "kvm": {"base_image": "images/base.qcow2", "vm_root": "vm"},
    "tier": [{"id": "basic", "name": "Basic", "description": "1 vCPU, 1GB RAM", "cpu_millicores": 1000,
              "memory_mb": 1024, "rate_msats_per_sec": 50}],
}


# ---------------------------------------------------------------- a tiny TOML writer for the fixtures


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(data: dict[str, Any]) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict | list) or (
        isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    out = [*top, ""]
    for name, value in data.items():
        if isinstance(value, dict):
            out.append(f"[{name}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
            out.append("")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out.append(f"[[{name}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                out.append("")
    return "\n".join(out)


Mutator = Callable[[dict[str, Any]], None]


def write(tmp_path: Path, mutate: Mutator | None = None, name: str = "paygressd.toml") -> Path:
    data = copy.deepcopy(BASE)
    if mutate:
        mutate(data)
    path = tmp_path / name
    path.write_text(to_toml(data))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_base_fixture_is_valid(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path))
    assert cfg.provider.minimum_duration_seconds == 60
    assert cfg.provider.heartbeat_interval_seconds == 60
    assert cfg.kvm.vmid_range == (1000, 1999)
    assert cfg.tier[0].disk_gb == 10
    assert cfg.metrics.enabled is False


# ---------------------------------------------------------------- one test per class of mistake


def test_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["provider"].pop("public_ip"))
    msg = error_of(path)
    assert msg == f"{path}: provider.public_ip: required key is missing"


def test_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d.pop("cashu"))
    assert error_of(path) == f"{path}: cashu: required key is missing"


def test_missing_key_in_a_tier(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["tier"][0].pop("rate_msats_per_sec"))
    assert error_of(path) == f"{path}: tier[0].rate_msats_per_sec: required key is missing"


@pytest.mark.parametrize(
    ("mutate", "key", "problem"),
    [
        (lambda d: d["provider"].update(minimum_duration_seconds="60"), "provider.minimum_duration_seconds",
         "valid integer"),
        (lambda d: d["provider"].update(minimum_duration_seconds=60.0), "provider.minimum_duration_seconds",
         "valid integer"),
        (lambda d: d["tier"][0].update(memory_mb=True), "tier[0].memory_mb", "valid integer"),
        (lambda d: d["nostr"].update(relays="ws://127.0.0.1:7777"), "nostr.relays", "valid list"),
        (lambda d: d["provider"].update(public_ip=17), "provider.public_ip", "valid string"),
        (lambda d: d["kvm"].update(vmid_range=[1000]), "kvm.vmid_range[1]", "required key is missing"),
        (lambda d: d["kvm"].update(accel="fast"), "kvm.accel", "'auto', 'kvm' or 'tcg'"),
        (lambda d: d["metrics"].update(enabled="yes") if "metrics" in d else d.update(metrics={"enabled": "yes"}),
         "metrics.enabled", "valid boolean"),
    ],
    ids=["str-for-int", "float-for-int", "bool-for-int", "str-for-list", "int-for-str", "short-range",
         "bad-literal", "str-for-bool"],
)
def test_wrong_type(tmp_path: Path, mutate: Mutator, key: str, problem: str) -> None:
    path = write(tmp_path, mutate)
    msg = error_of(path)
    assert msg.startswith(f"{path}: {key}")
    assert problem in msg


def test_zero_rate(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["tier"][0].update(rate_msats_per_sec=0))
    msg = error_of(path)
    assert msg.startswith(f"{path}: tier[0].rate_msats_per_sec: ")
    assert "greater than or equal to 1" in msg


def test_negative_minimum_duration(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["provider"].update(minimum_duration_seconds=-5))
    assert "provider.minimum_duration_seconds" in error_of(path)


@pytest.mark.parametrize(("key", "value"), [("vmid_range", [2000, 1000]), ("ssh_port_range", [32000, 31000])])
def test_inverted_range(tmp_path: Path, key: str, value: list[int]) -> None:
    path = write(tmp_path, lambda d: d["kvm"].update({key: value}))
    msg = error_of(path)
    assert msg.startswith(f"{path}: kvm.{key}: ")
    assert f"range is inverted: {value[0]} > {value[1]}" in msg


def test_port_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["kvm"].update(ssh_port_range=[31000, 70000]))
    msg = error_of(path)
    assert msg.startswith(f"{path}: kvm.ssh_port_range[1]: ")
    assert "less than or equal to 65535" in msg


@pytest.mark.parametrize("value", [120, 121, 600])
def test_heartbeat_interval_too_long(tmp_path: Path, value: int) -> None:
    path = write(tmp_path, lambda d: d["provider"].update(heartbeat_interval_seconds=value))
    msg = error_of(path)
    assert msg.startswith(f"{path}: provider.heartbeat_interval_seconds: ")
    assert "less than 120" in msg


def test_heartbeat_interval_just_under_the_online_window(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, lambda d: d["provider"].update(heartbeat_interval_seconds=119)))
    assert cfg.provider.heartbeat_interval_seconds == 119


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["provider"].update(heartbeat_interval_secs=60), "provider.heartbeat_interval_secs"),
        (lambda d: d["tier"][0].update(price=5), "tier[0].price"),
        (lambda d: d.update(extra={"a": 1}), "extra"),
        (lambda d: d["kvm"].update(vmid_range_start=1000), "kvm.vmid_range_start"),
    ],
    ids=["typo-in-section", "in-tier", "unknown-section", "upstream-name"],
)
def test_unknown_key(tmp_path: Path, mutate: Mutator, key: str) -> None:
    path = write(tmp_path, mutate)
    assert error_of(path) == f"{path}: {key}: unknown key"


def test_several_mistakes_are_reported_together(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["provider"].pop("state_dir")
        d["tier"][0]["rate_msats_per_sec"] = 0

    lines = error_of(write(tmp_path, mutate)).splitlines()
    assert len(lines) == 2
    assert any("provider.state_dir: required key is missing" in ln for ln in lines)
    assert any("tier[0].rate_msats_per_sec" in ln for ln in lines)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(to_toml(BASE) + "\n[provider\nname = 1\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}: not valid TOML: ")
    line_no = to_toml(BASE).count("\n") + 2
    assert f"line {line_no}" in msg


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(to_toml(BASE).replace("Basic", "Bäsic").encode("latin-1"))
    assert error_of(path).startswith(f"{path}: not valid TOML: ")


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"{path}: cannot read config file: No such file or directory"


@pytest.mark.parametrize("url", ["ftp://mint.example", "mint.example", "https://", "https://mint.example/?a=1"])
def test_bad_mint_url(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, lambda d: d["cashu"].update(mints=["http://127.0.0.1:3338", url]))
    msg = error_of(path)
    assert msg.startswith(f"{path}: cashu.mints: ")
    assert repr(url) in msg
    assert "not an http(s) URL" in msg


def test_empty_mint_list(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, lambda d: d["cashu"].update(mints=[])))
    assert msg.startswith(f"{tmp_path / 'paygressd.toml'}: cashu.mints: ")
    assert "at least 1 item" in msg


def test_bad_relay_url(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["nostr"].update(relays=["https://relay.example"]))
    msg = error_of(path)
    assert msg.startswith(f"{path}: nostr.relays: ")
    assert "'https://relay.example' must start with ws:// or wss://" in msg


def test_duplicate_tier_id(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["tier"].append(dict(d["tier"][0])))
    msg = error_of(path)
    assert msg.startswith(f"{path}: tier: ")
    assert "tier id 'basic' appears twice" in msg


def test_kernel_without_initrd(tmp_path: Path) -> None:
    path = write(tmp_path, lambda d: d["kvm"].update(kernel="vmlinuz"))
    msg = error_of(path)
    assert msg.startswith(f"{path}: kvm: ")
    assert "kernel and initrd must be set together" in msg


def test_empty_public_ip(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, lambda d: d["provider"].update(public_ip="  ")))
    assert "provider.public_ip: " in msg and "must not be empty" in msg


def test_listen_address_must_be_an_ip(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, lambda d: d["kvm"].update(listen_address="localhost")))
    assert "kvm.listen_address: " in msg and "'localhost' is not an IP address" in msg


# ---------------------------------------------------------------- normalization and path resolution


def test_mint_whitelist_normalized(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, lambda d: d["cashu"].update(
        mints=["HTTPS://Mint.Example/", "https://mint.example", "http://127.0.0.1:3338/"])))
    assert cfg.cashu.mints == ["https://mint.example", "http://127.0.0.1:3338"]


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(conf_dir, lambda d: d["kvm"].update(kernel="img/vmlinuz", initrd="img/initrd.img"))
    cfg = load_config(Path(os.path.relpath(path, elsewhere)))  # even when the config path itself is relative
    base = conf_dir.resolve()
    assert cfg.provider.key_file == base / "provider.key"
    assert cfg.provider.state_dir == base / "state"
    assert cfg.db_path == base / "state" / "paygressd.sqlite3"
    assert cfg.wallet_dir == base / "state" / "wallet"
    assert cfg.kvm.base_image == base / "images" / "base.qcow2"
    assert cfg.kvm.vm_root == base / "vm"
    assert cfg.kvm.kernel == base / "img" / "vmlinuz"
    assert cfg.kvm.initrd == base / "img" / "initrd.img"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, lambda d: d["provider"].update(key_file="/etc/paygressd/nostr.key")))
    assert cfg.provider.key_file == Path("/etc/paygressd/nostr.key")
    assert cfg.kvm.kernel is None


def test_config_path_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "from-env.toml"))
    assert config_path(None) == tmp_path / "from-env.toml"
    assert config_path(str(tmp_path / "flag.toml")) == tmp_path / "flag.toml"  # --config wins
    monkeypatch.delenv(ENV_CONFIG)
    with pytest.raises(ConfigError, match=r"pass --config FILE or set PAYGRESSD_CONFIG"):
        config_path(None)


# ---------------------------------------------------------------- the key file, via the CLI's loader


def _key_setup(tmp_path: Path, content: str, mode: int) -> argparse.Namespace:
    path = write(tmp_path)
    key = tmp_path / "provider.key"
    key.write_text(content)
    key.chmod(mode)
    return argparse.Namespace(config=str(path))


@pytest.mark.parametrize("fmt", ["nsec", "hex"])
def test_key_file_0600_accepted(tmp_path: Path, fmt: str) -> None:
    keys = Keys.generate()
    text = keys.secret_key().to_bech32() if fmt == "nsec" else keys.secret_key().to_hex()
    cfg = load_checked_config(_key_setup(tmp_path, text + "\n", 0o600))
    assert load_keys(cfg.provider.key_file).public_key().to_hex() == keys.public_key().to_hex()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_key_file_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    args = _key_setup(tmp_path, Keys.generate().secret_key().to_bech32(), mode)
    with pytest.raises(KeyFileError) as info:
        load_checked_config(args)
    msg = str(info.value)
    key = (tmp_path / "provider.key").resolve()
    cfg_file = tmp_path / "paygressd.toml"
    assert msg.startswith(f"{cfg_file}: provider.key_file: {key}: key file mode is {mode:04o}")
    assert f"chmod 600 {key}" in msg


def test_key_file_missing(tmp_path: Path) -> None:
    args = argparse.Namespace(config=str(write(tmp_path)))
    with pytest.raises(KeyFileError) as info:
        load_checked_config(args)
    key = (tmp_path / "provider.key").resolve()
    cfg_file = tmp_path / "paygressd.toml"
    assert str(info.value) == f"{cfg_file}: provider.key_file: {key}: cannot read key file: No such file or directory"


def test_key_file_unreadable(tmp_path: Path) -> None:
    args = _key_setup(tmp_path, "", 0o600)
    key = tmp_path / "provider.key"
    key.unlink()
    key.mkdir(mode=0o700)  # a directory: stat works, reading fails (even for root)
    with pytest.raises(KeyFileError) as info:
        load_checked_config(args)
    cfg_file = tmp_path / "paygressd.toml"
    assert str(info.value).startswith(f"{cfg_file}: provider.key_file: {key.resolve()}: cannot read key file: ")


@pytest.mark.parametrize("content", ["", "npub1ae40uj62de87f8tvx56e6ytp5m7jd7l96mh0ew43e8q5wucm7z9q2uqvuc",
                                     "nsec1notakey", "zz" * 32])
def test_key_file_garbage(tmp_path: Path, content: str) -> None:
    with pytest.raises(KeyFileError) as info:
        load_checked_config(_key_setup(tmp_path, content, 0o600))
    msg = str(info.value)
    assert msg.endswith("not an nsec or 64-hex secret key")
    assert content == "" or content not in msg  # never echo what might be a secret


def test_env_var_used_by_checked_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _key_setup(tmp_path, Keys.generate().secret_key().to_hex(), 0o600)
    monkeypatch.setenv(ENV_CONFIG, args.config)
    cfg = load_checked_config(argparse.Namespace(config=None))
    assert cfg.provider.key_file == (tmp_path / "provider.key").resolve()


# ---------------------------------------------------------------- config.example.toml


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)  # its key_file need not exist: loading the config alone must pass
    assert [t.id for t in cfg.tier] == ["basic", "standard", "premium"]
    assert all(t.rate_msats_per_sec >= 1 for t in cfg.tier)
    assert cfg.nostr.relays and cfg.cashu.mints
    assert cfg.provider.heartbeat_interval_seconds < 120


SECTIONS: dict[str, type[BaseModel]] = {
    "provider": ProviderSection, "nostr": NostrSection, "cashu": CashuSection, "kvm": KvmSection,
    "metrics": MetricsSection,
}


def test_sections_cover_the_config_model() -> None:
    assert set(Config.model_fields) == {*SECTIONS, "tier"}


def _section_lines(lines: list[str], header: str) -> list[str]:
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    return lines[start + 1:end]


_KEY_LINE = re.compile(r"^#?\s*([a-z_]+)\s*=")


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_example_documents_every_key(section: str) -> None:
    lines = EXAMPLE.read_text().splitlines()
    body = _section_lines(lines, f"[{section}]")
    keys_at = {m[1]: i for i, ln in enumerate(body) if (m := _KEY_LINE.match(ln))}
    assert set(keys_at) == set(SECTIONS[section].model_fields), "keys in the example differ from the model"
    for key, i in keys_at.items():
        # Walk up over neighbouring key lines (keys that share one comment); a comment must come next.
        j = i - 1
        while j >= 0 and _KEY_LINE.match(body[j]):
            j -= 1
        assert j >= 0 and body[j].startswith("# ") and len(body[j]) > 10, f"{section}.{key} has no comment"
        comment = []
        while j >= 0 and body[j].startswith("#") and not _KEY_LINE.match(body[j]):
            comment.append(body[j])
            j -= 1
        text = " ".join(comment)
        assert "Default" in text or "Required" in text, f"{section}.{key}: comment lacks default/required"


def test_example_documents_every_tier_key() -> None:
    text = EXAMPLE.read_text()
    comment = text[text.index("# Tiers"):text.index("[[tier]]")]
    for key in Tier.model_fields:
        assert re.search(rf"^#\s+(\S+, )?{key}\b", comment, re.MULTILINE), f"tier.{key} is not documented"
    data = tomllib.loads(text)
    assert all(set(t) == set(Tier.model_fields) for t in data["tier"])


def test_example_defaults_match_the_code() -> None:
    # A documented default that is also set in the example must equal the model's real default.
    data = tomllib.loads(EXAMPLE.read_text())
    for section, model in SECTIONS.items():
        for key in data.get(section, {}):
            field = model.model_fields[key]
            comment_default = _documented_default(section, key)
            if comment_default is not None and not field.is_required():
                default = field.get_default(call_default_factory=True)
                assert _toml_literal(default) == comment_default, f"{section}.{key}"


def _documented_default(section: str, key: str) -> str | None:
    body = _section_lines(EXAMPLE.read_text().splitlines(), f"[{section}]")
    i = next(i for i, ln in enumerate(body) if (m := _KEY_LINE.match(ln)) and m[1] == key)
    j = i - 1
    while j >= 0 and _KEY_LINE.match(body[j]):
        j -= 1
    comment = []
    while j >= 0 and body[j].startswith("#") and not _KEY_LINE.match(body[j]):
        comment.insert(0, body[j].lstrip("# "))
        j -= 1
    # "Default 60", "Default \"0.0.0.0\"", "Default [1000, 1999]"; plural "Defaults a and b" is skipped.
    m = re.search(r"Default ((?:\"[^\"]*\")|(?:\[[^\]]*\])|[^\s,.(]+)", " ".join(comment))
    return None if m is None else m[1]


def _toml_literal(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_systemd_credential_may_be_group_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd ≥ 254 hands credentials over with an ACL, which stat shows as 0440; others still refused."""
    creds = tmp_path / "creds"
    creds.mkdir()
    key = creds / "nostr.key"
    keys = Keys.generate()
    key.write_text(keys.secret_key().to_bech32())
    key.chmod(0o440)
    with pytest.raises(KeyFileError):
        load_keys(key)  # outside a credentials directory, group-readable is refused
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_keys(key).public_key().to_hex() == keys.public_key().to_hex()
    key.chmod(0o444)
    with pytest.raises(KeyFileError):
        load_keys(key)

"""The TOML config, validated by pydantic. Every error names the file, the key and what is wrong."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from paygressd.core.rules import normalize_mint_url

ENV_CONFIG = "PAYGRESSD_CONFIG"

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]


class ConfigError(Exception):
    """A config problem; str() is the whole operator-facing message."""


class _Section(BaseModel):
    # Unknown keys are refused: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSection(_Section):
    name: StrictStr | None = None
    location: StrictStr | None = None
    public_ip: StrictStr
    key_file: Path
    state_dir: Path
    minimum_duration_seconds: PositiveInt = 60
    heartbeat_interval_seconds: Annotated[int, Field(strict=True, ge=1, lt=120)] = 60
    offer_interval_seconds: PositiveInt = 600
    capabilities: list[StrictStr] = Field(default_factory=lambda: ["vm"])
    # A spawn older than this is refused untouched: paygress-cli gives up after 120 s.
    request_max_age_seconds: PositiveInt = 120
    max_concurrent_requests: PositiveInt = 32
    # Per requester: this many requests per rate_limit_window_seconds, then one error and silence.
    rate_limit_requests: PositiveInt = 30
    rate_limit_window_seconds: PositiveInt = 60
    shutdown_grace_seconds: PositiveInt = 150

    @field_validator("public_ip")
    @classmethod
    def _public_ip(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty: consumers connect to this address")
        return v.strip()


class NostrSection(_Section):
    relays: list[StrictStr] = Field(min_length=1)

    @field_validator("relays")
    @classmethod
    def _relays(cls, v: list[str]) -> list[str]:
        for url in v:
            if not (url.startswith("ws://") or url.startswith("wss://")):
                raise ValueError(f"relay {url!r} must start with ws:// or wss://")
        return v


class CashuSection(_Section):
    mints: list[StrictStr] = Field(min_length=1)

    @field_validator("mints")
    @classmethod
    def _mints(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for url in v:
            norm = normalize_mint_url(url)
            if norm is None:
                raise ValueError(f"mint {url!r} is not an http(s) URL")
            if norm not in out:
                out.append(norm)
        return out


class KvmSection(_Section):
    base_image: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: StrictStr | None = None
    vm_root: Path
    vmid_range: tuple[NonNegInt, NonNegInt] = (1000, 1999)
    ssh_port_range: tuple[Port, Port] = (31000, 31999)
    listen_address: StrictStr = "0.0.0.0"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    ssh_ready_timeout_seconds: PositiveInt = 90
    qemu_binary: StrictStr = "qemu-system-x86_64"
    # When the daemon runs as root, qemu drops to this user.
    qemu_user: StrictStr | None = None
    # Host resources kept back from leases (the daemon and the host itself need some).
    reserved_memory_mb: NonNegInt = 512
    reserved_cpu_millicores: NonNegInt = 0

    @field_validator("vmid_range", "ssh_port_range")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"range is inverted: {v[0]} > {v[1]}")
        return v

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IP address") from exc
        return v

    @model_validator(mode="after")
    def _kernel_pair(self) -> Self:
        if (self.kernel is None) != (self.initrd is None):
            raise ValueError("kernel and initrd must be set together (direct kernel boot) or both left out")
        if self.cmdline is not None and self.kernel is None:
            raise ValueError("cmdline needs kernel and initrd")
        return self


class Tier(_Section):
    id: StrictStr = Field(min_length=1)
    name: StrictStr
    description: StrictStr
    cpu_millicores: PositiveInt
    memory_mb: PositiveInt
    rate_msats_per_sec: PositiveInt
    disk_gb: PositiveInt = 10


class MetricsSection(_Section):
    # Strict: enabled = "no" must be an error, not a string that pydantic happens to read as False.
    enabled: StrictBool = False
    listen: StrictStr = "127.0.0.1:9464"


class Config(_Section):
    provider: ProviderSection
    nostr: NostrSection
    cashu: CashuSection
    kvm: KvmSection
    tier: list[Tier] = Field(min_length=1)
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    @field_validator("tier")
    @classmethod
    def _unique_tiers(cls, v: list[Tier]) -> list[Tier]:
        seen: set[str] = set()
        for t in v:
            if t.id in seen:
                raise ValueError(f"tier id {t.id!r} appears twice")
            seen.add(t.id)
        return v

    def tier_by_id(self, tier_id: str) -> Tier | None:
        return next((t for t in self.tier if t.id == tier_id), None)

    @property
    def wallet_dir(self) -> Path:
        return self.provider.state_dir / "wallet"

    @property
    def db_path(self) -> Path:
        return self.provider.state_dir / "paygressd.sqlite3"


def config_path(cli_value: str | None) -> Path:
    value = cli_value or os.environ.get(ENV_CONFIG)
    if not value:
        raise ConfigError(f"no config file: pass --config FILE or set {ENV_CONFIG}")
    return Path(value)


def load_config(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from exc
    return _resolve_paths(cfg, path.parent)


def _describe(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = _key_path(err["loc"])
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {loc}: {msg}")
    return "\n".join(lines)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Relative paths are relative to the config file, never to the working directory (§8 item 32)."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    provider = cfg.provider.model_copy(
        update={"key_file": fix(cfg.provider.key_file), "state_dir": fix(cfg.provider.state_dir)}
    )
    kvm = cfg.kvm.model_copy(
        update={
            "base_image": fix(cfg.kvm.base_image),
            "kernel": fix(cfg.kvm.kernel),
            "initrd": fix(cfg.kvm.initrd),
            "vm_root": fix(cfg.kvm.vm_root),
        }
    )
    return cfg.model_copy(update={"provider": provider, "kvm": kvm})

"""Pure functions for the observable rules of protocol §3: lease math, pod ids, passwords, mint URLs."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

# ---------------------------------------------------------------- lease math


@dataclass(frozen=True)
class Insufficient:
    required_msats: int
    minimum_seconds: int


def lease_seconds(msats: int, rate_msats_per_sec: int) -> int:
    if rate_msats_per_sec < 1:
        raise ValueError("rate_msats_per_sec must be >= 1")
    return msats // rate_msats_per_sec


def spawn_duration(msats: int, rate: int, minimum_seconds: int) -> int | Insufficient:
    seconds = lease_seconds(msats, rate)
    if seconds < minimum_seconds:
        return Insufficient(required_msats=minimum_seconds * rate, minimum_seconds=minimum_seconds)
    return seconds


def minimum_msats(rate: int, minimum_seconds: int) -> int:
    return rate * minimum_seconds


def topup_message(seconds: int, msats: int, rate: int) -> str:
    return f"Lease extended by {seconds}s ({msats} msats @ {rate} msats/sec)"


def unit_to_msats(amount: int, unit: str) -> int | None:
    """Only sat and msat are payable (case-insensitive); anything else is None."""
    u = unit.lower()
    if u == "sat":
        return amount * 1000
    if u == "msat":
        return amount
    return None


# ---------------------------------------------------------------- pod ids

_U32_MAX = 2**32 - 1


def parse_pod_id(text: str) -> int | None:
    """``container-<n>`` or ``<n>`` → n (a u32, Rust's parser allows a leading '+'); else None."""
    body = text.removeprefix("container-")
    digits = body[1:] if body.startswith("+") else body
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(digits)
    return value if value <= _U32_MAX else None


def pod_npub(vmid: int) -> str:
    return f"container-{vmid}"


# ---------------------------------------------------------------- passwords

_ALNUM = string.ascii_letters + string.digits


def password_is_acceptable(candidate: str) -> bool:
    return 12 <= len(candidate) <= 64 and all(c in _ALNUM for c in candidate)


def choose_password(requested: str) -> str:
    """Honour a 12–64 char ASCII-alphanumeric password, else generate 16 (protocol §3.6).

    Alphanumerics only means nothing the consumer sends can inject YAML into cloud-init.
    """
    if password_is_acceptable(requested):
        return requested
    return "".join(secrets.choice(_ALNUM) for _ in range(16))


_POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_RESERVED_USERS = frozenset(
    {"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
     "www-data", "backup", "list", "irc", "gnats", "nobody", "sshd", "systemd-network", "messagebus"}
)


def guest_username(requested: str) -> str | None:
    """The consumer's ssh_username when it is a valid, non-system POSIX name; else None (root only)."""
    # fullmatch, not match: "$" would let a trailing newline through into cloud-init's YAML.
    if _POSIX_USER.fullmatch(requested) and requested not in _RESERVED_USERS:
        return requested
    return None


# ---------------------------------------------------------------- mint URLs (protocol §4.2)


def normalize_mint_url(url: str) -> str | None:
    """cdk's normalization: trim trailing '/', lower-case scheme and host[:port], keep the path's case."""
    trimmed = url.strip().rstrip("/")
    try:
        parts = urlsplit(trimmed)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if parts.query or parts.fragment or any(c.isspace() for c in trimmed):
        return None
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


# ---------------------------------------------------------------- upstream port rule (reference only)


def upstream_ssh_port(vmid: int, vmid_range_start: int, ssh_port_start: int | None) -> int:
    """Upstream derives the port from the id; paygressd uses an explicit pool instead (§8 item 30)."""
    if ssh_port_start is not None:
        return ssh_port_start + (vmid - vmid_range_start)
    return 30000 + vmid % 10000

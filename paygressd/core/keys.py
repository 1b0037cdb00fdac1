"""Key formats: nsec/hex secret keys, npub/hex public keys, and the key file's permission rule."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nostr_sdk import Keys, PublicKey


class KeyFileError(Exception):
    pass


def load_keys(path: Path) -> Keys:
    """Read an nsec or hex secret key; refuse a file that group or others can read."""
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from exc
    forbidden = stat.S_IRWXG | stat.S_IRWXO
    if _is_systemd_credential(path):
        # Newer systemd grants the service read access to credentials by ACL, which shows as group read.
        forbidden &= ~stat.S_IRGRP
    if st.st_mode & forbidden:
        raise KeyFileError(
            f"{path}: key file mode is {stat.S_IMODE(st.st_mode):04o}; it must not be group- or "
            f"world-accessible (chmod 600 {path})"
        )
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from exc
    try:
        return Keys.parse(text)
    except Exception as exc:
        raise KeyFileError(f"{path}: not an nsec or 64-hex secret key") from exc


def _is_systemd_credential(path: Path) -> bool:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return creds is not None and path.parent.resolve() == Path(creds).resolve()


def write_new_key(path: Path) -> Keys:
    """Create a fresh key file with mode 0600; never overwrite."""
    keys = Keys.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(keys.secret_key().to_bech32() + "\n")
    return keys


def pubkey_hex(text: str) -> str | None:
    """Canonical lowercase hex for hex, npub1… or nostr: input; None when it does not parse."""
    try:
        return str(PublicKey.parse(text.strip()).to_hex())
    except Exception:
        return None


def same_key(a: str, b: str) -> bool:
    """Compare keys canonically; strings that do not parse compare literally (as upstream)."""
    ha, hb = pubkey_hex(a), pubkey_hex(b)
    if ha is not None and hb is not None:
        return ha == hb
    return a == b

"""Read a systemd unit file into its directives (for tests that check the shipped unit)."""

from __future__ import annotations


def parse_unit(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value given, in order (systemd directives may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not a key=value line: {raw!r}")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out

"""structlog setup. Redaction runs inside the pipeline so no caller has to remember it.

Removed from every event, whoever logs it (structlog or stdlib logging):
- Cashu tokens (``cashuA…``/``cashuB…``) and nsec keys, wherever they appear in any string;
- values of sensitive keys (passwords, secret keys, tokens, decrypted DM bodies);
- any string registered with ``register_secret`` (our own secret key hex, generated passwords).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"

_TOKEN = re.compile(r"cashu[AB][A-Za-z0-9_\-+/=]+")
# bech32 may be written all upper-case, and Keys.parse accepts that too.
_NSEC = re.compile(r"nsec1[a-z0-9]+", re.IGNORECASE)
# `"ssh_password": "x"`, `'content': 'x'`, `password=x` inside a string (a dict repr, a JSON body, a pydantic
# ValidationError's input_value): the value goes, the key stays so the line still makes sense.
_KEY_VALUE = re.compile(
    r"""\b((?:ssh_)?passw(?:or)?d|cashu_token|refund_token|secret_key|nsec|mnemonic|content|plaintext)"""
    # "[redacted]" first: scrub runs twice per event and must not nibble at its own marker.
    r"""(["']?\s*[:=]\s*)(\[redacted\]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;)}\]]+)""",
    re.IGNORECASE,
)
_SENSITIVE_KEYS = frozenset(
    {"password", "ssh_password", "passwd", "secret", "secret_key", "nsec", "sk", "token", "cashu_token",
     "refund_token", "content", "plaintext", "body", "dm", "decrypted", "mnemonic", "seed", "user_data"}
)

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register_secret(value: str) -> None:
    """Scrub this exact string from every future log line (e.g. our secret key hex, a VM password)."""
    global _secrets
    if len(value) >= 6:
        with _lock:
            _secrets = _secrets | {value}


def forget_secret(value: str) -> None:
    global _secrets
    with _lock:
        _secrets = _secrets - {value}


def scrub(text: str) -> str:
    text = _KEY_VALUE.sub(lambda m: m[1] + m[2] + REDACTED, text)
    text = _TOKEN.sub("cashu" + REDACTED, text)
    text = _NSEC.sub("nsec1" + REDACTED, text)
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes):
        return scrub(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        # Keys are scrubbed too: a dict keyed by token (e.g. per-token amounts) must not leak it.
        return {
            (scrub(k) if isinstance(k, str) else k): (REDACTED if _is_sensitive(k) else _scrub_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, depth + 1) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub(repr(value))


def _is_sensitive(key: object) -> bool:
    return isinstance(key, str) and key.lower() in _SENSITIVE_KEYS


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _is_sensitive(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub_value(event_dict[key])
    return event_dict


def setup_logging(level: str = "info", stream: TextIO | None = None, json_lines: bool | None = None) -> None:
    """Route structlog and stdlib logging through one redacting pipeline onto ``stream`` (stderr)."""
    out = stream if stream is not None else sys.stderr
    if json_lines is None:
        json_lines = not out.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # log.info("x %s", y) must render "x <y>" (scrubbed afterwards), not "x %s".
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared[:-2], structlog.stdlib.ExtraAdder(), *shared[-2:]],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
        )
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger

"""Decrypted DM content → one request, in upstream's untagged-union order: spawn, top-up, status."""

from __future__ import annotations

import json

from pydantic import ValidationError

from paygressd.wire import errors
from paygressd.wire.models import ErrorReply, SpawnRequest, StatusRequest, TopUpRequest

Request = SpawnRequest | TopUpRequest | StatusRequest

# A paygress request is a few hundred bytes plus a token; anything far larger is junk.
MAX_CONTENT_CHARS = 64 * 1024
_NO_VARIANT = "data did not match any variant of untagged enum PrivateRequest"


def dispatch(content: str) -> Request | ErrorReply:
    """Never raises: whatever the input, the result is a request or an ``invalid_request`` reply."""
    if len(content) > MAX_CONTENT_CHARS:
        return errors.invalid_request(f"content longer than {MAX_CONTENT_CHARS} characters", content)
    try:
        value = json.loads(content)
    except (ValueError, RecursionError) as exc:
        return errors.invalid_request(_parser_message(exc), content)
    try:
        # serde_json refuses a lone surrogate escape ("\ud800"); Python accepts it, and a reply echoing
        # such a string (e.g. status not_found) could not even be encoded as UTF-8.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return errors.invalid_request("lone surrogate in hex escape", content)
    if not isinstance(value, dict):
        return errors.invalid_request(_NO_VARIANT, content)
    for model in (SpawnRequest, TopUpRequest, StatusRequest):
        try:
            return model.model_validate(value)
        except (ValidationError, RecursionError):
            continue
    return errors.invalid_request(_NO_VARIANT, content)


def _parser_message(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg.lower()} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "recursion limit exceeded"
    return str(exc)

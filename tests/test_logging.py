"""Redaction through the real logging setup: secrets never reach the log, whoever logs them and however."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from nostr_sdk import Keys
from pydantic import ValidationError

from paygressd.logging import forget_secret, get_logger, register_secret, scrub, setup_logging
from paygressd.wire.models import SpawnRequest

# Real-looking Cashu tokens: the upstream V3 fixture (protocol §7.1) and a V4 prefix from cdk's tests.
TOKEN_V3 = (
    "cashuAeyJ0b2tlbiI6W3sibWludCI6Imh0dHBzOi8vdGVzdG51dC5jYXNodS5zcGFjZSIsInByb29mcyI6W3siQyI6IjAyM2JlNTNlOGM2MDUz"
    "MGVlYTliMzk0M2ZkYTFhMmNlNzFjN2IzZjBjZjBkYzZkODQ2ZmE3NjVhYWY3NzlmYTgxZCIsImFtb3VudCI6MTAwLCJpZCI6IjAwOWExZjI5MzI1"
    "M2U0MWUiLCJzZWNyZXQiOiJzZWNyZXQtaGFwcHktcGF0aCJ9XX1dLCJ1bml0Ijoic2F0In0"
)
TOKEN_V4 = "cashuBo2F0gqJhaUgA_9SLj17PgGFwgaNhYQFhc3hAYWNjMTI0MzVlZmYyMDRiNzg2NWM0ZTk3ZDMxMjY3"
KEYS = Keys.generate()
NSEC = KEYS.secret_key().to_bech32()
SECRET_HEX = KEYS.secret_key().to_hex()
PASSWORD = "W9ZG2GIUOWiPkYID"
# The consumer's requested password: never registered (the provider may replace it), so only the
# key=value patterns can catch it inside a string.
CONSUMER_PW = "Hx7Tq2LmN8vR4wZc"
MARKER = "BODY-MARKER-5f1c9e"
DM_BODY = json.dumps({"cashu_token": TOKEN_V4, "pod_spec_id": "basic", "pod_image": MARKER,
                      "ssh_username": "user", "ssh_password": CONSUMER_PW}, separators=(",", ":"))

# What must never appear: each secret, and a distinctive inner slice of it (catches partial leaks).
FORBIDDEN = [
    TOKEN_V3, TOKEN_V3[6:40], TOKEN_V4, TOKEN_V4[6:30], NSEC, NSEC[5:30], NSEC.upper()[5:30], SECRET_HEX,
    SECRET_HEX[:24], PASSWORD, CONSUMER_PW, DM_BODY,
]


@dataclass
class Captured:
    stream: io.StringIO
    json_lines: bool

    def text(self) -> str:
        for h in logging.getLogger().handlers:
            h.flush()
        return self.stream.getvalue()


@pytest.fixture(params=[True, False], ids=["json", "console"])
def captured(request: pytest.FixtureRequest) -> Iterator[Captured]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    setup_logging("debug", stream=stream, json_lines=request.param)
    register_secret(SECRET_HEX)
    register_secret(PASSWORD)
    try:
        yield Captured(stream, request.param)
    finally:
        forget_secret(SECRET_HEX)
        forget_secret(PASSWORD)
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
        structlog.reset_defaults()


def assert_clean(out: str, *must_appear: str, body_text_allowed: bool = False) -> None:
    for marker in must_appear:
        assert marker in out, f"{marker!r} missing: the log line was not written at all"
    assert "[redacted]" in out
    # A DM body logged as a field (content=...) disappears whole, its harmless parts included.
    for secret in [*FORBIDDEN, *([] if body_text_allowed else [MARKER])]:
        assert secret not in out, f"secret fragment {secret[:12]!r}… leaked into the log"


def test_structlog_fields(captured: Captured) -> None:
    log = get_logger("paygressd.test")
    log.info("spawn-request", cashu_token=TOKEN_V3, password=PASSWORD, ssh_password=PASSWORD, content=DM_BODY,
             nsec=NSEC, secret_key=SECRET_HEX)
    # Innocent-looking field names: the value patterns and registered secrets still catch them.
    log.info("odd-fields", t=TOKEN_V4, k=NSEC, hexkey=SECRET_HEX, pw=PASSWORD, upper=NSEC.upper())
    log.info("nested", request={"cashu_token": TOKEN_V3, "user": {"Password": PASSWORD}, TOKEN_V4: 1},
             items=[TOKEN_V3, (NSEC, SECRET_HEX)], raw=TOKEN_V4.encode(), dm={"content": DM_BODY})
    assert_clean(captured.text(), "spawn-request", "odd-fields", "nested")


def test_dm_body_inside_strings(captured: Captured) -> None:
    # Bodies that end up inside text: a repr, a JSON dump, an f-string, the invalid_request details.
    log = get_logger("paygressd.test")
    log.info(f"decrypted: {json.loads(DM_BODY)!r}")
    log.info("relay event", raw_event=f'{{"kind":4,"content":{json.dumps(DM_BODY)}}}')
    log.info("reply", details=f"JSON parsing failed: x. Content: '{DM_BODY[:100]}...'")
    assert_clean(captured.text(), "decrypted", "relay event", "reply", body_text_allowed=True)


def test_structlog_messages(captured: Captured) -> None:
    log = get_logger("paygressd.test")
    log.info(f"received token {TOKEN_V3} with key {NSEC}")
    log.warning(f"vm password is {PASSWORD} and provider key {SECRET_HEX}")
    log.info("positional %s %s %s", TOKEN_V4, PASSWORD, SECRET_HEX)
    out = captured.text()
    assert_clean(out, "received token", "vm password is", "positional")
    assert "%s" not in out  # positional arguments were rendered (then scrubbed)


def test_stdlib_logging(captured: Captured) -> None:
    std = logging.getLogger("some.library")
    std.info("library saw %s", TOKEN_V3)
    std.warning("key %s password %s", NSEC, PASSWORD)
    std.error("hex %s", SECRET_HEX, extra={"content": DM_BODY, "password": PASSWORD, "detail": TOKEN_V4})
    assert_clean(captured.text(), "library saw", "key ", "hex ")


def test_exception_tracebacks(captured: Captured) -> None:
    log = get_logger("paygressd.test")
    std = logging.getLogger("some.library")

    def redeem(token: str, body: str) -> None:
        try:
            raise ConnectionError(f"mint unreachable for {token}")
        except ConnectionError as inner:
            raise RuntimeError(f"redeem failed: {json.loads(body)} {NSEC} {SECRET_HEX} {PASSWORD}") from inner

    try:
        redeem(TOKEN_V3, DM_BODY)
    except RuntimeError:
        log.exception("structlog-traceback")
        std.exception("stdlib-traceback")
    log.error("exc-info-object", exc_info=ValueError(TOKEN_V4))
    # A pydantic error quotes its input: a body with one bad field still carries the token and password.
    bad = json.loads(DM_BODY) | {"replication": {"mode": "bogus"}}
    try:
        SpawnRequest.model_validate(bad)
    except ValidationError:
        log.exception("validation-traceback")
        std.exception("stdlib-validation")
    out = captured.text()
    assert_clean(out, "structlog-traceback", "stdlib-traceback", "exc-info-object", "ConnectionError",
                 "RuntimeError", "validation-traceback", "stdlib-validation", "ValidationError",
                 body_text_allowed=True)
    assert out.count("Traceback (most recent call last)") >= 4


def test_json_mode_writes_one_json_object_per_line(captured: Captured) -> None:
    if not captured.json_lines:
        pytest.skip("console mode")
    get_logger("paygressd.test").info("hello", cashu_token=TOKEN_V3, n=3)
    logging.getLogger("x").info("world")
    lines = [json.loads(line) for line in captured.text().splitlines()]
    assert [ln["event"] for ln in lines] == ["hello", "world"]
    assert lines[0]["cashu_token"] == "[redacted]" and lines[0]["n"] == 3
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "paygressd.test"


def test_forgotten_secret_is_no_longer_scrubbed(captured: Captured) -> None:
    # register/forget is what the provider does with a VM password for the lease's lifetime.
    other = "Q7rT2mX9pL4wZ8vN"
    register_secret(other)
    get_logger("t").info(f"pw {other}")
    forget_secret(other)
    get_logger("t").info(f"later {other}")
    out = captured.text()
    assert f"pw {other}" not in out
    assert f"later {other}" in out


def test_level_filtering(captured: Captured) -> None:
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    get_logger("t").info("quiet-info")
    get_logger("t").warning("loud-warning")
    out = captured.text()
    assert "quiet-info" not in out and "loud-warning" in out


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sampled_from(["password=", "'ssh_password': ", '"content":', "nsec1", "cashuA", ""]))
def test_scrub_is_idempotent(text: str, prefix: str) -> None:
    # The pipeline scrubs each event twice (structlog chain, then the formatter); output must be stable.
    once = scrub(prefix + text)
    assert scrub(once) == once


def test_readable_after_double_scrub(captured: Captured) -> None:
    get_logger("t").info(f"decrypted {json.loads(DM_BODY)!r}")
    out = captured.text()
    assert "'cashu_token': [redacted], 'pod_spec_id': 'basic'" in out
    assert "[redacted]]" not in out

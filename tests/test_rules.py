"""The pure rules of protocol §3 that a consumer can observe: lease math, ids, passwords, names, mints, times."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paygressd.core import rules
from paygressd.wire.models import human_utc, rfc3339

# ---------------------------------------------------------------- lease math (§3.4)


@settings(max_examples=300, deadline=None)
@given(msats=st.integers(0, 10**15), rate=st.integers(1, 10**6), minimum=st.integers(1, 10**5))
def test_spawn_duration_is_floor_division_with_a_minimum(msats: int, rate: int, minimum: int) -> None:
    outcome = rules.spawn_duration(msats, rate, minimum)
    seconds = msats // rate
    if seconds >= minimum:
        assert outcome == seconds
        # The consumer is never charged for more seconds than they get, and never gets a second unpaid.
        assert seconds * rate <= msats < (seconds + 1) * rate
    else:
        assert outcome == rules.Insufficient(required_msats=minimum * rate, minimum_seconds=minimum)
        assert msats < rules.minimum_msats(rate, minimum)


def test_minimum_boundary() -> None:
    # 60 s at 50 msat/s: 3000 msats is enough, 2999 is not.
    assert rules.spawn_duration(3000, 50, 60) == 60
    assert isinstance(rules.spawn_duration(2999, 50, 60), rules.Insufficient)
    assert rules.spawn_duration(3049, 50, 60) == 60  # remainder discarded


def test_topup_message_format() -> None:
    assert rules.topup_message(1, 50, 50) == "Lease extended by 1s (50 msats @ 50 msats/sec)"


@pytest.mark.parametrize(
    ("amount", "unit", "msats"),
    [(100, "sat", 100_000), (100, "Sat", 100_000), (7, "msat", 7), (7, "MSAT", 7), (0, "sat", 0),
     (1, "usd", None), (1, "eur", None), (1, "auth", None), (1, "", None), (1, "sats", None)],
)
def test_unit_to_msats(amount: int, unit: str, msats: int | None) -> None:
    assert rules.unit_to_msats(amount, unit) == msats


# ---------------------------------------------------------------- pod ids (§3.7)


@pytest.mark.parametrize(
    ("text", "vmid"),
    [
        ("container-1000", 1000), ("1000", 1000), ("0", 0), ("container-0", 0),
        ("container-+7", 7), ("+7", 7),  # Rust's u32 parser accepts a leading '+'
        ("4294967295", 2**32 - 1), ("container-007", 7),
        ("4294967296", None), ("-1", None), ("container--1", None), (" 1000", None), ("1000 ", None),
        ("container-1000\n", None), ("Container-1000", None), ("container-container-1", None),
        ("١٢٣", None), ("1_000", None), ("+", None), ("container-+", None), ("1e3", None), ("0x10", None),
        ("standby-slot-abc", None),
    ],
)
def test_parse_pod_id(text: str, vmid: int | None) -> None:
    assert rules.parse_pod_id(text) == vmid


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_pod_npub_round_trips(vmid: int) -> None:
    assert rules.pod_npub(vmid) == f"container-{vmid}"
    assert rules.parse_pod_id(rules.pod_npub(vmid)) == vmid
    assert rules.parse_pod_id(str(vmid)) == vmid


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_parse_pod_id_never_raises(text: str) -> None:
    result = rules.parse_pod_id(text)
    assert result is None or 0 <= result <= 2**32 - 1


# ---------------------------------------------------------------- passwords (§3.6)

ALNUM = set(string.ascii_letters + string.digits)


@pytest.mark.parametrize("pw", ["a" * 12, "Z9" * 32, "abcdefghijklmnopqrstuvwxyz0123456789"])
def test_password_bounds_honoured(pw: str) -> None:
    assert rules.choose_password(pw) == pw


@pytest.mark.parametrize(
    "pw",
    ["a" * 11, "a" * 65, "abcdefghijkü", "abcdefghijk!", "abcdefghijk'", 'abcdefghijk"', "abcdefghijkl\r",
     "abcdefghijk\t", "ＡＢＣＤＥＦＧＨＩＪＫＬ", "abcdefghijk١"],
)
def test_password_replaced(pw: str) -> None:
    got = rules.choose_password(pw)
    assert got != pw
    assert len(got) == 16 and set(got) <= ALNUM


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_chosen_password_is_always_safe_for_cloud_init(requested: str) -> None:
    got = rules.choose_password(requested)
    assert 12 <= len(got) <= 64
    assert set(got) <= ALNUM
    assert got == requested or len(got) == 16


# ---------------------------------------------------------------- guest user names


@pytest.mark.parametrize("name", ["user", "alice", "_svc", "a-b_c1", "a" * 32])
def test_guest_username_accepted(name: str) -> None:
    assert rules.guest_username(name) == name


@pytest.mark.parametrize(
    "name",
    ["root", "daemon", "sshd", "nobody", "www-data", "", "User", "1abc", "-x", "a" * 33, "user\n", "user\nroot",
     "us er", "user:0", "ü", "user;", "$(id)", "../x"],
)
def test_guest_username_refused(name: str) -> None:
    assert rules.guest_username(name) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_guest_username_never_contains_yaml_breakers(name: str) -> None:
    got = rules.guest_username(name)
    if got is not None:
        assert got == name
        assert set(got) <= set(string.ascii_lowercase + string.digits + "_-")


# ---------------------------------------------------------------- mint URLs (§4.2)


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("https://testnut.cashu.space", "https://testnut.cashu.space"),
        ("https://testnut.cashu.space/", "https://testnut.cashu.space"),
        ("HTTPS://Mint.Example/", "https://mint.example"),
        ("  https://mint.example  ", "https://mint.example"),
        ("https://mint.example:3338/", "https://mint.example:3338"),
        ("http://127.0.0.1:3338", "http://127.0.0.1:3338"),
        ("https://Mint.Example/Cashu/", "https://mint.example/Cashu"),  # path case is kept
        ("https://mint.example//", "https://mint.example"),
        ("ftp://mint.example", None),
        ("mint.example", None),
        ("https://", None),
        ("", None),
        ("https://mint.example/?x=1", None),
        ("https://mint.example/#frag", None),
        ("https://mint .example", None),
        ("http://[::1", None),
    ],
)
def test_normalize_mint_url(url: str, normalized: str | None) -> None:
    assert rules.normalize_mint_url(url) == normalized


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_normalize_mint_url_is_idempotent_and_total(url: str) -> None:
    once = rules.normalize_mint_url(url)
    if once is not None:
        assert rules.normalize_mint_url(once) == once
        assert not once.endswith("/")


# ---------------------------------------------------------------- ports (§3.5, reference rule)


@pytest.mark.parametrize(
    ("vmid", "start", "port_start", "port"),
    [(1000, 1000, None, 31000), (1999, 1000, None, 31999), (12345, 1000, None, 32345), (1007, 1000, 40000, 40007)],
)
def test_upstream_ssh_port(vmid: int, start: int, port_start: int | None, port: int) -> None:
    assert rules.upstream_ssh_port(vmid, start, port_start) == port


# ---------------------------------------------------------------- time formats (§0)


def test_rfc3339_offset_form() -> None:
    assert rfc3339(1777636800) == "2026-05-01T12:00:00+00:00"
    assert rfc3339(1777637400) == "2026-05-01T12:10:00+00:00"
    assert rfc3339(0) == "1970-01-01T00:00:00+00:00"


def test_human_utc() -> None:
    assert human_utc(1777636800) == "2026-05-01 12:00:00 UTC"

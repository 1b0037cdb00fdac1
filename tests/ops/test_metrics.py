"""Metrics: the Prometheus text format, the loopback HTTP endpoint, and the refusal to listen elsewhere."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from paygressd.ops.metrics import (
    CONTENT_TYPE,
    Metrics,
    MetricsConfigError,
    parse_listen,
    serve_metrics,
    spawn_outcome,
)
from paygressd.store import Store
from paygressd.wire import errors
from paygressd.wire.models import AccessDetails

EMPTY = """\
# HELP paygressd_spawns_total Spawn requests answered, by outcome.
# TYPE paygressd_spawns_total counter
# HELP paygressd_refunds_paid_total Refund tokens sent to consumers.
# TYPE paygressd_refunds_paid_total counter
paygressd_refunds_paid_total 0
# HELP paygressd_active_leases Leases currently active.
# TYPE paygressd_active_leases gauge
# HELP paygressd_redeem_seconds Time to redeem (swap) a consumer's token at the mint.
# TYPE paygressd_redeem_seconds histogram
paygressd_redeem_seconds_bucket{le="0.1"} 0
paygressd_redeem_seconds_bucket{le="1"} 0
paygressd_redeem_seconds_bucket{le="+Inf"} 0
paygressd_redeem_seconds_sum 0
paygressd_redeem_seconds_count 0
# HELP paygressd_relay_connected 1 when the relay connection is up, else 0.
# TYPE paygressd_relay_connected gauge
"""


def test_render_empty_registry() -> None:
    assert Metrics(redeem_buckets=(1.0, 0.1)).render() == EMPTY


def test_render_exact_text() -> None:
    m = Metrics(redeem_buckets=(0.1, 1.0))
    m.count_spawn("created")
    m.count_spawn("created")
    m.count_spawn("refunded")
    m.count_refund_paid()
    m.gauge_fn("paygressd_active_leases", lambda: 7)
    for seconds in (0.05, 0.1, 0.3, 4.0):
        m.observe_redeem(seconds)
    m.set_relay_connected("wss://b.example", False)
    m.set_relay_connected("wss://a.example", True)
    assert m.render() == """\
# HELP paygressd_spawns_total Spawn requests answered, by outcome.
# TYPE paygressd_spawns_total counter
paygressd_spawns_total{outcome="created"} 2
paygressd_spawns_total{outcome="refunded"} 1
# HELP paygressd_refunds_paid_total Refund tokens sent to consumers.
# TYPE paygressd_refunds_paid_total counter
paygressd_refunds_paid_total 1
# HELP paygressd_active_leases Leases currently active.
# TYPE paygressd_active_leases gauge
paygressd_active_leases 7
# HELP paygressd_redeem_seconds Time to redeem (swap) a consumer's token at the mint.
# TYPE paygressd_redeem_seconds histogram
paygressd_redeem_seconds_bucket{le="0.1"} 2
paygressd_redeem_seconds_bucket{le="1"} 3
paygressd_redeem_seconds_bucket{le="+Inf"} 4
paygressd_redeem_seconds_sum 4.45
paygressd_redeem_seconds_count 4
# HELP paygressd_relay_connected 1 when the relay connection is up, else 0.
# TYPE paygressd_relay_connected gauge
paygressd_relay_connected{relay="wss://a.example"} 1
paygressd_relay_connected{relay="wss://b.example"} 0
"""


def test_gauge_functions_are_read_at_every_scrape() -> None:
    m = Metrics()
    state = {"wss://r1": True, "wss://r2": False}
    m.gauge_fn("paygressd_relay_connected", lambda: {url: float(up) for url, up in state.items()})
    assert 'paygressd_relay_connected{relay="wss://r2"} 0\n' in m.render()
    state["wss://r2"] = True
    assert 'paygressd_relay_connected{relay="wss://r2"} 1\n' in m.render()


def test_refunds_counted_durably_from_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    m = Metrics()
    m.counter_fn("paygressd_refunds_paid_total", lambda: store.counter("refunds_paid"))
    assert "paygressd_refunds_paid_total 0\n" in m.render()
    store.add_counter("refunds_paid", 2)
    assert "paygressd_refunds_paid_total 2\n" in m.render()
    store.close()


def test_spawn_outcome_labels() -> None:
    details = AccessDetails(pod_npub="npub1x", node_port=31000, expires_at="2027-01-01T00:00:00+00:00",
                            cpu_millicores=1000, memory_mb=512, pod_spec_name="Basic", pod_spec_description="d",
                            instructions=["ssh root@127.0.0.1 -p 31000"])
    assert spawn_outcome(details) == "created"
    refused = errors.token_already_spent()
    assert spawn_outcome(refused) == "refused"
    assert spawn_outcome(refused.model_copy(update={"refund_token": "cashuBxyz"})) == "refunded"
    assert spawn_outcome(object()) == "refused"


def test_a_failing_gauge_function_does_not_break_the_scrape() -> None:
    m = Metrics()

    def broken() -> float:
        raise RuntimeError("store closed")

    m.gauge_fn("paygressd_active_leases", broken)
    m.count_refund_paid()
    text = m.render()
    assert "# TYPE paygressd_active_leases gauge\n# HELP paygressd_redeem_seconds" in text
    assert "paygressd_refunds_paid_total 1\n" in text


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.count_spawn('odd "outcome"\\\nx')
    assert 'paygressd_spawns_total{outcome="odd \\"outcome\\"\\\\\\nx"} 1\n' in m.render()


def test_misuse_is_refused() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="only goes up"):
        m.inc("paygressd_refunds_paid_total", -1)
    with pytest.raises(ValueError, match="takes labels"):
        m.inc("paygressd_spawns_total")
    with pytest.raises(TypeError):
        m.set("paygressd_spawns_total", 1, outcome="x")
    with pytest.raises(KeyError):
        m.inc("paygressd_nope_total")


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "192.0.2.1:9464", "[::]:9464", "10.1.2.3:9464"])
def test_non_loopback_is_refused(listen: str) -> None:
    with pytest.raises(MetricsConfigError, match="not a loopback address"):
        parse_listen(listen)


@pytest.mark.parametrize("listen", ["localhost:9464", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ""])
def test_malformed_listen_is_refused(listen: str) -> None:
    with pytest.raises(MetricsConfigError, match="expected IP:PORT"):
        parse_listen(listen)


def test_loopback_forms() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("127.0.0.2:1") == ("127.0.0.2", 1)
    assert parse_listen("[::1]:9464") == ("::1", 9464)


async def test_serve_refuses_a_public_address_without_binding() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MetricsConfigError):
        await serve_metrics(f"0.0.0.0:{port}", Metrics())
    with socket.socket() as s:  # nothing was left listening on any address
        s.bind(("0.0.0.0", port))


async def test_endpoint_over_real_http() -> None:
    m = Metrics()
    m.gauge_fn("paygressd_active_leases", lambda: 3)
    server = await serve_metrics("127.0.0.1:0", m)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            r = await client.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"] == CONTENT_TYPE
            assert r.text == m.render()
            assert "paygressd_active_leases 3\n" in r.text

            m.count_spawn("created")  # the next scrape sees it
            assert 'paygressd_spawns_total{outcome="created"} 1' in (await client.get("/metrics?x=1")).text

            assert (await client.get("/")).status_code == 404
            assert (await client.get("/metrics/x")).status_code == 404
            assert (await client.post("/metrics")).status_code == 404

        # a malformed request gets a 400, and the server keeps serving
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x01garbage\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
    finally:
        server.close()
        await server.wait_closed()

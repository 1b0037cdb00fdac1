"""Optional Prometheus metrics (``[metrics] enabled = true``): a tiny registry and a loopback-only HTTP endpoint.

The text exposition format (version 0.0.4) is written here by hand: a handful of families does not justify
a dependency. Values that live elsewhere (active leases, relay connections) are read at scrape time through
callables registered with ``gauge_fn``, so nothing has to push them.

The endpoint has no authentication, so it is bound to a loopback address only; anything else is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from paygressd.logging import get_logger

log = get_logger(__name__)

Kind = Literal["counter", "gauge", "histogram"]
GaugeValue = float | Mapping[str, float] | Mapping[tuple[str, ...], float]
GaugeFn = Callable[[], GaugeValue]

# Redeem p50 is ~0.13 s against a local mint; a remote mint adds round trips; > 10 s is a mint in trouble.
REDEEM_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REQUEST_TIMEOUT = 5.0
_MAX_REQUEST = 8192


class MetricsConfigError(ValueError):
    """metrics.listen is unusable; str() is the operator-facing message."""


@dataclass
class _Histogram:
    buckets: list[int]  # per bucket (not cumulative); the last one is +Inf
    total: float = 0.0
    count: int = 0


@dataclass
class _Family:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    histograms: dict[tuple[str, ...], _Histogram] = field(default_factory=dict)
    fn: GaugeFn | None = None


class Metrics:
    """The registry. The convenience methods below are what the daemon calls; all run on the event loop."""

    def __init__(self, redeem_buckets: Sequence[float] = REDEEM_BUCKETS) -> None:
        self._families: dict[str, _Family] = {}
        self.counter("paygressd_spawns_total", "Spawn requests answered, by outcome.", ("outcome",))
        self.counter("paygressd_refunds_paid_total", "Refund tokens sent to consumers.")
        self.gauge("paygressd_active_leases", "Leases currently active.")
        self.histogram("paygressd_redeem_seconds", "Time to redeem (swap) a consumer's token at the mint.",
                       redeem_buckets)
        self.gauge("paygressd_relay_connected", "1 when the relay connection is up, else 0.", ("relay",))

    # ------------------------------------------------------------------ what the daemon calls

    def count_spawn(self, outcome: str) -> None:
        self.inc("paygressd_spawns_total", outcome=outcome)

    def count_refund_paid(self) -> None:
        self.inc("paygressd_refunds_paid_total")

    def observe_redeem(self, seconds: float) -> None:
        self.observe("paygressd_redeem_seconds", seconds)

    def set_relay_connected(self, relay: str, connected: bool) -> None:
        self.set("paygressd_relay_connected", 1.0 if connected else 0.0, relay=relay)

    # ------------------------------------------------------------------ generic registry

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self._declare(_Family(name, "counter", help, tuple(labels)))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self._declare(_Family(name, "gauge", help, tuple(labels)))

    def histogram(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds:
            raise ValueError(f"{name}: a histogram needs at least one finite bucket")
        self._declare(_Family(name, "histogram", help, tuple(labels), buckets=bounds))

    def _declare(self, fam: _Family) -> None:
        if fam.name in self._families:
            raise ValueError(f"metric {fam.name} declared twice")
        self._families[fam.name] = fam
        if not fam.labels and fam.kind == "counter":
            fam.values[()] = 0.0  # an unlabelled counter exists from the start, at zero
        if not fam.labels and fam.kind == "histogram":
            fam.histograms[()] = _Histogram([0] * (len(fam.buckets) + 1))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        fam = self._family(name, "counter")
        if value < 0:
            raise ValueError(f"{name}: a counter only goes up")
        key = self._key(fam, labels)
        fam.values[key] = fam.values.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        fam = self._family(name, "gauge")
        fam.values[self._key(fam, labels)] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        fam = self._family(name, "histogram")
        key = self._key(fam, labels)
        h = fam.histograms.setdefault(key, _Histogram([0] * (len(fam.buckets) + 1)))
        index = next((i for i, b in enumerate(fam.buckets) if value <= b), len(fam.buckets))
        h.buckets[index] += 1
        h.total += value
        h.count += 1

    def gauge_fn(self, name: str, fn: GaugeFn) -> None:
        """Read this gauge from ``fn()`` at every scrape: a number, or {label value (tuple for several
        labels): number} for a labelled gauge. Replaces values set with ``set``."""
        self._family(name, "gauge").fn = fn

    def counter_fn(self, name: str, fn: GaugeFn) -> None:
        """Read this counter from ``fn()`` at every scrape, for a count kept durably elsewhere (the store's
        counters survive restarts). Replaces ``inc``; ``fn`` must never go down."""
        self._family(name, "counter").fn = fn

    def _family(self, name: str, kind: Kind) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            raise KeyError(f"metric {name} is not declared")
        if fam.kind != kind:
            raise TypeError(f"metric {name} is a {fam.kind}, not a {kind}")
        return fam

    @staticmethod
    def _key(fam: _Family, labels: Mapping[str, str]) -> tuple[str, ...]:
        if set(labels) != set(fam.labels):
            raise ValueError(f"{fam.name} takes labels {list(fam.labels)}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in fam.labels)

    # ------------------------------------------------------------------ exposition

    def render(self) -> str:
        out: list[str] = []
        for fam in self._families.values():
            out.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            out.append(f"# TYPE {fam.name} {fam.kind}")
            if fam.kind == "histogram":
                for key in sorted(fam.histograms):
                    out.extend(_histogram_lines(fam, key, fam.histograms[key]))
                continue
            values = fam.values
            if fam.fn is not None:
                try:
                    values = _gauge_values(fam, fam.fn())
                except Exception as exc:
                    # one broken source must not take the whole scrape down
                    log.warning("metrics_gauge_failed", metric=fam.name, error=repr(exc))
                    continue
            for key in sorted(values):
                out.append(f"{fam.name}{_labels(fam.labels, key)} {_fmt(values[key])}")
        return "\n".join(out) + "\n"


def _gauge_values(fam: _Family, got: GaugeValue) -> dict[tuple[str, ...], float]:
    if isinstance(got, Mapping):
        values: dict[tuple[str, ...], float] = {}
        for k, v in got.items():
            key = k if isinstance(k, tuple) else (k,)
            if len(key) != len(fam.labels):
                raise ValueError(f"{fam.name}: label values {key!r} do not match labels {list(fam.labels)}")
            values[tuple(str(x) for x in key)] = float(v)
        return values
    if fam.labels:
        raise ValueError(f"{fam.name} has labels {list(fam.labels)}: its function must return a mapping")
    return {(): float(got)}


def _histogram_lines(fam: _Family, key: tuple[str, ...], h: _Histogram) -> list[str]:
    lines = []
    cumulative = 0
    for bound, n in zip([*fam.buckets, math.inf], h.buckets, strict=True):
        cumulative += n
        lines.append(f"{fam.name}_bucket{_labels((*fam.labels, 'le'), (*key, _fmt(bound)))} {cumulative}")
    lines.append(f"{fam.name}_sum{_labels(fam.labels, key)} {_fmt(h.total)}")
    lines.append(f"{fam.name}_count{_labels(fam.labels, key)} {h.count}")
    return lines


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)) + "}"


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def spawn_outcome(reply: object) -> str:
    """The ``outcome`` label for a spawn's reply: created (access details sent), refunded (we had redeemed the
    token and gave it back) or refused (no money kept: rejected before or at redemption)."""
    from paygressd.wire.models import AccessDetails, ErrorReply

    if isinstance(reply, AccessDetails):
        return "created"
    if isinstance(reply, ErrorReply) and reply.refund_token:
        return "refunded"
    return "refused"


# ---------------------------------------------------------------------------------------------- HTTP


def parse_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``[::1]:9464`` -> (address, port); anything not loopback is refused."""
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        if not sep or not port_text.isdigit():
            raise ValueError
        address = ipaddress.ip_address(host)
        port = int(port_text)
        if port > 65535:
            raise ValueError
    except ValueError:
        raise MetricsConfigError(f"metrics.listen = {listen!r}: expected IP:PORT, e.g. 127.0.0.1:9464") from None
    if not address.is_loopback:
        raise MetricsConfigError(
            f"metrics.listen = {listen!r} is not a loopback address: the metrics endpoint has no "
            "authentication, so paygressd serves it on 127.0.0.1 or ::1 only (put a reverse proxy or an "
            "SSH tunnel in front to scrape it from elsewhere)"
        )
    return str(address), port


async def serve_metrics(listen: str, metrics: Metrics) -> asyncio.Server:
    """Serve ``GET /metrics`` on a loopback address (raises MetricsConfigError otherwise); 404 for anything else.

    The caller owns the server: ``server.close(); await server.wait_closed()`` on shutdown.
    """
    address, port = parse_listen(listen)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(request) != 3 or not request[2].startswith("HTTP/"):
                status, body = "400 Bad Request", b"bad request\n"
            elif request[0] == "GET" and request[1].split("?", 1)[0] == "/metrics":
                status, body = "200 OK", metrics.render().encode()
            else:
                status, body = "404 Not Found", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a slow, oversized or vanished client gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, address, port, reuse_address=True, limit=_MAX_REQUEST)

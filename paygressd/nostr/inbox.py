"""The request loop: inbound DM → rate limit → dispatch → handler → exactly one reply in the request's scheme.

Requests are split into lanes (spawn, top-up, light = status and refusals), each with its own concurrency
bound and backlog cap, so a slow spawn never delays a status reply and a flood never grows memory without
bound. Refusals made here (no handler call, token untouched):
- a spawn older than ``request_max_age`` → ``stale_request`` (top-ups and status are served whatever their age);
- more than ``rate_limit_requests`` per ``rate_limit_window`` from one requester → one ``rate_limited`` reply,
  then silence until the window ends;
- a lane whose backlog is full → ``rate_limited`` (the provider is overloaded);
- after ``stop_accepting()`` → ``shutting_down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from paygressd.logging import get_logger
from paygressd.nostr.transport import Inbound
from paygressd.wire import errors
from paygressd.wire.dispatch import Request, dispatch
from paygressd.wire.models import ErrorReply, SpawnRequest, TopUpRequest, WireModel

log = get_logger(__name__)

Handler = Callable[[Inbound, Request], Awaitable[WireModel]]
# Told whether the one reply reached at least one relay (e.g. to mark a refund as delivered).
AfterReply = Callable[[Inbound, bool], None]


class InboxTransport(Protocol):
    def inbox(self) -> AsyncIterator[Inbound]: ...

    async def send_dm(self, to_hex: str, scheme: str, payload_json: str) -> bool: ...


class Verdict(enum.Enum):
    ALLOW = "allow"
    WARN = "warn"  # first request over the limit: answer rate_limited once
    DROP = "drop"  # further requests in the same window: silence


@dataclass
class _Window:
    start: float
    count: int


class RateLimiter:
    """Fixed window per requester; the table is bounded (expired windows pruned, then the oldest evicted)."""

    def __init__(self, limit: int, window: float, max_tracked: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_tracked = max_tracked
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def check(self, key: str, now: float) -> Verdict:
        w = self._windows.get(key)
        if w is None or now - w.start >= self.window:
            w = _Window(start=now, count=0)
            self._windows[key] = w
            self._windows.move_to_end(key)  # ordered by window start: the oldest are first
            self._bound(now)
        w.count += 1
        if w.count <= self.limit:
            return Verdict.ALLOW
        return Verdict.WARN if w.count == self.limit + 1 else Verdict.DROP

    def _bound(self, now: float) -> None:
        if len(self._windows) <= self.max_tracked:
            return
        while self._windows:
            key, w = next(iter(self._windows.items()))
            if now - w.start < self.window and len(self._windows) <= self.max_tracked:
                break
            del self._windows[key]


class Lane(enum.Enum):
    SPAWN = "spawn"
    TOPUP = "topup"
    LIGHT = "light"


class Inbox:
    def __init__(
        self,
        transport: InboxTransport,
        handler: Handler,
        *,
        max_concurrent: int,
        request_max_age: int,
        rate_limit_requests: int,
        rate_limit_window: int,
        now: Callable[[], float] = time.time,
        backlog_per_lane: int | None = None,
        after_reply: AfterReply | None = None,
    ) -> None:
        self.transport = transport
        self.handler = handler
        self.after_reply = after_reply
        self.request_max_age = request_max_age
        self.limiter = RateLimiter(rate_limit_requests, rate_limit_window)
        self._now = now
        self._sems = {lane: asyncio.Semaphore(max_concurrent) for lane in Lane}
        self._pending = dict.fromkeys(Lane, 0)
        self.backlog_per_lane = backlog_per_lane if backlog_per_lane is not None else max(64, 8 * max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._stopped = asyncio.Event()
        self.stats: dict[str, int] = {"requests": 0, "replies": 0, "reply_failures": 0, "rate_limited": 0,
                                      "dropped": 0, "stale": 0, "overloaded": 0, "handler_errors": 0}

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve requests until stop() (or until the transport's inbox ends)."""
        iterator = self.transport.inbox()
        stop = asyncio.create_task(self._stopped.wait())
        try:
            while not self._stopped.is_set():
                nxt = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    break
                try:
                    inbound = nxt.result()
                except StopAsyncIteration:
                    break
                self._accept(inbound)
        finally:
            stop.cancel()
            with contextlib.suppress(Exception):
                await iterator.aclose()  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._stopped.set()

    def stop_accepting(self) -> None:
        """SIGTERM: new requests get ``shutting_down``; in-flight ones finish (see drain)."""
        self._accepting = False

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # ------------------------------------------------------------ per request

    def _accept(self, inbound: Inbound) -> None:
        now = self._now()
        self.stats["requests"] += 1
        verdict = self.limiter.check(inbound.requester, now)
        if verdict is Verdict.DROP:
            self.stats["dropped"] += 1
            return
        if verdict is Verdict.WARN:
            self.stats["rate_limited"] += 1
            log.info("rate_limited", requester=inbound.requester)
            self._start(Lane.LIGHT, inbound, errors.rate_limited())
            return
        if not self._accepting:
            self._start(Lane.LIGHT, inbound, errors.shutting_down())
            return
        request = dispatch(inbound.content)
        if isinstance(request, ErrorReply):
            self._start(Lane.LIGHT, inbound, request)
            return
        if isinstance(request, SpawnRequest):
            age = int(now) - inbound.created_at
            if age > self.request_max_age:
                self.stats["stale"] += 1
                log.info("stale_spawn_refused", event_id=inbound.event_id, age=age)
                self._start(Lane.LIGHT, inbound, errors.stale_request(age))
                return
            lane = Lane.SPAWN
        elif isinstance(request, TopUpRequest):
            lane = Lane.TOPUP
        else:
            lane = Lane.LIGHT
        if self._pending[lane] >= self.backlog_per_lane:
            self.stats["overloaded"] += 1
            log.warning("lane_full", lane=lane.value, event_id=inbound.event_id)
            self._start(Lane.LIGHT, inbound, errors.rate_limited())
            return
        self._start(lane, inbound, request)

    def _start(self, lane: Lane, inbound: Inbound, work: Request | ErrorReply) -> None:
        if lane is Lane.LIGHT and self._pending[lane] >= self.backlog_per_lane and isinstance(work, ErrorReply):
            # Even refusals are bounded: under a flood of junk the surplus is dropped silently.
            self.stats["dropped"] += 1
            return
        self._pending[lane] += 1
        task = asyncio.create_task(self._serve(lane, inbound, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, lane: Lane, inbound: Inbound, work: Request | ErrorReply) -> None:
        try:
            async with self._sems[lane]:
                if isinstance(work, ErrorReply):
                    reply: WireModel = work
                else:
                    try:
                        reply = await self.handler(inbound, work)
                    except Exception:
                        # The handler must not raise; if it does the requester still gets exactly one answer.
                        self.stats["handler_errors"] += 1
                        log.exception("handler_failed", event_id=inbound.event_id, lane=lane.value)
                        reply = errors.backend_error("internal error")
                sent = await self.transport.send_dm(inbound.requester, inbound.scheme, reply.to_json())
                if self.after_reply is not None:
                    try:
                        self.after_reply(inbound, sent)
                    except Exception:
                        log.exception("after_reply_failed", event_id=inbound.event_id)
                if sent:
                    self.stats["replies"] += 1
                else:
                    self.stats["reply_failures"] += 1
                    log.warning("reply_not_delivered", event_id=inbound.event_id, requester=inbound.requester)
        finally:
            self._pending[lane] -= 1

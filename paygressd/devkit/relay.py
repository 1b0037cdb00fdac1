"""A real nostr-sdk LocalRelay on loopback, in-process (tests, benchmarks, ``paygressd demo``).

In-memory and fast; restartable on the same port (events are lost on restart, as with any in-memory
relay). The default rate limit of nostr-sdk (60 events/minute per connection) is raised so tests can
push thousands of events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nostr_sdk import (
    LocalRelay,
    LocalRelayBuilder,
    LocalRelayBuilderNip42,
    LocalRelayBuilderNip42Mode,
    RateLimit,
    uniffi_set_event_loop,
)

from paygressd.devkit.ports import free_port


class DevRelay:
    """One LocalRelay bound to 127.0.0.1:<port>; ``stop()`` then ``start()`` restarts it on the same port."""

    __test__ = False  # the test suites import it as ``TestRelay``: pytest must not collect it

    def __init__(self, port: int | None = None, *, nip42: bool = False, auth_dm: bool = False,
                 max_reqs: int = 100_000, notes_per_minute: int = 10_000_000) -> None:
        self.port = port or free_port()
        self.nip42 = nip42
        self.auth_dm = auth_dm
        self.max_reqs = max_reqs
        self.notes_per_minute = notes_per_minute
        self._relay: LocalRelay | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._relay is not None

    async def start(self) -> None:
        if self._relay is not None:
            return
        # nostr-sdk calls back into Python (NIP-42 signing) from its own threads: tell it which loop to use.
        uniffi_set_event_loop(asyncio.get_running_loop())
        builder = (
            LocalRelayBuilder()
            .addr("127.0.0.1")
            .port(self.port)
            .rate_limit(RateLimit(max_reqs=self.max_reqs, notes_per_minute=self.notes_per_minute))
        )
        if self.nip42:
            builder = builder.nip42(LocalRelayBuilderNip42(mode=LocalRelayBuilderNip42Mode.BOTH))
        if self.auth_dm:
            builder = builder.auth_dm(True)
        last: Exception | None = None
        # After a stop the port may take a moment to be released.
        for _ in range(50):
            relay = builder.build()
            try:
                await relay.run()
            except Exception as exc:
                last = exc
                await asyncio.sleep(0.1)
                continue
            self._relay = relay
            return
        raise RuntimeError(f"LocalRelay could not bind 127.0.0.1:{self.port}: {last}")

    async def stop(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.shutdown()
            await asyncio.sleep(0.05)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def local_relay(
    port: int | None = None, *, nip42: bool = False, auth_dm: bool = False
) -> AsyncIterator[DevRelay]:
    relay = DevRelay(port, nip42=nip42, auth_dm=auth_dm)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()

"""The small service interfaces the provider core needs. Concrete classes live in their own packages.

The compute side's interface is the backend's own (``paygressd.vm.backend.Backend``), re-exported here.
"""

from __future__ import annotations

from typing import Protocol

from paygressd.payments.service import Redeemed
from paygressd.payments.tokens import DecodedToken
from paygressd.vm.backend import Backend


class Payments(Protocol):
    def check_offline(self, raw: str) -> DecodedToken: ...
    def expected_msats(self, tok: DecodedToken) -> int: ...
    async def redeem(self, tok: DecodedToken) -> Redeemed: ...
    async def recover(self, tok: DecodedToken) -> Redeemed | None: ...
    async def make_refund(self, mint: str, unit: str, amount: int, *, key: str | None = None) -> str: ...


class Messenger(Protocol):
    async def send_dm(self, to_hex: str, scheme: str, payload_json: str) -> bool: ...


__all__ = ["Backend", "Messenger", "Payments"]

"""Crash points for the crash-safety tests: ``PAYGRESSD_FAILPOINT=<name>`` makes the daemon die there.

Off unless the variable is set; the tests use it to kill the process at an exact step (e.g. between the
swap and the reply) and then check that a restart loses no money.
"""

from __future__ import annotations

import os

ENV = "PAYGRESSD_FAILPOINT"


def hit(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(86)

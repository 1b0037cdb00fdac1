"""Free loopback ports for the parts the devkit starts."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(count: int, start: int = 32000, end: int = 60000) -> tuple[int, int]:
    """A run of `count` consecutive loopback ports nobody listens on right now (for ssh_port_range)."""
    port = start + (os.getpid() * 7) % 2000  # spread parallel runs apart
    while port + count < end:
        if all(port_free(p) for p in range(port, port + count)):
            return port, port + count - 1
        port += count
    raise RuntimeError("no free port block")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

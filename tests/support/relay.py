"""A real nostr-sdk LocalRelay on loopback: moved to ``paygressd.devkit.relay`` (shared with the demo)."""

from paygressd.devkit.ports import free_port
from paygressd.devkit.relay import DevRelay as TestRelay
from paygressd.devkit.relay import local_relay

__all__ = ["TestRelay", "free_port", "local_relay"]

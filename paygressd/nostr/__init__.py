"""Nostr transport (relays, DMs, dedupe), the request loop, and discovery (offer + heartbeats)."""

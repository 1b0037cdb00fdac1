"""A real Nutshell mint on loopback and a consumer wallet: moved to ``paygressd.devkit.mint`` (shared with the demo)."""

from paygressd.devkit.mint import ConsumerWallet, CountingProxy, MintProcess, fake_invoice, free_port, run_mint

__all__ = ["ConsumerWallet", "CountingProxy", "MintProcess", "fake_invoice", "free_port", "run_mint"]

"""paygressd: a paygress-compatible provider daemon renting KVM VMs for Cashu over Nostr."""

__version__ = "0.1.0"

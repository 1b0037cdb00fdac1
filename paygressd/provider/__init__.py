"""The provider core: request handlers, the expiry scheduler and refunds, tying payments, backend and store."""

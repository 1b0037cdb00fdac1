"""Wire format of paygress 0.1.9: payload models, the error catalogue and request dispatch."""

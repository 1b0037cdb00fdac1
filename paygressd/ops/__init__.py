"""Operator commands: ``paygressd check`` (preflight), ``paygressd leases``, and the optional metrics endpoint."""

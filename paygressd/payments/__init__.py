"""The money path: offline token checks, NUT-03 redemption, refunds and the operator wallet.

Importing this package does not import Nutshell; only ``paygressd.payments.nutshell`` does, and it
contains Nutshell's import side effects (see that module).
"""

"""Pure rules with no I/O: lease math, pod ids, passwords, mint URLs, key formats."""

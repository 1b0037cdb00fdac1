"""Real local parts for development: a LocalRelay, a Nutshell mint, paygressd as a subprocess, guest images.

Shared by the test suites, the benchmarks and ``paygressd demo``; everything binds to loopback only.
"""

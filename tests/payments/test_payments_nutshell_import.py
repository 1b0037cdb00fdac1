"""Nutshell's import-time side effects stay contained (see paygressd/payments/nutshell.py).

Runs in a fresh interpreter, in a directory with a hostile ``.env`` and a HOME with a hostile
``~/.cashu/.env``, and checks each of the four side effects from the outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import asyncio, json, logging, os, sys
from pathlib import Path

env_before = dict(os.environ)
import paygressd.payments.service  # noqa: F401 - imports Nutshell through the quarantine
from paygressd.payments import nutshell as ns

# route stdlib logging somewhere we can see it
records = []
class H(logging.Handler):
    def emit(self, r):
        records.append((r.name, r.levelname, r.getMessage()))
logging.getLogger().addHandler(H())
logging.getLogger().setLevel(logging.DEBUG)

from loguru import logger
logger.info("loguru says hello")
logger.error("proof dump: secret=abcd C=02ff")
logger.trace("trace with secret")

async def make_wallet():
    w = await ns.open_wallet("http://127.0.0.1:9", Path(sys.argv[1]), "sat")  # a brand-new wallet DB
    await ns.close_wallet(w)
asyncio.run(make_wallet())

out = {
    "env_changed": sorted(k for k in set(env_before) | set(os.environ) if env_before.get(k) != os.environ.get(k)),
    "tracebacklimit": getattr(sys, "tracebacklimit", "unset"),
    "settings_debug": ns.settings.debug,
    "settings_tor": ns.settings.tor,
    "settings_socks": ns.settings.socks_proxy,
    "verbose": ns.settings.wallet_verbose_requests,
    "records": records,
    "cwd": os.getcwd(),
}
sys.stderr.write("RESULT " + json.dumps(out) + "\n")
"""

# No DEBUG here: an uncontained import would then set sys.tracebacklimit = 0.
HOSTILE = "PAYGRESSD_HOSTILE=1\nTOR=TRUE\nSOCKS_PROXY=127.0.0.1:1\nWALLET_VERBOSE_REQUESTS=TRUE\n"


@pytest.mark.parametrize("operator_debug", [False, True], ids=["dotenv", "operator-DEBUG-env"])
def test_import_side_effects_are_contained(tmp_path: Path, operator_debug: bool) -> None:
    work = tmp_path / "work"
    home = tmp_path / "home"
    (home / ".cashu").mkdir(parents=True)
    work.mkdir()
    (work / ".env").write_text(HOSTILE)
    (home / ".cashu" / ".env").write_text(HOSTILE.replace("PAYGRESSD_HOSTILE", "PAYGRESSD_HOSTILE_HOME"))
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "TOR", "SOCKS_PROXY")}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).parents[2]))
    if operator_debug:
        # DEBUG in the daemon's own environment would switch off TLS verification in Nutshell: forced off.
        env["DEBUG"] = "TRUE"

    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "wallet")],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    # 4. Nothing on stdout: not the "Generated a new mnemonic" line, not a request dump.
    assert proc.stdout == ""
    result_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("RESULT ")]
    assert len(result_lines) == 1
    # 3. loguru does not write to stderr itself: the only stderr line is ours.
    assert proc.stderr.strip().splitlines() == [result_lines[0]], proc.stderr
    res = json.loads(result_lines[0][len("RESULT "):])
    # 1. Neither .env reached os.environ or Nutshell's settings.
    assert res["env_changed"] == []
    assert (res["settings_debug"], res["settings_tor"], res["settings_socks"], res["verbose"]) == (
        False, False, None, False
    )
    # 2. The process keeps full tracebacks.
    assert res["tracebacklimit"] == "unset"
    assert res["cwd"] == str(work)
    # 3. loguru goes into stdlib logging, INFO and up, and proof material is withheld.
    msgs = [(name, level, msg) for name, level, msg in res["records"] if name == "paygressd.cashu"]
    assert ("paygressd.cashu", "INFO", "loguru says hello") in msgs
    assert not any("abcd" in m or "trace with" in m for _, _, m in msgs)
    assert any(level == "ERROR" and "withheld" in m for _, level, m in msgs)
    # The new wallet DB exists and is private.
    db = tmp_path / "wallet" / "wallet.sqlite3"
    assert db.exists() and (db.stat().st_mode & 0o077) == 0

"""Run paygressd as a real subprocess with a real config, for end-to-end tests, benchmarks and the demo."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nostr_sdk import Keys

from paygressd.devkit.guest import SOURCE_ROOT, guest_dir
from paygressd.devkit.ports import free_port_block


@dataclass
class TierSpec:
    id: str = "basic"
    name: str = "Basic"
    description: str = "1 vCPU, 512 MB (mini guest)"
    cpu_millicores: int = 1000
    memory_mb: int = 512
    rate_msats_per_sec: int = 1000
    disk_gb: int = 1


@dataclass
class DaemonConfig:
    work: Path
    relays: Sequence[str]
    mints: Sequence[str]
    tiers: Sequence[TierSpec] = field(default_factory=lambda: [TierSpec()])
    minimum_duration_seconds: int = 30
    heartbeat_interval_seconds: int = 5
    ssh_ready_timeout_seconds: int = 60
    vmid_range: tuple[int, int] = (1000, 1004)
    accel: str = "auto"
    name: str = "e2e-provider"
    images: Path | None = None  # where the mini guest images are; default guest_dir()

    def write(self) -> Path:
        """Write key + config (mini guest, its own copy of the base image) and return the config path."""
        self.work.mkdir(parents=True, exist_ok=True)
        key = self.work / "provider.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(Keys.generate().secret_key().to_bech32())
        images = self.work / "images"
        images.mkdir(exist_ok=True)
        src = self.images or guest_dir()
        for name in ("base-mini.qcow2", "vmlinuz", "mini-initrd.gz"):
            if not (images / name).exists():
                shutil.copy(src / name, images / name)
        ports = free_port_block(self.vmid_range[1] - self.vmid_range[0] + 1)
        tiers = "\n".join(
            f'[[tier]]\nid = "{t.id}"\nname = "{t.name}"\ndescription = "{t.description}"\n'
            f"cpu_millicores = {t.cpu_millicores}\nmemory_mb = {t.memory_mb}\n"
            f"rate_msats_per_sec = {t.rate_msats_per_sec}\ndisk_gb = {t.disk_gb}\n"
            for t in self.tiers
        )
        text = f"""
[provider]
name = "{self.name}"
public_ip = "127.0.0.1"
key_file = "provider.key"
state_dir = "state"
minimum_duration_seconds = {self.minimum_duration_seconds}
heartbeat_interval_seconds = {self.heartbeat_interval_seconds}
shutdown_grace_seconds = 30

[nostr]
relays = {json.dumps(list(self.relays))}

[cashu]
mints = {json.dumps(list(self.mints))}

[kvm]
base_image = "images/base-mini.qcow2"
kernel = "images/vmlinuz"
initrd = "images/mini-initrd.gz"
cmdline = "console=ttyS0 quiet"
vm_root = "state/vm"
vmid_range = [{self.vmid_range[0]}, {self.vmid_range[1]}]
ssh_port_range = [{ports[0]}, {ports[1]}]
listen_address = "127.0.0.1"
accel = "{self.accel}"
ssh_ready_timeout_seconds = {self.ssh_ready_timeout_seconds}
qemu_user = "nobody"
reserved_memory_mb = 0

{tiers}
"""
        path = self.work / "paygressd.toml"
        path.write_text(text)
        return path

    @property
    def pubkey_hex(self) -> str:
        return str(Keys.parse((self.work / "provider.key").read_text().strip()).public_key().to_hex())


def read_json_log(path: Path, offset: int = 0) -> list[dict[str, object]]:
    """The JSON log lines of a paygressd log file from byte ``offset`` on (other lines skipped)."""
    out: list[dict[str, object]] = []
    with open(path, "rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


class DaemonProcess:
    """``paygressd run`` as a child process; its JSON log lines go to <work>/daemon.log."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, *, new_session: bool = False) -> None:
        self.config_path = config_path
        self.log_path = config_path.parent / "daemon.log"
        self.env = env or {}
        # Own session: a Ctrl-C at the terminal reaches only the parent, which stops the daemon itself.
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def launch(self) -> None:
        """Start the process (Popen returns at once); ``start`` also waits until it listens."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ, **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "paygressd", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(SOURCE_ROOT),
                start_new_session=self.new_session,
            )

    async def start(self, ready_within: float = 90.0) -> None:
        self.launch()
        await self.wait_log("paygressd listening", ready_within)

    def events(self) -> list[dict[str, object]]:
        """Log lines written since the last start, parsed."""
        return read_json_log(self.log_path, self._log_offset)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_log(self, event: str, within: float) -> dict[str, object]:
        end = time.monotonic() + within
        while time.monotonic() < end:
            for e in self.events():
                if e.get("event") == event:
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"paygressd exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(0.2)
        raise TimeoutError(f"no {event!r} in the daemon log within {within}s:\n{self.log_text()[-4000:]}")

    async def stop(self, timeout: float = 60.0) -> int:  # noqa: ASYNC109
        """SIGTERM and wait: the daemon's graceful shutdown."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)  # no-op when it already exited
        rc = await asyncio.to_thread(self.proc.wait, timeout)
        self.proc = None
        return rc

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109
        assert self.proc is not None
        rc = await asyncio.to_thread(self.proc.wait, timeout)
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

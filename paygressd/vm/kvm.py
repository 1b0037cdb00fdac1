"""KvmBackend: one daemonized qemu per lease, with a qcow2 overlay, a NoCloud seed and an SSH forward.

qemu is started with -daemonize in its own session, so it outlives the daemon; a restarted daemon finds
its VMs again through reconcile() (by /proc cmdline, not by trusting pidfiles).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from paygressd.config import KvmSection, Tier
from paygressd.logging import get_logger
from paygressd.vm import host
from paygressd.vm.accel import AccelVerdict, detect_accel, qemu_version
from paygressd.vm.backend import (
    Backend,
    BackendError,
    Capacity,
    CapacityError,
    ReconcileReport,
    Reservation,
    VmRequest,
    VmState,
    WantedVm,
)
from paygressd.vm.cloudinit import write_seed_iso
from paygressd.vm.qemu import (
    READY_MARKER,
    SERIAL_CHARDEV,
    LaunchSpec,
    QemuOptions,
    VmPaths,
    build_argv,
    check_path,
    effective_disk_gb,
    effective_memory_mb,
    hostfwd,
)
from paygressd.vm.qmp import QmpError, qmp_command

log = get_logger(__name__)
GiB = 2**30
LAUNCH_TIMEOUT = 60.0
_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class KvmBackend:
    isolation_level = "dedicated-host"

    def __init__(self, kvm: KvmSection, state_dir: Path | None = None, tiers: Sequence[Tier] = ()) -> None:
        """state_dir keeps the accel probe's verdict (default: vm_root)."""
        self.cfg = kvm
        self.tiers = list(tiers)
        self.root = kvm.vm_root
        self.state_dir = state_dir if state_dir is not None else kvm.vm_root
        self.accel: str = kvm.accel if kvm.accel != "auto" else "tcg"  # final after start()
        self.accel_verdict: AccelVerdict | None = None
        self._reservations: dict[int, Reservation] = {}
        self._ready_pid: dict[int, int] = {}  # vmid -> the qemu pid that was seen ready
        self._leased: set[int] = set()  # vmids in the last reconcile's wanted list
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._base_format = "qcow2"
        self._base_virtual = 0
        self._runas: str | None = None
        self._started = False

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        cfg = self.cfg
        try:
            for p in (self.root, cfg.base_image, cfg.kernel, cfg.initrd):
                if p is not None:
                    check_path(p)
            hostfwd(cfg.listen_address, cfg.ssh_port_range[0])
        except ValueError as exc:
            raise BackendError(f"kvm config: {exc}") from exc
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in (cfg.base_image, cfg.kernel, cfg.initrd):
            if p is not None and not p.is_file():
                raise BackendError(f"kvm: {p} does not exist (build it: deploy/build-guest-image.sh)")
        try:
            await qemu_version(cfg.qemu_binary)
        except OSError as exc:
            raise BackendError(f"kvm: qemu is not usable ({cfg.qemu_binary}): {exc}") from exc
        info = await self._run_json(["qemu-img", "info", "--output=json", str(cfg.base_image)])
        self._base_format = str(info.get("format", ""))
        size = info.get("virtual-size", 0)
        self._base_virtual = size if isinstance(size, int) else 0
        if self._base_format not in ("qcow2", "raw"):
            raise BackendError(f"kvm: base image {cfg.base_image} has format {self._base_format!r}; need qcow2/raw")
        if os.geteuid() == 0:
            if cfg.qemu_user:
                try:
                    pwd.getpwnam(cfg.qemu_user)
                except KeyError as exc:
                    raise BackendError(f"kvm: qemu_user {cfg.qemu_user!r} does not exist") from exc
                self._runas = cfg.qemu_user
            else:
                log.warning("qemu_runs_as_root", hint="set kvm.qemu_user so qemu drops privileges (-runas)")
        try:
            self.accel_verdict = await detect_accel(cfg, cache_dir=self.state_dir)
        except OSError as exc:
            raise BackendError(f"kvm: {exc}") from exc
        self.accel = self.accel_verdict.accel
        self._started = True
        log.info("kvm_backend_started", accel=self.accel, accel_reason=self.accel_verdict.reason,
                 cached=self.accel_verdict.cached, base_format=self._base_format, vm_root=str(self.root))

    # ------------------------------------------------------------------ reservations and capacity

    def capacity(self) -> Capacity:
        cpu_total = max(0, host.cpu_millicores_total() - self.cfg.reserved_cpu_millicores)
        mem_total = max(0, host.memory_mb_total() - self.cfg.reserved_memory_mb)
        disk_total, disk_free = host.disk_bytes(self.root if self.root.exists() else self.root.parent)
        held = self._reservations.values()
        # an overlay grows up to its virtual size; what it already uses is gone from disk_free
        disk_held = sum(max(0, r.disk_gb * GiB - host.allocated_bytes(VmPaths.for_vm(self.root, r.vmid).disk))
                        for r in held)
        return Capacity(
            cpu_millicores_free=max(0, cpu_total - sum(r.cpu_millicores for r in held)),
            memory_mb_free=max(0, mem_total - sum(r.memory_mb for r in held)),
            disk_gb_free=max(0, (disk_free - disk_held) // GiB),
            cpu_millicores_total=cpu_total,
            memory_mb_total=mem_total,
            disk_gb_total=disk_total // GiB,
        )

    def reserve(self, cpu_millicores: int, memory_mb: int, disk_gb: int) -> Reservation:
        mem = effective_memory_mb(memory_mb)
        disk = effective_disk_gb(disk_gb, self._base_virtual)
        cap = self.capacity()
        if cpu_millicores > cap.cpu_millicores_free:
            raise CapacityError(f"not enough CPU: {cpu_millicores} millicores needed, "
                                f"{cap.cpu_millicores_free} free")
        if mem > cap.memory_mb_free:
            raise CapacityError(f"not enough memory: {mem} MB needed, {cap.memory_mb_free} MB free")
        if disk > cap.disk_gb_free:
            raise CapacityError(f"not enough disk: {disk} GB needed, {cap.disk_gb_free} GB free")
        lo, hi = self.cfg.vmid_range
        vmid = next((i for i in range(lo, hi + 1)
                     if i not in self._reservations and not VmPaths.for_vm(self.root, i).dir.exists()), None)
        if vmid is None:
            raise CapacityError(f"no free VM id: all {hi - lo + 1} are in use")
        used_ports = {r.port for r in self._reservations.values()}
        plo, phi = self.cfg.ssh_port_range
        port = next((p for p in range(plo, phi + 1)
                     if p not in used_ports and host.port_bindable(self.cfg.listen_address, p)), None)
        if port is None:
            raise CapacityError(f"no free SSH port in {plo}-{phi} on {self.cfg.listen_address}")
        r = Reservation(vmid=vmid, port=port, cpu_millicores=cpu_millicores, memory_mb=mem, disk_gb=disk)
        self._reservations[vmid] = r
        return r

    def release(self, r: Reservation) -> None:
        if self._reservations.get(r.vmid) == r:
            del self._reservations[r.vmid]

    def reservations(self) -> dict[int, Reservation]:
        return dict(self._reservations)

    # ------------------------------------------------------------------ lifecycle

    async def create(self, req: VmRequest) -> None:
        r = req.reservation
        if self._reservations.get(r.vmid) != r:
            raise BackendError(f"vm {r.vmid}: not reserved (reserve() first)")
        paths = VmPaths.for_vm(self.root, r.vmid)
        async with self._locks[r.vmid]:
            try:
                paths.dir.mkdir(mode=0o700)
            except FileExistsError as exc:
                raise BackendError(f"vm {r.vmid}: {paths.dir} already exists") from exc
            except OSError as exc:
                raise BackendError(f"vm {r.vmid}: cannot create {paths.dir}: {exc.strerror or exc}") from exc
            try:
                await self._run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.cfg.base_image),
                                 "-F", self._base_format, str(paths.disk), f"{r.disk_gb}G"])
                write_seed_iso(paths.seed, r.vmid, req.password, req.guest_user)
                self._write_meta(paths, r, req.guest_user)
                await self._launch(LaunchSpec(r.vmid, r.port, r.cpu_millicores, r.memory_mb))
            except BaseException as exc:
                # leave nothing behind: the id and port must be reusable (§8 item 19)
                self._destroy_now(r.vmid)
                if isinstance(exc, BackendError):
                    raise
                if isinstance(exc, Exception):
                    raise BackendError(f"vm {r.vmid}: create failed: {exc}") from exc
                raise
        log.info("vm_created", vmid=r.vmid, port=r.port, accel=self.accel, guest_user=req.guest_user)

    async def wait_ready(self, vmid: int, timeout: float) -> bool:  # noqa: ASYNC109 (interface)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        paths = VmPaths.for_vm(self.root, vmid)
        while True:
            pid = host.find_qemu(self.root, vmid)
            if pid is None:
                return False  # qemu died: it will not get ready
            if await self._ready_now(vmid, paths, pid):
                return True
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.5)

    async def status(self, vmid: int) -> VmState:
        paths = VmPaths.for_vm(self.root, vmid)
        pid = host.find_qemu(self.root, vmid)
        if pid is not None:
            return VmState.RUNNING if await self._ready_now(vmid, paths, pid) else VmState.STARTING
        return VmState.STOPPED if paths.dir.exists() else VmState.ABSENT

    async def stop(self, vmid: int, grace: float = 30.0) -> None:
        """ACPI power button, then SIGKILL after `grace` seconds (pid verified against /proc first)."""
        async with self._locks[vmid]:
            await self._stop(vmid, graceful_timeout=grace)

    async def delete(self, vmid: int) -> None:
        """Kill (the disk is being thrown away, so no graceful wait) and remove everything; frees id and port."""
        async with self._locks[vmid]:
            await self._stop(vmid, graceful_timeout=0.0)
            self._remove_dir(vmid)
            self._reservations.pop(vmid, None)
            self._leased.discard(vmid)
        log.info("vm_deleted", vmid=vmid)

    async def reconcile(self, wanted: list[WantedVm]) -> ReconcileReport:
        report = ReconcileReport()
        wanted_ids = {w.vmid for w in wanted}
        # Reserved here but never in a lease list: a spawn in progress (its lease is not written yet).
        # Once a vmid was wanted, dropping out of the list means its lease is over.
        in_flight = set(self._reservations) - wanted_ids - self._leased
        self._leased = set(wanted_ids)
        procs = host.scan_qemus(self.root)
        for w in wanted:
            self._reservations[w.vmid] = Reservation(
                vmid=w.vmid, port=w.port, cpu_millicores=w.cpu_millicores,
                memory_mb=effective_memory_mb(w.memory_mb), disk_gb=effective_disk_gb(w.disk_gb, self._base_virtual))
            paths = VmPaths.for_vm(self.root, w.vmid)
            async with self._locks[w.vmid]:
                if w.vmid in procs:
                    report.adopted.append(w.vmid)
                    continue
                if not (paths.disk.is_file() and paths.seed.is_file()):
                    log.error("vm_lost", vmid=w.vmid, reason="overlay or seed missing; cannot restart")
                    report.failed.append(w.vmid)
                    continue
                try:
                    await self._launch(LaunchSpec(w.vmid, w.port, w.cpu_millicores, w.memory_mb))
                except BackendError as exc:
                    log.error("vm_restart_failed", vmid=w.vmid, error=str(exc))
                    report.failed.append(w.vmid)
                else:
                    log.warning("vm_restarted", vmid=w.vmid, reason="lease valid but qemu was not running")
                    report.restarted.append(w.vmid)
        keep = wanted_ids | in_flight
        orphans = (set(procs) | self._vm_dirs()) - keep
        for vmid in sorted(orphans):
            async with self._locks[vmid]:
                await self._stop(vmid, graceful_timeout=0.0)
                self._remove_dir(vmid)
                self._reservations.pop(vmid, None)
            log.warning("vm_orphan_removed", vmid=vmid)
            report.removed.append(vmid)
        return report

    # ------------------------------------------------------------------ internals

    def _qemu_options(self) -> QemuOptions:
        c = self.cfg
        return QemuOptions(binary=c.qemu_binary, accel=self.accel, listen_address=c.listen_address,
                           kernel=c.kernel, initrd=c.initrd, cmdline=c.cmdline, runas=self._runas)

    async def _launch(self, spec: LaunchSpec) -> None:
        paths = VmPaths.for_vm(self.root, spec.vmid)
        for stale in (paths.serial, paths.pidfile, paths.qmp):
            stale.unlink(missing_ok=True)  # a restart must not see the last boot's readiness marker
        self._ready_pid.pop(spec.vmid, None)
        try:
            argv = build_argv(self._qemu_options(), paths, spec)
        except ValueError as exc:
            raise BackendError(f"vm {spec.vmid}: {exc}") from exc
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, cwd="/",
            env={"PATH": _ENV_PATH, "LANG": "C"},  # the daemon's environment is none of qemu's business
        )
        try:
            async with asyncio.timeout(LAUNCH_TIMEOUT):
                _, err = await proc.communicate()
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise BackendError(f"vm {spec.vmid}: qemu did not daemonize within {LAUNCH_TIMEOUT:.0f} s") from exc
        text = err.decode(errors="replace").strip()
        if proc.returncode != 0:
            last = text.splitlines()[-1] if text else "no message"
            raise BackendError(f"vm {spec.vmid}: qemu exited with {proc.returncode}: {last}")
        if text:
            log.warning("qemu_stderr", vmid=spec.vmid, stderr=text[-500:])
        pid = host.read_pidfile(paths.pidfile)
        if pid is None or not host.alive(pid, paths, spec.vmid):
            raise BackendError(f"vm {spec.vmid}: qemu daemonized but its pidfile names no live qemu")
        with contextlib.suppress(OSError):
            os.chmod(paths.serial, 0o600)
        log.info("qemu_started", vmid=spec.vmid, pid=pid, port=spec.port, accel=self.accel)

    async def _ready_now(self, vmid: int, paths: VmPaths, pid: int) -> bool:
        if self._ready_pid.get(vmid) == pid:
            return True
        if not host.marker_seen(paths.serial, READY_MARKER.encode()):
            return False
        port = self._port_of(vmid, paths)
        if port is None or not await host.ssh_banner(self._probe_host(), port):
            return False
        self._ready_pid[vmid] = pid
        await self._mute_serial(vmid, paths)
        return True

    async def _mute_serial(self, vmid: int, paths: VmPaths) -> None:
        """After the marker, the serial log is only a way for a tenant to fill the host's disk: drop it."""
        try:
            await qmp_command(paths.qmp, "chardev-change",
                              {"id": SERIAL_CHARDEV, "backend": {"type": "null", "data": {}}}, wait=5.0)
        except (QmpError, TimeoutError, OSError, ValueError) as exc:
            log.warning("serial_mute_failed", vmid=vmid, error=str(exc))

    def _probe_host(self) -> str:
        a = self.cfg.listen_address
        return "127.0.0.1" if a == "0.0.0.0" else a

    def _port_of(self, vmid: int, paths: VmPaths) -> int | None:
        r = self._reservations.get(vmid)
        if r is not None:
            return r.port
        try:
            return int(json.loads(paths.meta.read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def _stop(self, vmid: int, graceful_timeout: float) -> None:
        paths = VmPaths.for_vm(self.root, vmid)
        self._ready_pid.pop(vmid, None)
        pid = host.find_qemu(self.root, vmid)
        if pid is None:
            return
        if graceful_timeout > 0:
            try:
                await qmp_command(paths.qmp, "system_powerdown", wait=min(5.0, graceful_timeout))
            except (QmpError, TimeoutError, OSError, ValueError) as exc:
                log.warning("qmp_powerdown_failed", vmid=vmid, error=str(exc))
            if await host.wait_gone(pid, paths, vmid, graceful_timeout):
                log.info("vm_stopped", vmid=vmid, how="acpi")
                return
        host.signal_verified(pid, paths, vmid, signal.SIGKILL)
        if not await host.wait_gone(pid, paths, vmid, 10.0):
            raise BackendError(f"vm {vmid}: qemu pid {pid} survived SIGKILL")
        log.info("vm_stopped", vmid=vmid, how="kill")

    def _destroy_now(self, vmid: int) -> None:
        """Synchronous cleanup for failure paths (safe to run while being cancelled)."""
        paths = VmPaths.for_vm(self.root, vmid)
        pid = host.find_qemu(self.root, vmid)
        if pid is not None:
            host.signal_verified(pid, paths, vmid, signal.SIGKILL)
        self._remove_dir(vmid)
        self._ready_pid.pop(vmid, None)

    def _remove_dir(self, vmid: int) -> None:
        d = VmPaths.for_vm(self.root, vmid).dir
        if d.parent == self.root and d.name.isdigit():  # never rm anything but a VM dir
            shutil.rmtree(d, ignore_errors=True)

    def _vm_dirs(self) -> set[int]:
        try:
            return {int(e.name) for e in os.scandir(self.root) if e.name.isdigit() and e.is_dir()}
        except FileNotFoundError:
            return set()

    def _write_meta(self, paths: VmPaths, r: Reservation, guest_user: str | None) -> None:
        # no password here: it lives only in the 0600 seed ISO (§8 item 22)
        meta = {"vmid": r.vmid, "port": r.port, "cpu_millicores": r.cpu_millicores, "memory_mb": r.memory_mb,
                "disk_gb": r.disk_gb, "guest_user": guest_user, "created_at": int(time.time())}
        paths.meta.write_text(json.dumps(meta))

    async def _run(self, argv: list[str]) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={"PATH": _ENV_PATH, "LANG": "C"},
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise BackendError(f"{argv[0]} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
        return out

    async def _run_json(self, argv: list[str]) -> dict[str, object]:
        try:
            out = await self._run(argv)
        except FileNotFoundError as exc:
            raise BackendError(f"kvm: {argv[0]} is not installed") from exc
        value = json.loads(out)
        if not isinstance(value, dict):
            raise BackendError(f"{argv[0]}: unexpected output")
        return value


def _conforms(b: KvmBackend) -> Backend:
    return b  # mypy proves KvmBackend satisfies the Backend protocol the provider core types against

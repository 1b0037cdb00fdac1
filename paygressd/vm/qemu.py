"""Pure qemu pieces: per-VM paths, resource clamps, the argv, and recognising our own qemu in /proc."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

MIN_MEMORY_MB = 512  # below this a Debian cloud guest (cloud-init is Python) swaps itself to death
READY_MARKER = "paygress-guest-ready"  # printed on the serial console by the guest when logins work
SERIAL_CHARDEV = "serial0"
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


def vm_name(vmid: int) -> str:
    return f"paygress-{vmid}"


@dataclass(frozen=True)
class VmPaths:
    """Everything of one VM lives in <vm_root>/<vmid>/; nothing else is ever created for it."""

    dir: Path

    @classmethod
    def for_vm(cls, vm_root: Path, vmid: int) -> VmPaths:
        return cls(vm_root / str(vmid))

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.dir / "seed.iso"

    @property
    def serial(self) -> Path:
        return self.dir / "serial.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def meta(self) -> Path:
        return self.dir / "vm.json"


def effective_memory_mb(memory_mb: int) -> int:
    return max(MIN_MEMORY_MB, memory_mb)


def smp_for(cpu_millicores: int) -> int:
    """vCPUs for a millicore share: 1500 m -> 2 vCPUs (a vCPU is never split)."""
    return max(1, math.ceil(cpu_millicores / 1000))


def effective_disk_gb(disk_gb: int, base_virtual_bytes: int) -> int:
    """The overlay can never be smaller than the base image it sits on."""
    return max(1, disk_gb, math.ceil(base_virtual_bytes / 2**30))


@dataclass(frozen=True)
class QemuOptions:
    """Host-wide settings (config.kvm plus what start() found out)."""

    binary: str
    accel: str  # "kvm" | "tcg"
    listen_address: str
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    runas: str | None = None


@dataclass(frozen=True)
class LaunchSpec:
    vmid: int
    port: int
    cpu_millicores: int
    memory_mb: int


def kernel_cmdline(cmdline: str | None) -> str:
    """Serial output costs a lot under TCG (notes: ~95 s vs ~210 s to ssh), so always boot `quiet`."""
    words = (cmdline or "console=ttyS0").split()
    if "quiet" not in words:
        words.append("quiet")
    return " ".join(words)


def hostfwd(listen_address: str, port: int) -> str:
    """The SSH forward binds the configured address only (never all interfaces by accident)."""
    addr = ipaddress.ip_address(listen_address)
    if addr.version != 4:
        # qemu 7.2: "Invalid host forwarding rule 'tcp:[::1]:…' (Bad host address)"
        raise ValueError(f"listen_address {listen_address} is IPv6; qemu's user-mode forwards need IPv4")
    return f"hostfwd=tcp:{addr}:{port}-:22"


def check_path(p: Path) -> None:
    """qemu's option syntax splits on ',' and ':' after 'file:'; refuse instead of mis-quoting."""
    s = str(p)
    if "," in s or "\n" in s or not p.is_absolute():
        raise ValueError(f"path {s!r} must be absolute and contain no ',' or newline")


def build_argv(opts: QemuOptions, paths: VmPaths, spec: LaunchSpec) -> list[str]:
    for p in (paths.disk, paths.seed, paths.serial, paths.pidfile, paths.qmp):
        check_path(p)
    if len(str(paths.qmp).encode()) > _UNIX_PATH_MAX:
        raise ValueError(f"QMP socket path too long for a unix socket: {paths.qmp}")
    if opts.accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg, not {opts.accel!r}")
    name = vm_name(spec.vmid)
    argv = [
        opts.binary,
        "-name", f"{name},process={name}",
        "-nodefaults",
        "-no-user-config",
        "-machine", "q35",
        # default CPU model on both: `-cpu host` aborts qemu under kvm_pvm, `-cpu max` is slower on TCG
        "-accel", opts.accel,
        "-m", str(effective_memory_mb(spec.memory_mb)),
        "-smp", str(smp_for(spec.cpu_millicores)),
    ]
    if opts.kernel is not None and opts.initrd is not None:
        check_path(opts.kernel)
        check_path(opts.initrd)
        argv += ["-kernel", str(opts.kernel), "-initrd", str(opts.initrd), "-append", kernel_cmdline(opts.cmdline)]
    argv += [
        "-drive", f"file={paths.disk},if=virtio,format=qcow2",
        "-drive", f"file={paths.seed},if=virtio,format=raw,readonly=on",
        "-netdev", f"user,id=net0,{hostfwd(opts.listen_address, spec.port)}",
        "-device", "virtio-net-pci,netdev=net0",
        # -nographic cannot be combined with -daemonize (§8 item 16): redirect each channel explicitly
        "-display", "none",
        # the serial log carries the readiness marker; it is a named chardev so the backend can switch
        # it to "null" once the guest is ready (a tenant writing to ttyS0 must not fill the host's disk)
        "-chardev", f"file,id={SERIAL_CHARDEV},path={paths.serial}",
        "-serial", f"chardev:{SERIAL_CHARDEV}",
        "-monitor", "none",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
        "-pidfile", str(paths.pidfile),
        "-daemonize",
        # spawn=deny forbids the fork of -daemonize, and elevateprivileges=deny makes qemu 7.2 exit 1
        # silently with -daemonize (tested); the rest of the seccomp filter still applies
        "-sandbox", "on,obsolete=deny,resourcecontrol=deny",
    ]
    if opts.runas:
        argv += ["-runas", opts.runas]
    return argv


def is_our_qemu(cmdline: bytes, paths: VmPaths, vmid: int) -> bool:
    """True when a /proc/<pid>/cmdline is the qemu we launched for exactly this VM (pid-reuse guard)."""
    args = cmdline.split(b"\0")
    return _arg_after(args, b"-pidfile") == str(paths.pidfile).encode() and _arg_after(args, b"-name") == (
        f"{vm_name(vmid)},process={vm_name(vmid)}".encode()
    )


def vmid_of_cmdline(cmdline: bytes, vm_root: Path) -> int | None:
    """The vmid of a paygress qemu whose VM lives under vm_root, else None."""
    args = cmdline.split(b"\0")
    pid = _arg_after(args, b"-pidfile")
    if pid is None:
        return None
    p = Path(pid.decode(errors="replace"))
    if p.name != "qemu.pid" or p.parent.parent != vm_root or not p.parent.name.isdigit():
        return None
    vmid = int(p.parent.name)
    return vmid if is_our_qemu(cmdline, VmPaths.for_vm(vm_root, vmid), vmid) else None


def _arg_after(args: list[bytes], flag: bytes) -> bytes | None:
    try:
        i = args.index(flag)
    except ValueError:
        return None
    return args[i + 1] if i + 1 < len(args) else None

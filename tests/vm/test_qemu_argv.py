"""The qemu command line: every flag the guest, the host's safety and the lifecycle code depend on."""

from __future__ import annotations

from pathlib import Path

import pytest

from paygressd.vm.qemu import (
    LaunchSpec,
    QemuOptions,
    VmPaths,
    build_argv,
    effective_disk_gb,
    effective_memory_mb,
    is_our_qemu,
    kernel_cmdline,
    smp_for,
    vmid_of_cmdline,
)

ROOT = Path("/var/lib/paygressd/vm")


def argv_for(vmid: int = 1003, port: int = 31007, cpu: int = 2000, mem: int = 2048, **opts: object) -> list[str]:
    o: dict[str, object] = {"binary": "qemu-system-x86_64", "accel": "tcg", "listen_address": "203.0.113.5"}
    o.update(opts)
    return build_argv(QemuOptions(**o), VmPaths.for_vm(ROOT, vmid), LaunchSpec(vmid, port, cpu, mem))  # type: ignore[arg-type]


def value(argv: list[str], flag: str) -> str:
    i = argv.index(flag)
    return argv[i + 1]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_daemonized_headless_with_files_scoped_to_the_vm() -> None:
    argv = argv_for()
    d = "/var/lib/paygressd/vm/1003"
    assert argv[0] == "qemu-system-x86_64"
    assert "-daemonize" in argv
    assert "-nographic" not in argv  # qemu refuses -nographic with -daemonize (§8 item 16)
    assert value(argv, "-display") == "none"
    assert value(argv, "-monitor") == "none"
    assert value(argv, "-chardev") == f"file,id=serial0,path={d}/serial.log"
    assert value(argv, "-serial") == "chardev:serial0"
    assert value(argv, "-pidfile") == f"{d}/qemu.pid"
    assert value(argv, "-qmp") == f"unix:{d}/qmp.sock,server=on,wait=off"
    assert values(argv, "-drive") == [
        f"file={d}/disk.qcow2,if=virtio,format=qcow2",
        f"file={d}/seed.iso,if=virtio,format=raw,readonly=on",
    ]
    assert value(argv, "-name") == "paygress-1003,process=paygress-1003"
    assert "-nodefaults" in argv


def test_ssh_forward_binds_only_the_listen_address() -> None:
    argv = argv_for(port=31007, listen_address="203.0.113.5")
    assert value(argv, "-netdev") == "user,id=net0,hostfwd=tcp:203.0.113.5:31007-:22"
    assert value(argv, "-device") == "virtio-net-pci,netdev=net0"
    assert "tcp::31007" not in " ".join(argv)  # the upstream form listens on every interface


def test_ipv6_listen_address_is_refused_not_mangled() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        argv_for(listen_address="::1")


def test_sandbox_always_and_runas_only_when_configured() -> None:
    argv = argv_for()
    assert value(argv, "-sandbox").startswith("on,")
    assert "obsolete=deny" in value(argv, "-sandbox")
    assert "-runas" not in argv
    argv = argv_for(runas="paygress-qemu")
    assert value(argv, "-runas") == "paygress-qemu"
    # spawn=deny would kill -daemonize's fork (qemu 7.2 dies with SIGSYS); never emit it
    assert "spawn=deny" not in value(argv, "-sandbox")


def test_accel_never_hardcodes_cpu_host() -> None:
    for accel in ("kvm", "tcg"):
        argv = argv_for(accel=accel)
        assert value(argv, "-accel") == accel
        assert "host" not in values(argv, "-cpu")  # -cpu host aborts qemu under kvm_pvm
    with pytest.raises(ValueError):
        argv_for(accel="auto")


@pytest.mark.parametrize(("requested", "expected"), [(1, 512), (256, 512), (511, 512), (512, 512), (4096, 4096)])
def test_memory_is_clamped_to_a_bootable_minimum(requested: int, expected: int) -> None:
    assert effective_memory_mb(requested) == expected
    assert value(argv_for(mem=requested), "-m") == str(expected)


@pytest.mark.parametrize(("millicores", "smp"), [(1, 1), (250, 1), (1000, 1), (1001, 2), (1500, 2), (4000, 4)])
def test_vcpus_from_millicores(millicores: int, smp: int) -> None:
    assert smp_for(millicores) == smp
    assert value(argv_for(cpu=millicores), "-smp") == str(smp)


def test_disk_never_smaller_than_base() -> None:
    assert effective_disk_gb(10, 2 * 2**30) == 10
    assert effective_disk_gb(1, 2 * 2**30 + 1) == 3
    assert effective_disk_gb(0, 0) == 1


def test_direct_kernel_boot_appends_quiet_once() -> None:
    argv = argv_for(kernel=Path("/g/vmlinuz"), initrd=Path("/g/initrd.img"), cmdline="root=/dev/vda rw console=ttyS0")
    assert value(argv, "-kernel") == "/g/vmlinuz"
    assert value(argv, "-initrd") == "/g/initrd.img"
    assert value(argv, "-append") == "root=/dev/vda rw console=ttyS0 quiet"
    assert kernel_cmdline("console=ttyS0 quiet") == "console=ttyS0 quiet"
    assert kernel_cmdline(None) == "console=ttyS0 quiet"
    assert "-kernel" not in argv_for()  # no kernel configured: the image boots its own bootloader


def test_paths_with_commas_are_refused() -> None:
    with pytest.raises(ValueError, match=","):
        build_argv(QemuOptions("q", "tcg", "127.0.0.1"), VmPaths(Path("/a,b/1")), LaunchSpec(1, 2, 1000, 512))


def test_own_qemu_is_recognised_by_cmdline_and_nothing_else() -> None:
    argv = argv_for(vmid=1003)
    cmdline = "\0".join(argv).encode() + b"\0"
    assert is_our_qemu(cmdline, VmPaths.for_vm(ROOT, 1003), 1003)
    assert vmid_of_cmdline(cmdline, ROOT) == 1003
    # another VM's qemu, a recycled pid running something else, a zombie, another vm_root
    assert not is_our_qemu(cmdline, VmPaths.for_vm(ROOT, 1004), 1004)
    assert not is_our_qemu(b"sleep\x00100\x00", VmPaths.for_vm(ROOT, 1003), 1003)
    assert not is_our_qemu(b"", VmPaths.for_vm(ROOT, 1003), 1003)
    assert vmid_of_cmdline(cmdline, Path("/other/root")) is None
    forged = cmdline.replace(b"paygress-1003,process", b"paygress-1004,process")
    assert vmid_of_cmdline(forged, ROOT) is None

"""Guest images and SSH logins for real qemu guests: moved to ``paygressd.devkit.guest`` (shared with the demo)."""

from paygressd.devkit.guest import (
    BUILD_SCRIPT,
    FULL_FILES,
    MINI_FILES,
    build_images,
    guest_dir,
    images_present,
    kvm_section,
    missing_reason,
    ssh_run,
)
from paygressd.devkit.guest import SOURCE_ROOT as REPO
from paygressd.devkit.ports import free_port_block

__all__ = [
    "BUILD_SCRIPT", "FULL_FILES", "MINI_FILES", "REPO", "build_images", "free_port_block", "guest_dir",
    "images_present", "kvm_section", "missing_reason", "ssh_run",
]

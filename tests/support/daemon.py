"""paygressd as a real subprocess with a real config: moved to ``paygressd.devkit.daemon`` (shared with the demo)."""

from paygressd.devkit.daemon import DaemonConfig, DaemonProcess, TierSpec, read_json_log
from paygressd.devkit.guest import SOURCE_ROOT as REPO

__all__ = ["REPO", "DaemonConfig", "DaemonProcess", "TierSpec", "read_json_log"]

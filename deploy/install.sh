#!/usr/bin/env bash
# Install paygressd on Debian 12 (or another Debian/Ubuntu with Python 3.11) as root, from the source tree
# this script sits in. Idempotent: a second run changes nothing; an existing config or key is never overwritten.
#
#   deploy/install.sh [--image PATH | --flavour full|mini | --skip-image] [--public-ip ADDR] [--no-start]
#
# What it does, in order:
#   1. apt: qemu-system-x86 qemu-utils python3-venv (--no-apt skips; never with --root)
#   2. the system user `paygressd` in group kvm (systemd-sysusers; /etc/sysusers.d/paygressd.conf)
#   3. directories /etc/paygressd, /var/lib/paygressd{,/vm,/images}
#   4. a venv in /opt/paygressd/venv with the package pip-installed from this tree (reinstalled when it changed)
#   5. the secret key /etc/paygressd/nostr.key (0600 root; the unit hands it to the daemon as a credential)
#   6. a guest image in /var/lib/paygressd/images: built with deploy/build-guest-image.sh, or imported (--image)
#   7. /etc/paygressd/config.toml from config.example.toml, paths adjusted, validated
#   8. the unit /etc/systemd/system/paygressd.service; enabled and started when systemd runs as PID 1
#
# Options for tests and special setups:
#   --root DIR          install into DIR instead of / (no apt, no systemctl; users written into DIR/etc)
#   --venv-from DIR     use an existing venv (symlinked as /opt/paygressd/venv) instead of creating one
#   --no-venv           skip the venv step entirely (key generation then needs an existing venv)
#   --config-template F template instead of config.example.toml
#   --dry-run           print what would change, change nothing
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
APT=1
IMAGE_MODE=build
IMAGE_PATH=""
FLAVOUR=full
VENV_MODE=create
VENV_FROM=""
PUBLIC_IP=""
START=1
DRY=0
CONFIG_TEMPLATE="$SRC/config.example.toml"
PYTHON=${PYTHON:-/usr/bin/python3}

# Paths as the installed system sees them (the config and unit name these; files are written under $ROOT).
ETC=/etc/paygressd
STATE=/var/lib/paygressd
VM_ROOT=$STATE/vm
IMAGES=$STATE/images
OPT=/opt/paygressd
VENV=$OPT/venv
UNIT=/etc/systemd/system/paygressd.service
SYSUSERS=/etc/sysusers.d/paygressd.conf
# systemd puts LoadCredential= files here (= $CREDENTIALS_DIRECTORY inside the service).
CRED_KEY=/run/credentials/paygressd.service/nostr.key
SVC_USER=paygressd

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
note() { echo "install.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$(realpath -m "${2:?--root needs a directory}"); shift ;;
    --no-apt) APT=0 ;;
    --skip-image) IMAGE_MODE=skip ;;
    --image) IMAGE_MODE=import; IMAGE_PATH=${2:?--image needs a file}; shift ;;
    --flavour) FLAVOUR=${2:?--flavour needs full or mini}; shift ;;
    --venv-from) VENV_MODE="link"; VENV_FROM=$(realpath -m "${2:?--venv-from needs a directory}"); shift ;;
    --no-venv) VENV_MODE=skip ;;
    --public-ip) PUBLIC_IP=${2:?--public-ip needs an address}; shift ;;
    --config-template) CONFIG_TEMPLATE=${2:?--config-template needs a file}; shift ;;
    --no-start) START=0 ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done
case "$FLAVOUR" in full|mini) ;; *) die "--flavour must be full or mini" ;; esac
[ "$ROOT" = / ] && ROOT=""
[ -n "$ROOT" ] && APT=0
if [ "$(id -u)" != 0 ] && [ "$DRY" = 0 ]; then die "run as root (or with --dry-run)"; fi

CHANGES=0
changed() { CHANGES=$((CHANGES + 1)); if [ "$DRY" = 1 ]; then note "would: $*"; else note "changed: $*"; fi; }
# Run a mutating command unless --dry-run.
act() { if [ "$DRY" = 0 ]; then "$@"; fi; }
r() { echo "$ROOT$1"; }

# ------------------------------------------------------------------ 1. packages
APT_PACKAGES=(qemu-system-x86 qemu-utils python3-venv)
if [ "$APT" = 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    changed "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    act apt-get update -qq
    act apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  note "skipping apt (needs: ${APT_PACKAGES[*]})"
fi

# ------------------------------------------------------------------ 2. system user
# systemd-sysusers writes passwd/group/shadow the same way on the host and under --root.
SYSUSERS_CONF='# paygressd system user; written by deploy/install.sh
u paygressd - "paygressd provider daemon" /var/lib/paygressd /usr/sbin/nologin
# /dev/kvm is root:kvm 0660
m paygressd kvm
'
write_if_differs() {  # path mode content: (re)write a small managed file when its content differs
  local path=$1 mode=$2 content=$3
  if [ -f "$path" ] && [ "$(cat "$path")" = "$(printf '%s' "$content")" ]; then return 0; fi
  changed "write $path"
  if [ "$DRY" = 0 ]; then
    mkdir -p "$(dirname "$path")"
    printf '%s' "$content" > "$path.tmp" && chmod "$mode" "$path.tmp" && mv "$path.tmp" "$path"
  fi
}
write_if_differs "$(r $SYSUSERS)" 0644 "$SYSUSERS_CONF"

user_ready() {
  grep -q "^$SVC_USER:" "$(r /etc/passwd)" 2>/dev/null &&
    grep -Eq "^kvm:[^:]*:[^:]*:(.*,)?$SVC_USER(,|$)" "$(r /etc/group)" 2>/dev/null
}
if ! user_ready; then
  changed "create system user $SVC_USER (group kvm)"
  if command -v systemd-sysusers >/dev/null; then
    if [ -n "$ROOT" ]; then act systemd-sysusers --root="$ROOT" paygressd.conf
    else act systemd-sysusers paygressd.conf; fi
  elif [ -z "$ROOT" ]; then
    act groupadd -f --system kvm
    getent passwd "$SVC_USER" >/dev/null || act useradd --system --user-group --home-dir "$STATE" \
      --no-create-home --shell /usr/sbin/nologin --comment "paygressd provider daemon" "$SVC_USER"
    act usermod -a -G kvm "$SVC_USER"
  else
    note "no systemd-sysusers: user $SVC_USER NOT created under $ROOT"
  fi
fi

# uid/gid as the target system knows them (under --root the host may not have the user at all).
id_of() {  # file name -> numeric id, or empty
  awk -F: -v n="$2" '$1 == n { print $3; exit }' "$(r "$1")" 2>/dev/null || true
}
SVC_UID=$(id_of /etc/passwd "$SVC_USER")
SVC_GID=$(id_of /etc/group "$SVC_USER")
if [ -z "$SVC_UID" ] && [ "$DRY" = 0 ]; then die "user $SVC_USER missing after creation"; fi

# Make path have mode and owner (uid:gid numbers); report only real changes.
ensure_attr() {
  local path=$1 mode=$2 owner=$3
  [ -z "$owner" ] || [ "$owner" = ":" ] && owner=0:0
  if [ "$DRY" = 1 ] && [ ! -e "$path" ]; then return 0; fi
  local cur; cur=$(stat -c '%a %u:%g' "$path")
  local want; want="$(printf '%o' "0$mode") $owner"
  if [ "$cur" != "$want" ]; then
    changed "$path: $cur -> $want"
    act chmod "$mode" "$path"
    act chown "$owner" "$path"
  fi
}
ensure_dir() {
  local path=$1 mode=$2 owner=$3
  if [ ! -d "$path" ]; then
    changed "mkdir $path ($mode $owner)"
    act mkdir -p "$path"; act chmod "$mode" "$path"; act chown "$owner" "$path"
    return 0
  fi
  ensure_attr "$path" "$mode" "$owner"
}

# ------------------------------------------------------------------ 3. directories
ensure_dir "$(r $ETC)" 0750 "0:$SVC_GID"
ensure_dir "$(r $STATE)" 0750 "$SVC_UID:$SVC_GID"
ensure_dir "$(r $VM_ROOT)" 0750 "$SVC_UID:$SVC_GID"
# Base images are read (never written) by the daemon's qemu: root-owned, group-readable.
ensure_dir "$(r $IMAGES)" 0750 "0:$SVC_GID"
ensure_dir "$(r $OPT)" 0755 0:0

# ------------------------------------------------------------------ 4. venv
source_hash() {  # what pip would install: changes here mean the venv must be reinstalled
  local paths=(pyproject.toml paygressd); [ -f "$SRC/README.md" ] && paths+=(README.md)
  (cd "$SRC" && find "${paths[@]}" -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path 'paygressd.egg-info/*' -print0 2>/dev/null \
    | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-32
}
case "$VENV_MODE" in
  link)
    [ -x "$VENV_FROM/bin/python" ] || die "--venv-from $VENV_FROM: no bin/python there"
    if [ "$(readlink "$(r $VENV)" 2>/dev/null || true)" != "$VENV_FROM" ]; then
      [ -e "$(r $VENV)" ] && [ ! -L "$(r $VENV)" ] && die "$(r $VENV) exists and is not a link; remove it first"
      changed "link $(r $VENV) -> $VENV_FROM"
      act ln -sfn "$VENV_FROM" "$(r $VENV)"
    fi
    ;;
  create)
    if [ ! -x "$(r $VENV)/bin/python" ]; then
      "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
        die "$PYTHON is not Python 3.11 (paygressd needs 3.11); set PYTHON=/path/to/python3.11"
      changed "create venv $(r $VENV)"
      act "$PYTHON" -m venv "$(r $VENV)"
    fi
    want=$(source_hash)
    have=$(cat "$(r $VENV)/.paygressd-source" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
      changed "pip install paygressd ($want) into $(r $VENV)"
      if [ "$DRY" = 0 ]; then
        # Build from a copy: an in-tree build would leave build/ and egg-info behind in the source tree.
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        cp -r "$SRC/pyproject.toml" "$SRC/paygressd" "$tmp/"
        if [ -f "$SRC/README.md" ]; then cp "$SRC/README.md" "$tmp/"; fi
        find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
        "$(r $VENV)/bin/pip" install -q "$tmp"
        # Same version number, new code (an upgrade from a newer tree): make sure the new files land.
        "$(r $VENV)/bin/pip" install -q --force-reinstall --no-deps "$tmp"
        rm -rf "$tmp"; trap - EXIT
        echo "$want" > "$(r $VENV)/.paygressd-source"
      fi
    fi
    ;;
  skip) note "skipping the venv (--no-venv)" ;;
esac
PAYGRESSD="$(r $VENV)/bin/paygressd"
VPY="$(r $VENV)/bin/python"

# ------------------------------------------------------------------ 5. key
KEY="$(r $ETC)/nostr.key"
if [ ! -e "$KEY" ]; then
  [ -x "$PAYGRESSD" ] || [ "$DRY" = 1 ] || die "cannot generate the key: no $PAYGRESSD"
  changed "generate the provider key $KEY"
  act "$PAYGRESSD" keygen --out "$KEY" >&2
fi
# Root-only: systemd reads it for LoadCredential=, the daemon never opens this file.
ensure_attr "$KEY" 0600 0:0

# ------------------------------------------------------------------ 6. guest image
# Sets BASE_IMAGE and KERNEL/INITRD/CMDLINE (empty: the image boots by itself through its bootloader).
KERNEL="" INITRD="" CMDLINE=""
case "$IMAGE_MODE" in
  import)
    BASE_IMAGE=$IMAGES/base.qcow2
    [ -f "$IMAGE_PATH" ] || die "--image $IMAGE_PATH: no such file"
    if [ ! -e "$(r "$BASE_IMAGE")" ]; then
      changed "import $IMAGE_PATH as $(r "$BASE_IMAGE")"
      if [ "$DRY" = 0 ]; then
        fmt=$(qemu-img info --output=json "$IMAGE_PATH" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["format"])')
        qemu-img convert -f "$fmt" -O qcow2 "$IMAGE_PATH" "$(r "$BASE_IMAGE").tmp"
        mv "$(r "$BASE_IMAGE").tmp" "$(r "$BASE_IMAGE")"
      fi
    fi
    ensure_attr "$(r "$BASE_IMAGE")" 0440 "0:$SVC_GID"
    ;;
  build|skip)
    # Defaults = what deploy/build-guest-image.sh writes to append.txt / mini-append.txt.
    if [ "$FLAVOUR" = full ]; then
      BASE_IMAGE=$IMAGES/base.qcow2 INITRD=$IMAGES/initrd.img CMDLINE="root=/dev/vda rw console=ttyS0"
      APPEND=$IMAGES/append.txt
    else
      BASE_IMAGE=$IMAGES/base-mini.qcow2 INITRD=$IMAGES/mini-initrd.gz CMDLINE="console=ttyS0"
      APPEND=$IMAGES/mini-append.txt
    fi
    KERNEL=$IMAGES/vmlinuz
    if [ "$IMAGE_MODE" = build ]; then
      builder="$SRC/deploy/build-guest-image.sh"
      [ -x "$builder" ] || die "no $builder: pass --image PATH (a cloud image) or --skip-image"
      # The builder keeps a stamp and does nothing when the image is current; it reports on stdout.
      if [ ! -f "$(r "$BASE_IMAGE")" ]; then changed "build the $FLAVOUR guest image in $(r $IMAGES)"; fi
      if [ "$DRY" = 0 ]; then "$builder" "$(r $IMAGES)" "$FLAVOUR" >&2; fi
      if [ -f "$(r "$APPEND")" ]; then CMDLINE=$(cat "$(r "$APPEND")"); fi
      for f in "$BASE_IMAGE" "$KERNEL" "$INITRD"; do
        [ -e "$(r "$f")" ] && ensure_attr "$(r "$f")" "$([ "$f" = "$BASE_IMAGE" ] && echo 0440 || echo 0640)" "0:$SVC_GID"
      done
    else
      note "skipping the guest image (--skip-image): put $BASE_IMAGE, $KERNEL and $INITRD in place before starting"
    fi
    ;;
esac

# ------------------------------------------------------------------ 7. config
CONFIG="$(r $ETC)/config.toml"
if [ ! -e "$CONFIG" ]; then
  [ -f "$CONFIG_TEMPLATE" ] || die "no config template $CONFIG_TEMPLATE (pass --config-template FILE)"
  changed "write $CONFIG from $CONFIG_TEMPLATE"
  if [ "$DRY" = 0 ]; then
    # Line edits keep the template's comments; a key commented out in the template is uncommented in place.
    KEY_FILE=$CRED_KEY STATE_DIR=$STATE VM_ROOT=$VM_ROOT BASE_IMAGE=$BASE_IMAGE KERNEL=$KERNEL INITRD=$INITRD \
    CMDLINE=$CMDLINE PUBLIC_IP=$PUBLIC_IP "$PYTHON" - "$CONFIG_TEMPLATE" "$CONFIG.tmp" <<'PY'
import json
import os
import re
import sys

src, dst = sys.argv[1], sys.argv[2]
lines = open(src, encoding="utf-8").read().splitlines()


def section_span(name: str) -> tuple[int, int]:
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{name}]"), None)
    if start is None:
        lines.extend(["", f"[{name}]"])
        return len(lines) - 1, len(lines)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    return start, end


def key_line(name: str, key: str, commented: bool) -> int | None:
    start, end = section_span(name)
    pat = re.compile(rf"^\s*{'#' if commented else ''}\s*{re.escape(key)}\s*=")
    return next((i for i in range(start + 1, end) if pat.match(lines[i])), None)


def set_key(name: str, key: str, value: str) -> None:
    line = f"{key} = {json.dumps(value)}"  # a JSON string is a valid TOML basic string
    i = key_line(name, key, False)
    if i is None:
        i = key_line(name, key, True)
    if i is None:
        lines.insert(section_span(name)[0] + 1, line)
    else:
        lines[i] = line


def unset_key(name: str, key: str) -> None:
    i = key_line(name, key, False)
    if i is not None:
        lines[i] = "# " + lines[i].lstrip()


env = os.environ
set_key("provider", "key_file", env["KEY_FILE"])
set_key("provider", "state_dir", env["STATE_DIR"])
if env["PUBLIC_IP"]:
    set_key("provider", "public_ip", env["PUBLIC_IP"])
set_key("kvm", "vm_root", env["VM_ROOT"])
set_key("kvm", "base_image", env["BASE_IMAGE"])
for key in ("kernel", "initrd", "cmdline"):
    if env[key.upper()]:
        set_key("kvm", key, env[key.upper()])
    else:
        unset_key("kvm", key)
with open(dst, "w", encoding="utf-8") as fh:
    fh.write("\n".join(lines) + "\n")
PY
    chmod 0640 "$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
  fi
fi
ensure_attr "$CONFIG" 0640 "0:$SVC_GID"

# Validate what the daemon will read: the config schema, and the key (read from its on-disk path, since the
# credential copy only exists while the service runs). Read-only, so --dry-run does it too: that is the check.
PLACEHOLDER_IP=0
if [ -x "$VPY" ] && [ -f "$CONFIG" ] && [ -f "$KEY" ]; then
  rc=0
  "$VPY" - "$CONFIG" "$KEY" <<'PY' || rc=$?
import ipaddress
import sys
from pathlib import Path

from paygressd.config import ConfigError, load_config
from paygressd.core.keys import KeyFileError, load_keys

try:
    cfg = load_config(Path(sys.argv[1]))
    keys = load_keys(Path(sys.argv[2]))
except (ConfigError, KeyFileError) as exc:
    print(f"install.sh: {exc}", file=sys.stderr)
    sys.exit(1)
print(f"install.sh: config ok ({len(cfg.tier)} tier(s), public_ip {cfg.provider.public_ip});"
      f" provider npub {keys.public_key().to_bech32()}", file=sys.stderr)
# The example's address is from a documentation range (RFC 5737): consumers could never connect to it.
try:
    example = any(ipaddress.ip_address(cfg.provider.public_ip) in ipaddress.ip_network(n)
                  for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
except ValueError:
    example = False  # a DNS name
if example:
    print(f"install.sh: warning: provider.public_ip {cfg.provider.public_ip} is an example address; set your"
          " host's address (--public-ip ADDR or edit the config); the service is not started until then",
          file=sys.stderr)
    sys.exit(3)
PY
  case "$rc" in
    0) ;;
    3) PLACEHOLDER_IP=1 ;;
    *) die "the installed config or key does not validate (see above)" ;;
  esac
fi

# ------------------------------------------------------------------ 8. unit and docs
UNIT_CHANGED=0
install_file() {  # src dst mode
  if [ -f "$2" ] && cmp -s "$1" "$2"; then ensure_attr "$2" "$3" 0:0; return 1; fi
  changed "install $2"
  act mkdir -p "$(dirname "$2")"
  act install -m "$3" -o 0 -g 0 "$1" "$2"
  return 0
}
install_file "$SRC/systemd/paygressd.service" "$(r $UNIT)" 0644 && UNIT_CHANGED=1
install_file "$SRC/docs/operations.md" "$(r $OPT)/doc/operations.md" 0644 || true

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  # systemd is PID 1 here.
  if [ "$UNIT_CHANGED" = 1 ]; then act systemctl daemon-reload; fi
  if [ "$START" = 1 ] && [ "$PLACEHOLDER_IP" = 0 ]; then
    if ! systemctl is-enabled --quiet paygressd.service || ! systemctl is-active --quiet paygressd.service; then
      changed "systemctl enable --now paygressd.service"
      act systemctl enable --now paygressd.service
    elif [ "$CHANGES" -gt 0 ]; then
      # Upgrade: KillMode=process keeps the tenants' VMs running across this restart.
      changed "systemctl restart paygressd.service (new code or unit)"
      act systemctl restart paygressd.service
    fi
  elif ! systemctl is-enabled --quiet paygressd.service; then
    changed "systemctl enable paygressd.service"
    act systemctl enable paygressd.service
  fi
else
  note "systemd is not PID 1 here (or --root): unit installed, not enabled or started"
fi

note "done: $CHANGES change(s)$([ "$DRY" = 1 ] && echo ' (dry run: nothing was changed)')"

#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian 12 machine, as root:
# apt packages, a venv in .venv with paygressd and its test extras, and the cached guest images.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc
  qemu-system-x86 qemu-utils           # the VMs
  openssh-client sshpass               # tests log in to guests for real
  mmdebstrap cpio kmod e2fsprogs       # deploy/build-guest-image.sh
  systemd                              # systemd-analyze security --offline (unit hardening check)
  openssl                              # the check command's TLS tests make a self-signed certificate
)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

# Guest images for the VM tests (about 2 minutes the first time, cached by content key).
if [ -x deploy/build-guest-image.sh ]; then
  deploy/build-guest-image.sh .cache/guest all
fi

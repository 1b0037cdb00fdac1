#!/bin/bash
# build-guest-image.sh: build the qemu guest images paygressd boots, from Debian packages only
# (no cloud-image download). Runs as root on Debian 12 with only the Debian apt mirror reachable.
# Derived from the tested recipe in the project notes (shared/guest/build-guest-image.sh).
#
# Usage: deploy/build-guest-image.sh OUTDIR [full|mini|all]      (default: all)
# Env:   MIRROR (default: first URI in /etc/apt/sources.list.d/debian.sources, else deb.debian.org), SUITE (bookworm)
#
# Outputs in OUTDIR (re-runs with the same cache key in OUTDIR/stamp do nothing):
#   vmlinuz          linux-image-cloud-amd64 kernel, for qemu -kernel (both flavours)
#   full flavour: a real Debian guest (systemd, cloud-init, openssh-server, sudo, systemd-networkd)
#     base.qcow2     ext4 on the whole disk (no partition table): root=/dev/vda
#     initrd.img     the matching initramfs-tools initrd
#     append.txt     kernel command line: root=/dev/vda rw console=ttyS0
#     NOTE: sshd keeps Debian's defaults here (PermitRootLogin prohibit-password); paygressd's user-data
#     must open root password login itself, exactly as on a stock cloud image.
#   mini flavour: busybox + dropbear initramfs standing in for cloud-init (boots to ssh in about 10 s under TCG)
#     mini-initrd.gz   boot with -kernel vmlinuz -initrd mini-initrd.gz -append 'console=ttyS0'
#     base-mini.qcow2  64M ext4 disk that /init mounts at /mnt (it appends to /mnt/boot-log.txt)
#     mini-append.txt  kernel command line for it
#
# Guest contract (what paygressd gives every guest):
#   /dev/vda  qcow2 overlay of the base image;  /dev/vdb  NoCloud seed ISO, volume id "cidata"
#   user-data: '#cloud-config' whose chpasswd.users entries are one line each, '    - {name: "N", password: "P",
#   type: text}', for root and the consumer's user; the mini /init reads only those lines and
#   local-hostname/instance-id from meta-data.
#   When passwords and sshd are in place the guest prints "paygress-guest-ready" on the serial console.
set -euo pipefail

OUT=${1:?usage: $0 OUTDIR [full|mini|all]}
WHAT=${2:-all}
case "$WHAT" in full|mini|all) ;; *) echo "usage: $0 OUTDIR [full|mini|all]" >&2; exit 2;; esac
SUITE=${SUITE:-bookworm}
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
SELF_HASH=$(sha256sum "$0" | cut -c1-16)
KEY="$SELF_HASH-$SUITE-$WHAT"
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$KEY" ]; then
  echo "cached: $OUT (key $KEY)"; exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "$0: must run as root (mmdebstrap --mode=root)" >&2; exit 1; fi
rm -f "$OUT/stamp"
WORK=$(mktemp -d /tmp/guest-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
t() { echo "[$(date +%T)] $*"; }

t "host packages"
export DEBIAN_FRONTEND=noninteractive
need=(mmdebstrap qemu-utils e2fsprogs)
[ "$WHAT" != full ] && need+=(cpio kmod)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------- root filesystem (kernel for both flavours)
t "mmdebstrap $SUITE from $MIRROR"
ROOT=$WORK/rootfs
mmdebstrap --variant=minbase --mode=root \
  --include=systemd-sysv,udev,dbus,openssh-server,cloud-init,sudo,linux-image-cloud-amd64,initramfs-tools,iproute2,isc-dhcp-client \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='echo "LABEL=rootfs / ext4 defaults 0 1" > "$1/etc/fstab"' \
  --customize-hook='echo guest > "$1/etc/hostname"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd.service' \
  --customize-hook='printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n" > "$1/etc/systemd/network/99-fallback-dhcp.network"' \
  --customize-hook='printf "datasource_list: [ NoCloud, None ]\nlocale: C.UTF-8\n" > "$1/etc/cloud/cloud.cfg.d/90_local.cfg"' \
  --customize-hook='chroot "$1" systemctl disable apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer getty@tty1.service || true' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  --customize-hook=': > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$SUITE" "$ROOT" "$MIRROR"
KVER=$(ls "$ROOT"/usr/lib/modules | head -1)
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"

# ---------------------------------------------------------------- full flavour
if [ "$WHAT" != mini ]; then
  t "full: kernel $KVER, ext4 image"
  cp "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"
  echo "root=/dev/vda rw console=ttyS0" > "$OUT/append.txt"
  # mke2fs -d copies the tree (owners, modes, symlinks, devices) into a fresh fs: no loop device, no mount
  mke2fs -q -t ext4 -L rootfs -d "$ROOT" "$WORK/disk.raw" 2G
  qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$OUT/base.qcow2.tmp"
  mv -f "$OUT/base.qcow2.tmp" "$OUT/base.qcow2"
  rm -f "$WORK/disk.raw"
fi

# ---------------------------------------------------------------- mini flavour
if [ "$WHAT" != full ]; then
  t "mini: initramfs (busybox-static + dropbear)"
  mkdir -p "$WORK/debs" "$WORK/x"
  (cd "$WORK/debs" && apt-get download busybox-static dropbear-bin libtomcrypt1 libtommath1 2>&1 | grep -v unsandboxed || true)
  for d in "$WORK"/debs/*.deb; do dpkg-deb -x "$d" "$WORK/x"; done
  X=$WORK/x; KM=$ROOT/usr/lib/modules/$KVER; I=$WORK/initrd
  mkdir -p "$I"/{bin,sbin,usr/bin,usr/sbin,lib/modules,lib64,lib/x86_64-linux-gnu,etc,dev,proc,sys,run,tmp}
  cp "$X/bin/busybox" "$I/bin/busybox"
  cp "$X/usr/sbin/dropbear" "$I/usr/sbin/dropbear"
  cp -L "$X"/usr/lib/x86_64-linux-gnu/libtom{crypt,math}.so.1 "$I/lib/x86_64-linux-gnu/"
  # dropbear's other libraries (libc, libz, libcrypt, libgmp) are the host's (same Debian suite)
  for l in $(LD_LIBRARY_PATH="$X/usr/lib/x86_64-linux-gnu" ldd "$X/usr/sbin/dropbear" | awk '/=> \//{print $3}'); do
    cp -L "$l" "$I/lib/x86_64-linux-gnu/"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$I/lib64/"
  declare -A seen; order=()
  add() { local m=$1 f d; f=$(find "$KM/kernel" -name "$m.ko" | head -1); [ -n "$f" ] || return 0
    [ -n "${seen[$m]:-}" ] && return 0; seen[$m]=1
    for d in $(modinfo -F depends "$f" | tr ',' ' '); do add "$d"; done
    cp "$f" "$I/lib/modules/"; order+=("$m.ko"); }
  for m in virtio virtio_ring virtio_pci virtio_blk virtio_net isofs ext4; do add "$m"; done
  printf '%s\n' "${order[@]}" > "$I/etc/modules.order"
  cat > "$I/init" <<'EOF'
#!/bin/busybox sh
# Minimal cloud-init stand-in: virtio drivers, NoCloud seed (LABEL=cidata), users + passwords from the
# chpasswd list, DHCP, dropbear on :22, then the readiness marker on the serial console.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /run /tmp /seed /mnt /root /home /var/log /etc/dropbear
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m 2>/dev/null; done
say() { echo "mini-init: $*" > /dev/console; }
SEED=""
for i in $(seq 1 50); do SEED=$(findfs LABEL=cidata 2>/dev/null) && [ -n "$SEED" ] && break; sleep 0.1; done
HOST=guest; IID=""
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "root:*:19000:0:99999:7:::" > /etc/shadow; chmod 600 /etc/shadow
printf 'root:x:0:\nsudo:x:27:\n' > /etc/group
echo /bin/sh > /etc/shells
if [ -n "$SEED" ] && mount -t iso9660 -o ro "$SEED" /seed; then
  say "seed found on $SEED"
  H=$(sed -n 's/^local-hostname:[[:space:]]*//p' /seed/meta-data | head -1); [ -n "$H" ] && HOST=$H
  IID=$(sed -n 's/^instance-id:[[:space:]]*//p' /seed/meta-data | head -1)
  # chpasswd users, one flow mapping per line exactly as paygressd writes them (passwords are alphanumeric):
  #     - {name: "NAME", password: "PASSWORD", type: text}
  uid=1000
  sed -n 's/^    - {name: "\([a-z_][a-z0-9_-]*\)", password: "\([A-Za-z0-9]*\)", type: text}$/\1 \2/p' /seed/user-data |
  while read -r name pass; do
    hash=$(mkpasswd -m sha512 "$pass")
    if [ "$name" = root ]; then
      sed -i "s|^root:[^:]*:|root:$hash:|" /etc/shadow
    else
      mkdir -p "/home/$name"
      echo "$name:x:$uid:$uid::/home/$name:/bin/sh" >> /etc/passwd
      echo "$name:$hash:19000:0:99999:7:::" >> /etc/shadow
      echo "$name:x:$uid:" >> /etc/group
      sed -i "s|^sudo:x:27:\(.*\)$|sudo:x:27:\1${name},|" /etc/group
      chown "$uid:$uid" "/home/$name"
      uid=$((uid + 1))
    fi
    say "password set for $name"
  done
  sed -i 's/,$//' /etc/group
else
  say "NO cidata seed found"
fi
hostname "$HOST"
if [ -b /dev/vda ]; then
  mount -t ext4 /dev/vda /mnt && echo "booted $(date) instance=$IID" >> /mnt/boot-log.txt
fi
ip link set lo up
IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set "$IF" up
cat > /tmp/udhcpc.sh <<'S'
#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr add $ip/${mask:-24} dev $interface
[ -n "$router" ] && ip route add default via ${router%% *}
S
chmod +x /tmp/udhcpc.sh
udhcpc -i "$IF" -s /tmp/udhcpc.sh -q -n -t 10 -T 1 >/dev/null 2>&1 || ip addr add 10.0.2.15/24 dev "$IF"
say "net $(ip -4 -o addr show dev $IF | awk '{print $4}')"
dropbear -R -E -p 22 -P /run/dropbear.pid 2>/dev/console
echo "paygress-guest-ready instance=$IID uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
exec sh -c 'while :; do sleep 3600; done'
EOF
  chmod +x "$I/init"
  (cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/mini-initrd.gz.tmp"
  mv -f "$OUT/mini-initrd.gz.tmp" "$OUT/mini-initrd.gz"
  echo "console=ttyS0" > "$OUT/mini-append.txt"
  mkdir -p "$WORK/minibase" && echo "mini base image" > "$WORK/minibase/BASE-MARKER"
  mke2fs -q -t ext4 -L rootfs -d "$WORK/minibase" "$WORK/mini.raw" 64M
  rm -f "$OUT/base-mini.qcow2"
  qemu-img convert -f raw -O qcow2 "$WORK/mini.raw" "$OUT/base-mini.qcow2"
fi
# base images are shared read-only by every VM; qemu never writes them (overlays take the writes)
chmod a-w "$OUT"/*.qcow2
chmod a+r "$OUT"/*
echo "$KEY" > "$OUT/stamp"
t "done"; ls -la "$OUT"

#!/usr/bin/env bash
# Build the VM image that scripts/vm-test.sh boots: a stock Debian 12 kernel and a Debian 12
# root file system (systemd as init, cgroup v2 unified, netem available), packed as a gzip'd cpio
# initramfs. Usage: build-image.sh OUTDIR (OUTDIR gets vmlinuz, rootfs.cpio.gz, kernel-version).
# Needs root, debootstrap, cpio and the Debian registry. The recipe is this file and the files
# beside it: scripts/vm-test.sh rebuilds when their hash changes.
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${out%/}.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

# the programs a user machine has for the testbed: the same Debian packages scripts/setup.sh installs
# (minus the desktop browser), and systemd as init with D-Bus, as on any server install
packages=systemd-sysv,dbus,udev,kmod,iproute2,iptables,python3,mininet,iperf3,iputils-ping,procps,util-linux,bridge-utils,dataset-fashion-mnist
echo "vm-image: debootstrap bookworm (minbase + $packages)"
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; echo "vm-image: debootstrap failed (log above)" >&2; exit 1; }
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' -exec rm -rf {} +

# the kernel Debian 12 installs (what linux-image-amd64 depends on), with the modules a testbed
# uses: networking (sch_netem, tbf, veth, bridge, netfilter), 9p and virtio, file systems
kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
[ -n "$kpkg" ] || { echo "vm-image: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
echo "vm-image: kernel $kpkg"
(cd "$work" && apt-get download "$kpkg" > /dev/null 2>&1) || { echo "vm-image: apt-get download $kpkg failed" >&2; exit 1; }
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
ver=${kpkg#linux-image-}
src=$work/kernel/lib/modules/$ver
dst=$rootfs/lib/modules/$ver
mkdir -p "$dst/kernel/drivers/net"
cp -a "$src"/modules.order "$src"/modules.builtin* "$dst/"
for d in arch block crypto fs lib mm net virt; do cp -a "$src/kernel/$d" "$dst/kernel/"; done
for d in virtio block char; do cp -a "$src/kernel/drivers/$d" "$dst/kernel/drivers/"; done
cp -a "$src"/kernel/drivers/net/*.ko "$dst/kernel/drivers/net/"
chroot "$rootfs" /sbin/depmod "$ver"

# systemd boots the initramfs as the root file system; no login prompts; the test service
ln -sf /lib/systemd/systemd "$rootfs/init"
echo testbed-vm > "$rootfs/etc/hostname"
chroot "$rootfs" systemctl mask -q serial-getty@ttyS0.service getty@tty1.service systemd-timesyncd.service \
  apt-daily.timer apt-daily-upgrade.timer
install -m 755 "$here/testbed-vm-run" "$rootfs/usr/local/sbin/testbed-vm-run"
install -m 644 "$here/testbed-vm.service" "$rootfs/etc/systemd/system/testbed-vm.service"
chroot "$rootfs" systemctl enable -q testbed-vm.service

(cd "$rootfs" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/rootfs.cpio.gz")
mkdir -p "$out"
cp "$work/kernel/boot/vmlinuz-$ver" "$out/vmlinuz"
mv "$work/rootfs.cpio.gz" "$out/rootfs.cpio.gz"
echo "$ver" > "$out/kernel-version"
echo "vm-image: built ($ver, $(du -h "$out/rootfs.cpio.gz" | cut -f1) initramfs)"

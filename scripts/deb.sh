#!/usr/bin/env bash
# Builds the Debian package OUT/ecs-image_<version>_amd64.deb with dpkg-deb
# from the static binaries in BIN (make build): /usr/bin/ecs-image (the
# front program) and /usr/lib/ecs-image/ecs-image (the complete program it
# executes for every command but version and cidata), the
# agent as /usr/lib/ecs-image/ecs-agent, man pages and bash/zsh/fish
# completions generated from the cobra commands (the hidden `__gendocs`).
# `make deb` runs it; scripts/scripts_test.go checks the result.
#
# Usage: scripts/deb.sh BIN OUT VERSION
#   VERSION: the git describe version (v1.2.0, v1.2.0-3-gabcdef0[-dirty],
#   abcdef0[-dirty] without a tag); mapped to a Debian version.
#        scripts/deb.sh --debian-version VERSION   (prints the mapping)
set -euo pipefail

# debversion maps a git describe version to a Debian version: v1.2.0 →
# 1.2.0; v1.2.0-3-gabcdef0 → 1.2.0+3+gabcdef0; no tag (abcdef0) →
# 0.0~gabcdef0. ~ sorts before anything, + after.
debversion() {
	local v
	case "$1" in
	v[0-9]*) v=${1#v} ;;
	[0-9]*) v=$1 ;;
	*) v=0.0~g$1 ;;
	esac
	echo "${v//-/+}"
}
if [ "${1:-}" = --debian-version ]; then
	debversion "$2"
	exit
fi
bin=$1 out=$2 version=$3
debver=$(debversion "$version")

# Runtime dependencies: what ecs-image executes (checked in the code):
#   qemu-system-x86_64 (qemu-system-x86); qemu-img (qemu-utils);
#   qemu-storage-daemon (qemu-system-common, chroot stages);
#   sfdisk (fdisk); mke2fs, e2fsck, resize2fs, debugfs (e2fsprogs);
#   mount, umount, losetup (mount); unshare, nsenter (util-linux);
#   chroot (coreutils); mmdebstrap or debootstrap (base build).
# OVMF only for UEFI guests; git only for `release` outside a build dir.
depends="qemu-system-x86, qemu-system-common, qemu-utils, e2fsprogs, fdisk, mount, util-linux, mmdebstrap | debootstrap"
recommends="ovmf"
suggests="git"

for b in ecs-image libexec/ecs-image ecs-agent; do
	[ -x "$bin/$b" ] || { echo "deb: $bin/$b missing (make build)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/ecs-image" \
	"$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
	"$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
	"$root/usr/share/doc/ecs-image"
install -m 0755 "$bin/ecs-image" "$root/usr/bin/ecs-image"
install -m 0755 "$bin/libexec/ecs-image" "$root/usr/lib/ecs-image/ecs-image"
install -m 0755 "$bin/ecs-agent" "$root/usr/lib/ecs-image/ecs-agent"

# Pages dated by the commit (reproducible), else now.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
"$bin/libexec/ecs-image" __gendocs "$work/ecs-image"
"$bin/ecs-agent" __gendocs "$work/ecs-agent"
for p in "$work"/ecs-image/man1/*.1 "$work"/ecs-agent/man1/*.1; do
	gzip -9n <"$p" >"$root/usr/share/man/man1/$(basename "$p").gz"
done
install -m 0644 "$work/ecs-image/completion/bash" "$root/usr/share/bash-completion/completions/ecs-image"
install -m 0644 "$work/ecs-image/completion/zsh" "$root/usr/share/zsh/vendor-completions/_ecs-image"
install -m 0644 "$work/ecs-image/completion/fish" "$root/usr/share/fish/vendor_completions.d/ecs-image.fish"
gzip -9n <README.md >"$root/usr/share/doc/ecs-image/README.md.gz"
chmod 0644 "$root"/usr/share/man/man1/* "$root/usr/share/doc/ecs-image/README.md.gz"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: ecs-image
Version: $debver
Architecture: amd64
Maintainer: ${DEB_MAINTAINER:-ecs-image maintainers <maintainers@ecs-image.invalid>}
Installed-Size: $size
Depends: $depends
Recommends: $recommends
Suggests: $suggests
Section: admin
Priority: optional
Description: build bootable ECS appliance images
 ecs-image turns a base cloud image into ECS appliance artifacts (qcow2,
 raw, vmdk/OVA, vhdx, vhd, AMI, Vagrant boxes), and makes the env.yml files
 and cidata seed ISOs that configure an appliance at first boot. The in-VM
 agent is /usr/lib/ecs-image/ecs-agent (a template's agent provisioner
 takes it as binary: /usr/lib/ecs-image/ecs-agent).
CONTROL
mkdir -p "$out"
deb=$out/ecs-image_${debver}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"

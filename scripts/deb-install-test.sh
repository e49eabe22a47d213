#!/usr/bin/env bash
# Installs a built ecs-image .deb into a clean Debian 12 chroot made by
# mmdebstrap from the package mirror (apt install ./the.deb, so that its
# Depends resolve from the mirror) and runs `ecs-image version` and
# `ecs-image validate templates/test-small.yml` from it. The chroot is
# temporary (mmdebstrap's null format). Root only; CI runs it.
#
# Usage: scripts/deb-install-test.sh DEB [MIRROR]
set -euo pipefail
deb=$(realpath "$1")
mirror=${2:-http://deb.debian.org/debian}
[ -f "$deb" ] || { echo "deb-install-test: $1 not found" >&2; exit 1; }
repo=$(pwd)
name=$(basename "$deb")
# The hooks run on the host with the chroot as $1.
mmdebstrap --variant=apt --mode=root --format=null --quiet \
	--customize-hook="cp '$deb' \"\$1/tmp/$name\" && cp -r '$repo/templates' \"\$1/tmp/templates\"" \
	--customize-hook="chroot \"\$1\" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/$name >/tmp/apt.log 2>&1 || { tail -n 60 /tmp/apt.log; exit 1; }; grep -E \"^(Setting up ecs-image|Get:.*qemu-system-x86 )\" /tmp/apt.log'" \
	--customize-hook='chroot "$1" sh -c "set -e; command -v ecs-image; ecs-image version; ecs-image --version >/dev/null; cd /tmp && ecs-image validate templates/test-small.yml; test -x /usr/lib/ecs-image/ecs-agent && /usr/lib/ecs-image/ecs-agent version; test -f /usr/share/man/man1/ecs-image-build.1.gz; for b in qemu-system-x86_64 qemu-img qemu-storage-daemon sfdisk mke2fs debugfs losetup nsenter mmdebstrap; do command -v \$b >/dev/null || { echo missing \$b; exit 1; }; done; echo deb-install-test: ok"' \
	bookworm /dev/null "$mirror"

#!/bin/bash
# Runs the reference workload (issue 6) with Packer 1.6.6's qemu builder on
# the local Debian base, for comparison with bench/build/run.sh: bench.json
# with a fresh ed25519 key and a cidata seed (user "packer", password-less
# sudo), TCG, no HTTP server. Prints "SECONDS QCOW2_BYTES" on stdout.
#
#   bench/packer/run.sh [BLOB] [FORMATS]   # FORMATS default "vmdk vhdx"
#
# Needs packer (make deps-bench), qemu, cloud-localds (cloud-image-utils),
# ssh-keygen. PACKER_BENCH_LOG=FILE keeps Packer's output.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${ECS_IMAGE:-$root/bin/ecs-image}
[ -x "$bin" ] || (cd "$root" && make build >/dev/null)
command -v packer >/dev/null || { echo "packer is not installed (make deps-bench)" >&2; exit 1; }
work=$(mktemp -d /tmp/ecs-bench-packer.XXXXXX)
trap 'rm -rf "$work"' EXIT

base=$("$bin" base build 2>/dev/null)
blob=${1:-}
if [ -z "$blob" ]; then
  blob=$work/blob
  head -c 64M /dev/urandom >"$blob"
fi
formats=${2-vmdk vhdx}

ssh-keygen -q -t ed25519 -N '' -C packer-bench -f "$work/key"
cat >"$work/user-data" <<YAML
#cloud-config
users:
  - name: packer
    shell: /bin/bash
    lock_passwd: true
    sudo: ALL=(ALL) NOPASSWD:ALL
    ssh_authorized_keys: [$(cat "$work/key.pub")]
ssh_pwauth: false
growpart: {mode: auto, devices: [/]}
YAML
printf 'instance-id: packer-bench-%s\nlocal-hostname: localhost\n' "$(date +%s%N)" >"$work/meta-data"
cloud-localds "$work/seed.iso" "$work/user-data" "$work/meta-data"

log=${PACKER_BENCH_LOG:-$work/packer.log}
t0=$(date +%s.%N)
if ! (cd "$work" && PACKER_NO_COLOR=1 CHECKPOINT_DISABLE=1 packer build -color=false \
  -var "base=$base" -var "blob=$blob" -var "seed=$work/seed.iso" -var "key=$work/key" \
  -var "out=$work/out" -var "formats=$formats" "$root/bench/packer/bench.json") >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  exit 1
fi
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v s="$(stat -c %s "$work/out/bench.qcow2")" 'BEGIN { printf "%.1f %d\n", b - a, s }'

#!/bin/bash
# Side-by-side comparison of issue 6: ecs-image (bench/build/run.sh: cold,
# and warm after changing only the file-only last stage) against Packer
# 1.6.6's qemu builder (bench/packer/run.sh) on the same local Debian base
# and workload (64 MiB upload + apt install nginx postgresql stunnel4 +
# clean-up + vmdk + vhdx). Prints seconds, qcow2 sizes and the ratios
# against the issue's targets, with the load average around each run (the
# machine may be shared). Takes 6–8 minutes (Packer ≈5 of them) on a 2-core machine
# under TCG.
#
#   bench/compare.sh                 # needs packer: make deps-bench
#   COMPARE_PACKER_WARM=1 bench/compare.sh   # also time Packer's rebuild
#
# Packer has no stage cache: its rebuild after changing the file is a full
# build, so by default its cold time stands for its warm one too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ecs-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Packer first: a missing or broken Packer fails before the long part.
echo "Packer 1.6.6: bench/packer/run.sh (load $(load))" >&2
l2=$(load)
read -r p_cold p_size < <("$root/bench/packer/run.sh")
[ -n "${p_size:-}" ] || { echo "bench/packer/run.sh failed" >&2; exit 1; }
p_warm=$p_cold
p_warm_note="(no cache: = cold)"
if [ "${COMPARE_PACKER_WARM:-0}" = 1 ]; then
  read -r p_warm _ < <("$root/bench/packer/run.sh")
  p_warm_note="(full rebuild)"
fi
l3=$(load)

echo "ecs-image: bench/build/run.sh (load $(load))" >&2
l0=$(load)
BENCH_KV=$work/ecs.kv "$root/bench/build/run.sh" >&2
l1=$(load)
# shellcheck disable=SC1090
. "$work/ecs.kv"

awk -v c="$cold" -v wq="$warm_qcow2" -v wa="$warm_all" -v s="$size" \
    -v pc="$p_cold" -v pw="$p_warm" -v ps="$p_size" -v note="$p_warm_note" \
    -v l0="$l0" -v l1="$l1" -v l2="$l2" -v l3="$l3" -v date="$(date -u +%Y-%m-%dT%H:%MZ)" 'BEGIN {
  mib = 1048576
  printf "%-26s %10s %12s %7s %8s  %s\n", "", "ecs-image", "Packer 1.6.6", "ratio", "target", ""
  row("cold, all formats (s)", c, pc, 0.70, "")
  row("warm, qcow2 only (s)", wq, pw, 0.10, note)
  row("warm, all formats (s)", wa, pw, 0.25, note)
  row("qcow2 size (MiB)", s / mib, ps / mib, 0.50, "")
  printf "\n%s; load average ecs-image %s → %s, Packer %s → %s\n", date, l0, l1, l2, l3
}
function row(name, a, b, target, note) {
  r = a / b
  printf "%-26s %10.1f %12.1f %7.3f %8s  %s %s\n", name, a, b, r, "<= " target, (r <= target ? "met" : "MISSED"), note
}'

#!/bin/bash
# Times the builder on the reference workload (issue 6): a 64 MiB file
# upload + apt install nginx postgresql stunnel4 + generalise + vmdk + vhdx,
# cold (--no-cache) and warm (only the file-only last stage changed), on
# the local Debian base. Prints seconds and the qcow2 size. Not run in CI
# (a cold run takes minutes under TCG).
#
#   bench/build/run.sh            # uses bin/ecs-image (make build)
#   ECS_IMAGE=/path/to/ecs-image bench/build/run.sh
#   BENCH_LOGS=DIR                # keep each build's log
#   BENCH_KV=FILE                 # also write cold=… warm_qcow2=… lines
set -euo pipefail
# root, bin, base, workload, new_blob, since
source "$(dirname "$0")/workload.sh"
work=$(mktemp -d /tmp/ecs-bench-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# BENCH_LOGS=DIR keeps each build's log (-v: per-step durations) and manifest.
logs=${BENCH_LOGS:-}
[ -z "$logs" ] || mkdir -p "$logs"

secs() { # $1 = run name; run the rest, print elapsed seconds
  local name=$1 t0
  shift
  t0=$(date +%s.%N)
  "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }
  since "$t0"
  [ -z "$logs" ] || cp "$work/last.log" "$logs/$name.log"
}

new_blob "$work/blob"
workload "qcow2, vmdk, vhdx" >"$work/all.yml"
workload "qcow2" >"$work/qcow2.yml"

cold=$(secs cold "$bin" build "$work/all.yml" -o "$work/out" --no-cache)
size=$(stat -c %s "$work/out/bench.qcow2")

new_blob "$work/blob"
warm_qcow2=$(secs warm-qcow2 "$bin" build "$work/qcow2.yml" -o "$work/out-q")

new_blob "$work/blob"
warm_all=$(secs warm-all "$bin" build "$work/all.yml" -o "$work/out")

printf 'cold (all formats)          %8.1f s\n' "$cold"
printf 'warm, last stage changed:\n'
printf '  qcow2 only                %8.1f s\n' "$warm_qcow2"
printf '  qcow2 + vmdk + vhdx       %8.1f s\n' "$warm_all"
printf 'qcow2 size                  %8.1f MiB\n' "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')"
if [ -n "${BENCH_KV:-}" ]; then
  printf 'cold=%s\nwarm_qcow2=%s\nwarm_all=%s\nsize=%s\n' "$cold" "$warm_qcow2" "$warm_all" "$size" >"$BENCH_KV"
fi

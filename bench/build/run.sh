#!/bin/bash
# Times the builder on the reference workload (issue 6): a 64 MiB file
# upload + apt install nginx postgresql stunnel4 + generalise + vmdk + vhdx,
# cold (--no-cache) and warm (only the file-only last stage changed), on
# the local Debian base. Prints seconds and the qcow2 size. Not run in CI
# (a cold run takes minutes under TCG). Also prints the peak memory of the
# ecs-image process of each build and the warm all-formats / qcow2-only ratio.
#
#   bench/build/run.sh            # uses bin/ecs-image (make build)
#   ECS_IMAGE=/path/to/ecs-image bench/build/run.sh
#   BENCH_LOGS=DIR                # keep each build's log
#   BENCH_KV=FILE                 # also write cold=… warm_qcow2=… lines
#   BENCH_WARM_ONLY=1             # only the warm runs (after a cold run)
set -euo pipefail
# root, bin, base, workload, new_blob, since
source "$(dirname "$0")/workload.sh"
work=$(mktemp -d /tmp/ecs-bench-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# BENCH_LOGS=DIR keeps each build's log (-v: per-step durations) and manifest.
logs=${BENCH_LOGS:-}
[ -z "$logs" ] || mkdir -p "$logs"

# secs NAME CMD...: runs CMD, prints its elapsed seconds, and records the
# peak resident memory of the CMD process itself (VmHWM, polled every
# 0.1 s; not its children: QEMU's guest RAM and qemu-img are separate
# processes) in $work/NAME.rss (KiB).
secs() {
  local name=$1 t0 pid hwm=0 v rc=0
  shift
  t0=$(date +%s.%N)
  "$@" >"$work/last.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    [ -z "$v" ] || hwm=$v
    sleep 0.1
  done
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || { cat "$work/last.log" >&2; exit 1; }
  since "$t0"
  echo "$hwm" >"$work/$name.rss"
  [ -z "$logs" ] || cp "$work/last.log" "$logs/$name.log"
}
mib() { awk -v k="$(cat "$work/$1.rss")" 'BEGIN { printf "%.0f", k / 1024 }'; }

new_blob "$work/blob"
workload "qcow2, vmdk, vhdx" >"$work/all.yml"
workload "qcow2" >"$work/qcow2.yml"

if [ "${BENCH_WARM_ONLY:-0}" = 1 ]; then
  # The warm runs alone (a cold run with this base filled the stage cache).
  cold=0 size=0
  echo 0 >"$work/cold.rss"
else
  cold=$(secs cold "$bin" build "$work/all.yml" -o "$work/out" --no-cache)
  size=$(stat -c %s "$work/out/bench.qcow2")
fi

new_blob "$work/blob"
warm_qcow2=$(secs warm-qcow2 "$bin" build "$work/qcow2.yml" -o "$work/out-q")

new_blob "$work/blob"
warm_all=$(secs warm-all "$bin" build "$work/all.yml" -o "$work/out")

printf '                                 time   peak memory of ecs-image\n'
printf 'cold (all formats)          %8.1f s %6s MiB\n' "$cold" "$(mib cold)"
printf 'warm, last stage changed:\n'
printf '  qcow2 only                %8.1f s %6s MiB\n' "$warm_qcow2" "$(mib warm-qcow2)"
printf '  qcow2 + vmdk + vhdx       %8.1f s %6s MiB\n' "$warm_all" "$(mib warm-all)"
printf '  all / qcow2 only          %8.2f ×   (issue 19: <= 1.5)\n' "$(awk -v a="$warm_all" -v q="$warm_qcow2" 'BEGIN { print a / q }')"
printf 'qcow2 size                  %8.1f MiB\n' "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')"
printf 'load average after          %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${BENCH_KV:-}" ]; then
  printf 'cold=%s\nwarm_qcow2=%s\nwarm_all=%s\nsize=%s\nrss_cold=%s\nrss_warm_qcow2=%s\nrss_warm_all=%s\n' \
    "$cold" "$warm_qcow2" "$warm_all" "$size" "$(mib cold)" "$(mib warm-qcow2)" "$(mib warm-all)" >"$BENCH_KV"
fi

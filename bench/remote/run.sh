#!/bin/bash
# The shared stage cache side by side (issue 18): CI runners that start with
# an empty local cache, on the reference workload of bench/build/run.sh
# (apt install nginx postgresql stunnel4 — a chroot stage where the host can
# — then a 64 MiB file-only stage, generalise; qcow2), the stage cache
# shared through a local versitygw:
#
#   A cold        runner A, empty cache: builds everything and uploads it
#                 (what every runner does without a shared cache)
#   A warm        runner A again, nothing changed: all from its local cache
#   B remote      runner B, empty cache, nothing changed: all downloaded
#   C remote+1    runner C, empty cache, the last stage changed: the
#                 packages stage downloaded, the rest built
#
# Prints seconds, the ratios against the issue's targets (B ≤ 1.5× A warm,
# B ≤ 0.25× A cold), the transfer rates the builders logged, and B's steps.
# The base (a local file) is resolved by every build (sha256 of its file)
# but not fetched: a runner also needs it (`base build` or a download).
# Not run in CI (a cold build takes minutes under TCG); it boots the offline
# helper VM, so on a shared machine run it under the VM lock.
#
#   bench/remote/run.sh               # bin/ecs-image (make build), ~/go/bin/versitygw
#   ECS_IMAGE=... VERSITYGW=... bench/remote/run.sh
#   BENCH_LOGS=DIR                    # keep each build's log and manifest
set -euo pipefail
# root, bin, base, workload, new_blob, since: bench/build's workload
source "$(dirname "$0")/../build/workload.sh"
gw=${VERSITYGW:-$(command -v versitygw || echo "$HOME/go/bin/versitygw")}
[ -x "$gw" ] || { echo "versitygw not found (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)" >&2; exit 1; }
work=$(mktemp -d /tmp/ecs-bench-remote.XXXXXX)
gwpid=
cleanup() { [ -z "$gwpid" ] || kill "$gwpid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
logs=${BENCH_LOGS:-}
[ -z "$logs" ] || mkdir -p "$logs"
load() { cut -d' ' -f1-3 /proc/loadavg; }

# versitygw on a free loopback port, posix backend, bucket "cache" (its
# sidecar directory must not even share the root's path as a prefix).
mkdir -p "$work/s3/cache" "$work/meta"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$gw" --access benchkey --secret benchsecret --port "127.0.0.1:$port" --quiet posix --sidecar "$work/meta" "$work/s3" >"$work/versitygw.log" 2>&1 &
gwpid=$!
up=
for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { up=1; break; }; sleep 0.1; done
[ -n "$up" ] || { echo "versitygw did not listen on 127.0.0.1:$port:" >&2; cat "$work/versitygw.log" >&2; exit 1; }
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_CONFIG_FILE=$work/none AWS_SHARED_CREDENTIALS_FILE=$work/none

build() { # $1 = run name, $2 = runner (its own ECS_IMAGE_CACHE); prints seconds
  local name=$1 runner=$2 t0 secs
  t0=$(date +%s.%N)
  ECS_IMAGE_CACHE=$work/runner-$runner "$bin" build "$work/bench.yml" -o "$work/out-$name" \
    --cache-remote s3://cache/ci >"$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; exit 1; }
  secs=$(since "$t0")
  if grep -q unreachable "$work/$name.log"; then grep unreachable "$work/$name.log" >&2; exit 1; fi
  [ -z "$logs" ] || { cp "$work/$name.log" "$logs/$name.log"; cp "$work/out-$name/bench.build.json" "$logs/$name.build.json"; }
  echo "$secs"
}

new_blob "$work/blob"
workload qcow2 >"$work/bench.yml"
l0=$(load)
a_cold=$(build a-cold a)
a_warm=$(build a-warm a)
b_remote=$(build b-remote b)
new_blob "$work/blob"
c_remote=$(build c-remote c)
l1=$(load)
objs=$(du -sm "$work/s3/cache" | cut -f1)

awk -v ac="$a_cold" -v aw="$a_warm" -v b="$b_remote" -v c="$c_remote" -v l0="$l0" -v l1="$l1" \
    -v objs="$objs" -v date="$(date -u +%Y-%m-%dT%H:%MZ)" 'BEGIN {
  printf "%-44s %8s\n", "run (empty runner = its own empty cache)", "seconds"
  printf "%-44s %8.1f\n", "A cold: builds all, uploads", ac
  printf "%-44s %8.1f\n", "A warm: same runner, all local", aw
  printf "%-44s %8.1f   %.2f x A warm (<= 1.5 %s), %.3f x A cold (<= 0.25 %s)\n", "B: empty runner, all from the shared cache", b, b / aw, (b / aw <= 1.5 ? "met" : "MISSED"), b / ac, (b / ac <= 0.25 ? "met" : "MISSED")
  printf "%-44s %8.1f   %.3f x A cold\n", "C: empty runner, last stage changed", c, c / ac
  printf "shared cache: %d MiB on versitygw; %s; load average %s -> %s\n", objs, date, l0, l1
}'
echo
echo "transfers (from the builders' logs):"
grep -ho 'remote cache: [0-9a-f]* \(uploaded\|downloaded and verified\) ([0-9.]* MiB in [0-9.]*s)' "$work"/*.log |
  sed -E 's/downloaded and verified/down/; s/ uploaded / up /; s/remote cache: ([0-9a-f]*) (up|down) \(([0-9.]*) MiB in ([0-9.]*)s\)/\2 \1 \3 \4/' |
  awk '{ rate = ($4 > 0) ? $3 / $4 : 0; printf "  %-4s %s %7.1f MiB in %5.1f s  %6.1f MiB/s\n", $1, $2, $3, $4, rate }' || true
echo
echo "B's steps (seconds):"
jq -r '.steps[] | select(.seconds >= 0.05) | "  \(.step)\(if .stage then " [" + .stage + "]" else "" end)\t\(.seconds * 10 | round / 10)"' \
  "$work/out-b-remote/bench.build.json"

# shellcheck shell=bash
# The builder's reference workload (issue 6), sourced by the benchmarks
# that run it (bench/build/run.sh, bench/remote/run.sh). It sets
#   root  the repository
#   bin   the ecs-image under test: $ECS_IMAGE, else bin/ecs-image (made if missing)
#   base  the local Debian base (`ecs-image base build`: cached after the
#         first time, not timed)
# and defines
#   workload OUTPUTS   prints the template: apt install nginx postgresql
#                      stunnel4 (a chroot stage where the host can), then a
#                      file-only stage uploading ./blob; disk 8G, 2 GiB, 2 CPUs
#   new_blob FILE      writes a fresh 64 MiB random blob (changes the last stage)
#   since T0           prints the seconds since T0 (from `date +%s.%N`), 0.1 s
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${ECS_IMAGE:-$root/bin/ecs-image}
[ -x "$bin" ] || (cd "$root" && make build >/dev/null)
base=$("$bin" base build)

workload() { # $1 = outputs
  cat <<YAML
name: bench
base:
  file: $base
disk_size: 8G
memory: 2048
cpus: 2
stages:
  - name: packages
    provisioners:
      - type: packages
        packages: [nginx, postgresql, stunnel4]
  - name: upload
    provisioners:
      - type: file
        source: blob
        destination: /opt/bench/blob
outputs: [$1]
YAML
}

new_blob() { head -c 64M /dev/urandom >"$1"; }

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

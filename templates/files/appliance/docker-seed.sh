#!/bin/sh
# Docker's image store for the first boot, made at build time (docs/e2e.md,
# "The docker seed"): the image's own dockerd, started here with a data
# root of its own, runs `docker load` on every tarball of the agent's image
# index (/app/images/manifest.json), checks that each loaded image is the
# one the index records (its config digest), and stops. What is kept is
# dockerd's image store (image/ and overlay2/: the images unpacked), in
# /var/lib/ecs-image/docker-seed; at first boot the agent copies it into
# an empty /volatile/docker before dockerd uses it, instead of loading the
# tarballs under emulation. The tarballs stay the source of truth: the
# agent loads any image of the index the seed does not hold by its ID.
#
# Runs in a chroot on the build host (or in the booted image where the host
# cannot chroot): no iptables, no bridge, no containers, sockets and state
# under /run/ecs-docker-seed only.
set -eu
seed=/var/lib/ecs-image/docker-seed
index=/app/images/manifest.json
run=/run/ecs-docker-seed

rm -rf "$seed" "$run"
if [ ! -s "$index" ] || [ "$(jq length "$index")" = 0 ]; then
  echo "docker-seed: no images in $index; no seed"
  exit 0
fi
mkdir -p "$seed" "$run"
chmod 0700 "$seed"
# dockerd refuses to start without a cgroup hierarchy; a chroot's fresh
# sysfs has none mounted (a booted image has its own).
cgroup=
if ! mountpoint -q /sys/fs/cgroup; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
  cgroup=/sys/fs/cgroup
fi
echo '{}' >"$run/daemon.json"
dockerd --config-file "$run/daemon.json" --data-root "$seed" \
  --exec-root "$run/exec" --pidfile "$run/dockerd.pid" -H "unix://$run/docker.sock" \
  --storage-driver overlay2 --iptables=false --ip6tables=false --bridge=none \
  --log-level=warn >"$run/dockerd.log" 2>&1 &
pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -n "$cgroup" ]; then umount "$cgroup" || true; cgroup=; fi
}
trap 'stop; cat "$run/dockerd.log" >&2 || true' EXIT
export DOCKER_HOST="unix://$run/docker.sock"
i=0
until docker version >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 120 ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "docker-seed: dockerd did not answer" >&2
    exit 1
  fi
  sleep 0.5
done
jq -r '.[].file' "$index" | while read -r file; do
  docker load -q -i "/app/images/$file"
done
jq -r '.[] | select(.id != null and .id != "") | .id' "$index" | while read -r id; do
  if ! docker image inspect --format '{{.Id}}' "$id" >/dev/null; then
    echo "docker-seed: image $id of $index not in the store after loading" >&2
    exit 1
  fi
done
docker images --no-trunc
stop
trap - EXIT
# Only the image store: no engine ID, networks, containers or containerd
# state of this dockerd.
find "$seed" -mindepth 1 -maxdepth 1 ! -name image ! -name overlay2 -exec rm -rf {} +
rm -rf "$run"
echo "docker-seed: $(du -sh "$seed" | cut -f1) in $seed"

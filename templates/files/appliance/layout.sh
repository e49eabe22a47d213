#!/bin/sh
# Runtime layout of the ECS appliance (administration manual, "Runtime
# Layout"): /app (code and configuration), /data (data to keep), /volatile
# (data that can be deleted). /app/etc, /app/ecs-ca, /app/ecs-gpg and
# /app/ecs-cache are symlinks into /data and /volatile.
set -eu
install -d -m 0755 /app /data /volatile /app/images /usr/local/share/appliance
install -d -m 0755 /data/etc /data/etc/tags /data/etc/flags /data/etc/hooks
install -d -m 0700 /data/ecs-ca /data/ecs-gpg /data/ecs-storage-vault /data/ecs-pgdump
install -d -m 0755 /data/postgresql /volatile/docker /volatile/ecs-cache /volatile/ecs-backup-test /volatile/redis
ln -sfn /data/etc /app/etc
ln -sfn /data/ecs-ca /app/ecs-ca
ln -sfn /data/ecs-gpg /app/ecs-gpg
ln -sfn /data/ecs-storage-vault /app/ecs-storage-vault
ln -sfn /volatile/ecs-cache /app/ecs-cache
# The agent configures and starts the host services at first boot from
# env.yml; until then they stay off.
for s in nginx postfix opendkim stunnel4 postgresql docker containerd; do
  systemctl disable "$s" >/dev/null 2>&1 || true
done
echo "runtime layout ready"

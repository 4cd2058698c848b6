#!/usr/bin/env bash
# Start a Docker Engine for jupyter-hwsched if none answers at $DOCKER_HOST (default below).
# Images cannot be pulled here, and none is needed: the agent imports its own base image.
set -euo pipefail
SOCK="${HWSCHED_DOCKER_SOCK:-/run/hwsched-docker/docker.sock}"
export DOCKER_HOST="unix://$SOCK"
if docker version >/dev/null 2>&1; then
    exit 0
fi
mkdir -p "$(dirname "$SOCK")" /var/lib/hwsched-docker
nohup dockerd --host "unix://$SOCK" --data-root /var/lib/hwsched-docker/data \
    --exec-root /run/hwsched-docker/exec --pidfile /run/hwsched-docker/docker.pid \
    --iptables=false --bridge=none >/var/log/hwsched-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
    if docker version >/dev/null 2>&1; then
        echo "dockerd: up at $DOCKER_HOST"
        exit 0
    fi
    sleep 0.5
done
echo "dockerd did not start; see /var/log/hwsched-dockerd.log" >&2
tail -20 /var/log/hwsched-dockerd.log >&2
exit 1

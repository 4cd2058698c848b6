#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, then run a one-machine pool with
# JupyterLab (real GPUs where NVML finds them, clearly labelled simulated ones otherwise).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HWSCHED_VENV:-/opt/jupyter-hwsched/venv}"
bash "$HERE/scripts/setup.sh"
bash "$HERE/scripts/dockerd.sh"
export DOCKER_HOST="unix://${HWSCHED_DOCKER_SOCK:-/run/hwsched-docker/docker.sock}"
export PATH="$VENV/bin:$PATH"
exec hwsched up --lab "$@"

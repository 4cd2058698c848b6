#!/usr/bin/env bash
# The test command: set up (idempotent), start dockerd, run the whole suite.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HWSCHED_VENV:-/opt/jupyter-hwsched/venv}"
bash "$HERE/scripts/setup.sh"
bash "$HERE/scripts/dockerd.sh"
export DOCKER_HOST="unix://${HWSCHED_DOCKER_SOCK:-/run/hwsched-docker/docker.sock}"
cd "$HERE"
"$VENV/bin/ruff" check jupyter_hwsched tests benchmarks scripts
"$VENV/bin/mypy" jupyter_hwsched
exec "$VENV/bin/pytest" "$@"

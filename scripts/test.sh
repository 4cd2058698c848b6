#!/usr/bin/env bash
# The test command: set up (idempotent), start dockerd, run the whole suite: ruff, mypy, the
# architecture contract (import-linter), the extension's jest tests, then pytest (end-to-end
# and browser tests included).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HWSCHED_VENV:-/opt/jupyter-hwsched/venv}"
bash "$HERE/scripts/setup.sh"
bash "$HERE/scripts/dockerd.sh"
export DOCKER_HOST="unix://${HWSCHED_DOCKER_SOCK:-/run/hwsched-docker/docker.sock}"
cd "$HERE"
"$VENV/bin/ruff" check jupyter_hwsched tests benchmarks scripts
"$VENV/bin/ruff" format --check jupyter_hwsched tests benchmarks scripts
"$VENV/bin/mypy" jupyter_hwsched
"$VENV/bin/lint-imports" --no-cache
# the JupyterLab extension's unit tests (jest); its node_modules came with the package build
(cd labextension && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npx jest --ci)
exec "$VENV/bin/pytest" "$@"

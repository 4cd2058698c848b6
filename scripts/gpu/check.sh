#!/usr/bin/env bash
# Real-GPU check, for a GPU machine with no network and no container engine: installs the
# package from a folder of wheels into the Python that has PyTorch, then runs check.py.
#   bash scripts/gpu/check.sh WHEEL_DIR
# Writes its report to $OUT/gpu-check.txt (OUT defaults to the current directory).
set -euo pipefail
WHEELS="${1:?usage: check.sh WHEEL_DIR}"
PY="${HWSCHED_GPU_PYTHON:-$(command -v python3)}"
"$PY" -m pip install -q --no-index --find-links "$WHEELS" jupyter-hwsched
exec "$PY" "$(dirname "$0")/check.py" "${OUT:-.}/gpu-check.txt"

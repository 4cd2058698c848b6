"""What the Jupyter server process knows of its remote GPU kernels.

``PROGRESS``: each kernel's start phases (queued with position, placed, ready), which the
server extension serves to JupyterLab, found by kernel id or by notebook (``NOTEBOOKS``).
The saved sessions, one file per kernel in the Jupyter runtime directory (readable by the
user alone), let a restarted server attach again to remote kernels that kept running;
``KEEP_ON_EXIT`` is set while the server stops, so that its kernels' shutdown detaches from
their sessions instead of releasing them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

from jupyter_hwsched.protocol.records import SessionRecord

PROGRESS: dict[str, list[dict[str, Any]]] = {}
#: kernel id -> the notebook it was started for (absolute path, as in JPY_SESSION_NAME)
NOTEBOOKS: dict[str, str] = {}
KEEP_ON_EXIT = {"active": False}


def record(kernel_id: str, phase: str, info: SessionRecord) -> None:
    event: dict[str, Any] = {"phase": phase, "time": time.time()}
    for key in ("position", "waiting_for", "node", "gpu_ids", "estimated_start"):
        value = getattr(info, key)
        if value is not None:
            event[key] = value
    PROGRESS.setdefault(kernel_id, []).append(event)


def started_for(kernel_id: str, notebook: str) -> None:
    PROGRESS[kernel_id] = []
    if notebook:
        NOTEBOOKS[kernel_id] = notebook


def latest_for(notebook: str) -> str | None:
    """The kernel started last for a notebook, whose phases JupyterLab shows while it starts."""
    found = [kid for kid, path in NOTEBOOKS.items() if path == notebook]
    return found[-1] if found else None


def saved_dir() -> Path:
    return Path(jupyter_runtime_dir()) / "hwsched-kernels"


def save(kernel_id: str, state: dict[str, Any]) -> None:
    folder = saved_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / f"{kernel_id}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)


def forget(kernel_id: str) -> None:
    (saved_dir() / f"{kernel_id}.json").unlink(missing_ok=True)
    PROGRESS.pop(kernel_id, None)
    NOTEBOOKS.pop(kernel_id, None)


def saved() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(saved_dir().glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out

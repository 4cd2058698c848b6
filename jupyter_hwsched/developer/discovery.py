"""Where the parts of a one-machine pool find each other without any settings.

``hwsched up`` writes a small JSON file, readable only by its user, in the Jupyter runtime
directory; clients started by the same user read it when ``HWSCHED_URL`` and friends are not set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

DISCOVERY_NAME = "hwsched-up.json"


def discovery_path() -> Path:
    return Path(jupyter_runtime_dir()) / DISCOVERY_NAME


def write_discovery(info: dict[str, Any]) -> Path:
    path = discovery_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    tmp.replace(path)
    return path


def read_discovery() -> dict[str, Any]:
    """The running pool's addresses, or ``{}`` when ``hwsched up`` is not running."""
    path = discovery_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    pid = data.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        return {}
    return data if isinstance(data, dict) else {}


def remove_discovery() -> None:
    try:
        discovery_path().unlink()
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

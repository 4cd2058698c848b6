"""The binder demo as mybinder starts it, as a user who is not root: ``binder/start`` brings
up a one-machine pool with simulated GPUs and the host runner (no container engine), and the
demo notebook runs against it, ``%hwstatus`` and ``%%hwrun`` (text and a plot) included."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import DEV_USER

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def outputs_text(cell: dict[str, object]) -> str:
    parts = []
    for output in cell["outputs"]:  # type: ignore[attr-defined]
        text = output.get("text", "")
        parts.append(text if isinstance(text, str) else "".join(text))
    return "".join(parts)


def test_binder_start_serves_the_demo_notebook(dev_workspace: Path) -> None:
    user = pwd.getpwnam(DEV_USER)
    # the developer account may not reach into the checkout: it gets copies of its own
    for name in ("demo.ipynb", "start"):
        shutil.copy2(REPO / "binder" / name, dev_workspace / name)
        os.chown(dev_workspace / name, user.pw_uid, user.pw_gid)
    bin_dir = Path(sys.executable).parent
    # what binder's JupyterLab would be: a command started by binder/start once the pool is up
    command = (
        "for i in $(seq 120); do hwsched status >/dev/null 2>&1 && break; sleep 0.5; done; "
        "jupyter execute --output=ran.ipynb demo.ipynb"
    )
    env = {
        "HOME": user.pw_dir,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    try:
        result = subprocess.run(
            [
                "/usr/sbin/runuser",
                "-u",
                DEV_USER,
                "--",
                str(dev_workspace / "start"),
                "sh",
                "-c",
                command,
            ],
            cwd=dev_workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        log = Path(user.pw_dir, ".hwsched-up.log")
        assert result.returncode == 0, result.stderr[-3000:] + log.read_text()[-3000:]
        ran = json.loads((dev_workspace / "ran.ipynb").read_text())
        code = [c for c in ran["cells"] if c["cell_type"] == "code"]
        status, hwrun = outputs_text(code[0]), code[1]
        assert "A100-80GB [simulated]" in status and "free" in status
        assert outputs_text(hwrun).startswith("running on ")
        assert "with GPU 0" in outputs_text(hwrun) or "with GPU 1" in outputs_text(hwrun)
        assert any("image/png" in o.get("data", {}) for o in hwrun["outputs"])
        assert "SIMULATED GPUs" in log.read_text()
    finally:
        subprocess.run(["pkill", "-TERM", "-u", DEV_USER, "-f", "hwsched up"], check=False)
        subprocess.run(["pkill", "-TERM", "-u", DEV_USER, "-f", "jupyter_hwsched.cli"], check=False)

"""A plain ``pip install`` of the built wheel, in a fresh virtual environment, enables both the
JupyterLab extension and the server extension, and installs the "Remote GPU" kernelspec."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_pip_install_of_the_wheel_enables_both_extensions(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)])
    [wheel] = wheels.glob("jupyter_hwsched-*.whl")
    listing = run([sys.executable, "-m", "zipfile", "-l", str(wheel)])
    assert "share/jupyter/labextensions/jupyter-hwsched/package.json" in listing
    assert "share/jupyter/labextensions/jupyter-hwsched/static/remoteEntry." in listing
    assert "share/jupyter/labextensions/jupyter-hwsched/schemas/jupyter-hwsched/plugin.json" in (
        listing
    )

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin/pip"), "install", "-q", f"{wheel}[lab]"])  # with JupyterLab
    # nothing from this user's own Jupyter directories: only what the install put in the venv
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "JUPYTER_PREFER_ENV_PATH": "1",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "LANG"))})

    labextensions = run([str(venv / "bin/jupyter"), "labextension", "list"], env)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", labextensions)
    assert re.search(r"jupyter-hwsched v0\.1\.0 enabled OK \(python, jupyter-hwsched\)", plain), (
        plain
    )
    assert str(venv / "share/jupyter/labextensions") in plain

    server = re.sub(
        r"\x1b\[[0-9;]*m", "", run([str(venv / "bin/jupyter"), "server", "extension", "list"], env)
    )
    assert re.search(r"jupyter_hwsched enabled", server), server
    assert re.search(r"jupyter_hwsched 0\.1\.0 OK", server), server

    kernels = run([str(venv / "bin/jupyter"), "kernelspec", "list"], env)
    assert re.search(r"hwsched-remote\s+" + re.escape(str(venv)), kernels), kernels

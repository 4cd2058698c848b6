"""``hwsched kernelspec``: install, list and remove Remote GPU kernelspecs (no pool needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HWSCHED = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched", "kernelspec"]


def hwsched(args: list[str], data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUPYTER_DATA_DIR": str(data), "JUPYTER_PATH": str(data)}
    return subprocess.run([*HWSCHED, *args], env=env, capture_output=True, text=True, timeout=120)


def test_install_list_and_remove_a_kernelspec_for_a_request(tmp_path: Path) -> None:
    done = hwsched(["install", "--gpus", "2", "--gpu-type", "A100", "--user"], tmp_path)
    assert done.returncode == 0, done.stderr
    spec_file = tmp_path / "kernels" / "hwsched-remote-2gpu-a100" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    assert spec["display_name"] == "Remote GPU: 2 x A100 (shared env)"
    assert spec["argv"][0] == sys.executable and Path(spec["argv"][0]).is_absolute()
    assert spec["argv"][1:5] == [
        "-m",
        "jupyter_hwsched.developer.kernel",
        "-f",
        "{connection_file}",
    ]
    assert spec["argv"][5:] == ["--gpu", "2", "--gpu-type", "A100"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "hwsched-remote"
    listed = hwsched(["list"], tmp_path)
    assert "hwsched-remote-2gpu-a100" in listed.stdout and "2 x A100" in listed.stdout
    assert hwsched(["remove", "hwsched-remote-2gpu-a100"], tmp_path).returncode == 0
    assert not spec_file.exists()
    missing = hwsched(["remove", "hwsched-remote-2gpu-a100"], tmp_path)
    assert missing.returncode == 2 and "no Remote GPU kernelspec" in missing.stderr


def test_a_bad_request_is_refused_at_install(tmp_path: Path) -> None:
    done = hwsched(["install", "--gpus", "0", "--user"], tmp_path)
    assert done.returncode == 2 and "--gpu 0 asks for no GPU" in done.stderr
    assert not (tmp_path / "kernels").exists()

"""Bad input gets one line that says what to change: no traceback, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from harness import Pool, free_port

pytestmark = pytest.mark.e2e

HWRUN = str(Path(sys.executable).parent / "hwrun")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--gpu", "0"], "--gpu 0 asks for no GPU"),
        (["--gpu", "-1"], "--gpu -1 asks for no GPU"),
        (["--gpu", "999"], "more than one session may hold"),
        (["--gpu", "3"], "no node has 3 matching GPUs"),
        (["--gpu", "two"], "is not a whole number"),
        (["--gpu-type", "V100"], "no node has GPUs of type 'V100'"),
        (["--gpu-mem", "200G"], "no GPU in the pool has 200G"),
        (["--gpu-mem", "lots"], "is not a memory size"),
    ],
)
def test_bad_requests(clean_pool: Pool, args: list[str], says: str) -> None:
    result = clean_pool.hwrun([*args, "--", "true"], cwd="/")
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("hwrun: error: ") and says in line


def test_wrong_token(clean_pool: Pool) -> None:
    result = clean_pool.hwrun(["--gpu", "1", "--", "true"], cwd="/", env={"HWSCHED_TOKEN": "wrong"})
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "refused the token" in line and "HWSCHED_TOKEN" in line


def test_unreachable_scheduler(clean_pool: Pool) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = clean_pool.hwrun(["--gpu", "1", "--", "true"], cwd="/", env={"HWSCHED_URL": url})
    assert result.returncode == 125
    [line] = result.stderr.splitlines()
    assert f"cannot reach the scheduler at {url}" in line and "HWSCHED_URL" in line


def test_no_command(clean_pool: Pool) -> None:
    result = clean_pool.hwrun(["--gpu", "1"], cwd="/")
    assert result.returncode == 2
    assert "no command given" in result.stderr


def test_status_with_wrong_token(clean_pool: Pool) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hwsched"), "status"],
        env={**clean_pool.env, "HWSCHED_TOKEN": "wrong"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "refused the token" in line


def test_the_current_directory_tmp_itself_is_refused(clean_pool: Pool) -> None:
    result = clean_pool.hwrun(["--gpu", "1", "--", "true"], cwd="/tmp")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "the current directory is /tmp itself" in line and "private to each GPU node" in line
    assert clean_pool.api("GET", "/api/sessions") == []  # nothing was queued


def test_a_venv_and_a_directory_under_tmp_are_shown_on_the_node(
    clean_pool: Pool, tmp_path: Path
) -> None:
    """The node's /tmp is its own, so what the run needs of the caller's (a venv first in
    PATH, the working directory) is shown from the share at the same paths: the node runs the
    caller's own python there, never its other one."""
    env_dir = tmp_path / "venv-in-tmp"
    venv.create(env_dir, with_pip=False, symlinks=True)
    path = f"{env_dir / 'bin'}:{os.environ['PATH']}"
    probe = "import os, sys; print(sys.prefix); print(os.getcwd()); open('made-there', 'w')"
    os.chmod(tmp_path, 0o755)
    result = clean_pool.hwrun(
        ["--gpu", "1", "--", "python", "-c", probe], cwd=str(tmp_path), env={"PATH": path}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(env_dir), str(tmp_path)]
    assert (tmp_path / "made-there").exists()  # written through the share, not on the node
    clean_pool.assert_clean()


def test_a_program_that_does_not_exist_is_refused_before_anything_is_asked(
    clean_pool: Pool,
) -> None:
    result = clean_pool.hwrun(["--gpu", "1", "--", "no-such-program-xyz"], cwd="/")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert "no-such-program-xyz: no such program here in PATH" in line
    assert clean_pool.api("GET", "/api/sessions") == []  # nothing was queued


def test_a_program_the_node_cannot_start_says_why_in_one_line(clean_pool: Pool) -> None:
    """It exists but cannot be executed: the engine's refusal, as the program's own line."""
    result = clean_pool.hwrun(["--gpu", "1", "--", "/etc/hostname"], cwd="/")
    assert result.returncode == 126, result.stderr
    assert result.stdout == ""
    assert "/etc/hostname: cannot start on the node: permission denied" in result.stderr
    assert "OCI runtime" not in result.stderr
    clean_pool.assert_clean()

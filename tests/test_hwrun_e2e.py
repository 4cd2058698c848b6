"""``hwrun`` end to end: scheduler, agent, share, sshfs and Docker all real."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest
from harness import DEV_USER, Pool, ctrl_c, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pool(each_runner_pool: Pool) -> Pool:
    """These tests pass with each runner that roots work at the share (Docker, bubblewrap)."""
    return each_runner_pool


def test_root_is_the_share_and_files_cross_both_ways(clean_pool: Pool, dev_workspace: Path) -> None:
    token = uuid.uuid4().hex
    (dev_workspace / "written-before.txt").write_text(token)  # just before the run
    script = (
        "cat written-before.txt; echo; "
        "grep ' /home fuse.sshfs ' /proc/mounts; "
        "grep ' /usr overlay ' /proc/mounts; "
        "echo from-the-node > written-remotely.txt; id -u; id -g"
    )
    result = clean_pool.hwrun(
        ["--gpu", "1", "--", "sh", "-c", script], user=DEV_USER, cwd=str(dev_workspace)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == token
    assert "fuse.sshfs" in lines[1] and lines[1].startswith(f"{DEV_USER}@")
    # /usr, a read-mostly tree, comes through the node's cache, read-only
    assert lines[2].split()[3].split(",")[0] == "ro", lines[2]
    dev = pwd.getpwnam(DEV_USER)
    assert lines[3:5] == [str(dev.pw_uid), str(dev.pw_gid)]
    written = dev_workspace / "written-remotely.txt"
    assert written.read_text() == "from-the-node\n"
    assert written.stat().st_uid == dev.pw_uid  # written as the developer, not root


def test_exit_code_streams_and_verbatim_arguments(clean_pool: Pool, dev_workspace: Path) -> None:
    odd = ["a b", "$HOME", "*", "'quoted'", "", "--gpu"]
    code = "import sys; print(repr(sys.argv[1:])); print('to-err', file=sys.stderr); sys.exit(7)"
    result = clean_pool.hwrun(
        ["-q", "--gpu", "1", "--", "python3", "-c", code, *odd],
        user=DEV_USER,
        cwd=str(dev_workspace),
    )
    assert result.returncode == 7
    assert result.stdout == repr(odd) + "\n"
    assert result.stderr == "to-err\n"


def test_environment_directory_and_visible_gpus(clean_pool: Pool, dev_workspace: Path) -> None:
    result = clean_pool.hwrun(
        [
            "-q",
            "--gpu",
            "2",
            "--",
            "sh",
            "-c",
            "pwd; echo $MY_SETTING; echo ${DISPLAY:-no-display}; echo $CUDA_VISIBLE_DEVICES; "
            "echo $HWSCHED_SIMULATED_GPUS; echo $HOME; hostname",
        ],
        user=DEV_USER,
        cwd=str(dev_workspace),
        env={"MY_SETTING": "kept", "DISPLAY": ":7"},
    )
    assert result.returncode == 0, result.stderr
    pwd_, setting, display, visible, simulated, home, _host = result.stdout.splitlines()
    assert pwd_ == str(dev_workspace)
    assert setting == "kept"
    assert display == "no-display"  # only meaningful on the developer's machine
    assert visible == "0,1"
    assert simulated == "1"
    assert home == pwd.getpwnam(DEV_USER).pw_dir


def test_output_streams_live(clean_pool: Pool) -> None:
    proc = clean_pool.popen_hwrun(
        ["-q", "--gpu", "1", "--", "sh", "-c", "echo first; sleep 30; echo never"], cwd="/"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "first\n"  # arrives while the command still runs
    assert proc.poll() is None
    ctrl_c(proc)
    proc.communicate(timeout=60)
    assert proc.returncode != 0


def test_ctrl_c_reaches_the_command(clean_pool: Pool, dev_workspace: Path) -> None:
    script = "trap 'echo got-INT; exit 42' INT; echo ready; while :; do sleep 0.1; done"
    proc = clean_pool.popen_hwrun(
        ["-q", "--gpu", "1", "--", "sh", "-c", script], user=DEV_USER, cwd=str(dev_workspace)
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    ctrl_c(proc)
    out, err = proc.communicate(timeout=60)
    assert out == "got-INT\n", err
    assert proc.returncode == 42


def test_killed_client_is_reclaimed(clean_pool: Pool) -> None:
    proc = clean_pool.popen_hwrun(
        ["-q", "--gpu", "1", "--", "sh", "-c", "echo up; sleep 300"], cwd="/"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    assert clean_pool.held_gpus()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    # the lease lapses, the scheduler ends the session, the agent and the share agent clean up
    clean_pool.assert_clean(timeout=60)


def test_two_sessions_get_different_gpus_and_a_third_waits(
    clean_pool: Pool, dev_workspace: Path
) -> None:
    gate = dev_workspace / "gate"  # not under /tmp: the container's /tmp is the node's own
    hold = f"echo $CUDA_VISIBLE_DEVICES; while [ ! -e {gate} ]; do sleep 0.1; done"
    first = clean_pool.popen_hwrun(["-q", "--gpu", "1", "--", "sh", "-c", hold], cwd="/")
    second = clean_pool.popen_hwrun(["-q", "--gpu", "1", "--", "sh", "-c", hold], cwd="/")
    assert first.stdout is not None and second.stdout is not None
    gpus = {first.stdout.readline().strip(), second.stdout.readline().strip()}
    assert gpus == {"0", "1"}
    third = clean_pool.popen_hwrun(["--gpu", "1", "--", "echo", "third ran"], cwd="/")
    assert third.stderr is not None
    queued = third.stderr.readline()
    assert "queued, position 1" in queued
    assert third.poll() is None  # still waiting: both GPUs are held
    time.sleep(1.0)
    assert third.poll() is None
    gate.touch()  # the first two finish and release
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert out == "third ran\n"
    for proc in (first, second):
        proc.communicate(timeout=60)
        assert proc.returncode == 0


def test_status_shows_holder_while_running(clean_pool: Pool, dev_workspace: Path) -> None:
    gate = dev_workspace / "gate"
    proc = clean_pool.popen_hwrun(
        [
            "-q",
            "--gpu",
            "1",
            "--",
            "sh",
            "-c",
            f"echo up; while [ ! -e {gate} ]; do sleep 0.1; done",
        ],
        cwd="/",
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    import subprocess
    import sys

    status = subprocess.run(
        [str(Path(sys.executable).parent / "hwsched"), "status"],
        env=clean_pool.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = next(
        line
        for line in status.splitlines()
        if line.startswith(clean_pool.node) and " root " in line
    )
    assert "[simulated]" in row
    gate.touch()
    proc.communicate(timeout=60)
    wait_for(lambda: not clean_pool.held_gpus(), 30, "the GPU to be free")


def test_a_dropped_share_ends_the_session_cleanly(clean_pool: Pool) -> None:
    proc = clean_pool.popen_hwrun(
        ["-q", "--gpu", "1", "--", "sh", "-c", "echo up; sleep 300"], cwd="/"
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    servers = clean_pool.share_servers()
    assert len(servers) == 1
    # the developer's side goes away: the SFTP server and every connection under it
    for victim in [*servers[0].children(recursive=True), servers[0]]:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone with its child
            victim.kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 125
    assert "the connection to the developer's share was lost" in err
    assert "Traceback" not in err


def test_time_limit_ends_the_run_and_says_so(clean_pool: Pool) -> None:
    result = clean_pool.hwrun(["--gpu", "1", "--timeout", "2", "--", "sleep", "60"], cwd="/")
    assert result.returncode == 125
    assert "time limit of 2 s reached" in result.stderr.splitlines()[-1]

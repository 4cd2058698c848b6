"""Per-session limits and honest start failures, on a real pool, with each runner that roots
work at the share (Docker, bubblewrap).

A memory hog, a fork bomb and a ``/tmp`` filler each end their own session, with one line that
names the limit, while a co-tenant's run on the same node goes on and completes. A request over
the node's bounds is refused before anything is made. A kernel whose interpreter cannot start
reports its own words at once, with no restart loop, and its GPU goes back.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import RUNNER_ARGS, Pool, wait_for
from jupyter_client.connect import write_connection_file

pytestmark = pytest.mark.e2e

LIMIT_ARGS = (
    "--SessionLimits.memory=256M",
    "--SessionLimits.max_memory=1G",
    "--SessionLimits.pids=64",
    "--SessionLimits.tmp=16M",
    "--SessionLimits.cpus=1",
    "--SessionLimits.max_cpus=2",
)
PY = sys.executable

# counts to N, slowly: the co-tenant whose run must survive its neighbours
COTENANT = "import time\nfor i in range(40):\n    print(i, flush=True)\n    time.sleep(0.1)\n"


@pytest.fixture(scope="module", params=sorted(RUNNER_ARGS))
def pool(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pool]:
    p = Pool(
        tmp_path_factory.mktemp(f"limits-{request.param}"),
        simulate="4xA100-80GB",
        agent_args=(*RUNNER_ARGS[request.param], *LIMIT_ARGS),
    )
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def clean(pool: Pool) -> Iterator[Pool]:
    pool.assert_clean()
    yield pool
    pool.assert_clean()


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("hwrun: error:")]
    assert len(lines) == 1, f"expected one error line:\n{done.stderr}"
    return lines[0]


def _beside_a_cotenant(pool: Pool, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``hwrun ARGS`` while another session counts on the same node; that one must end
    well, with every line."""
    cotenant = pool.popen_hwrun(["--gpu", "1", "--", PY, "-c", COTENANT])
    wait_for(lambda: len(pool.held_gpus()) >= 1, 60, "the co-tenant to hold its GPU")
    done = pool.hwrun(["--gpu", "1", *args])
    out, err = cotenant.communicate(timeout=120)
    assert cotenant.returncode == 0, err
    assert out.split() == [str(i) for i in range(40)], out
    return done


def test_a_memory_hog_ends_only_its_own_session(clean: Pool) -> None:
    done = _beside_a_cotenant(
        clean, ["--", PY, "-c", "x = bytearray(600 * 2**20); print('survived')"]
    )
    assert done.returncode != 0, done.stdout
    assert "survived" not in done.stdout
    line = _one_line_error(done)
    assert "memory limit of 256M" in line and "--mem" in line, line


def test_asking_for_more_memory_within_the_bound_is_granted(clean: Pool) -> None:
    done = clean.hwrun(
        ["--mem", "900M", "--", PY, "-c", "x = bytearray(600 * 2**20); print('survived')"]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "survived"


def test_a_request_over_the_node_bound_is_refused_and_the_gpu_goes_back(clean: Pool) -> None:
    done = clean.hwrun(["--mem", "4G", "--", "true"])
    assert done.returncode != 0
    line = _one_line_error(done)
    assert "--mem 4G" in line and "at most" in line and "1G" in line, line
    done = clean.hwrun(["--cpus", "8", "--", "true"])
    assert done.returncode != 0
    assert "--cpus 8" in _one_line_error(done)
    wait_for(lambda: clean.held_gpus() == [], 30, "the GPUs to be back")


FORK_BOMB = """
import os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        time.sleep(30)  # the limit held; the agent ends the session meanwhile
        raise SystemExit(3)
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
"""


def test_a_fork_bomb_ends_only_its_own_session(clean: Pool) -> None:
    done = _beside_a_cotenant(clean, ["--", PY, "-c", FORK_BOMB])
    assert done.returncode != 0
    line = _one_line_error(done)
    assert "limit of 64 processes" in line, line


def test_a_tmp_filler_that_fails_is_told_why_and_ends_only_its_own_session(clean: Pool) -> None:
    # a full /tmp ends nothing by itself (test_faults_e2e: a run that handles ENOSPC goes
    # on); a run that fails on it reads why
    filler = "dd if=/dev/zero of=/tmp/fill bs=1M count=64 && sleep 30"
    done = _beside_a_cotenant(clean, ["--", "sh", "-c", filler])
    assert done.returncode != 0
    line = _one_line_error(done)
    assert "filled its /tmp (16M)" in line, line


def test_the_session_sees_its_own_limits(clean: Pool) -> None:
    """What it asked for (--mem, --cpus) in its cgroup (v1 or v2), the /tmp size the node
    gives every session."""
    probe = (
        "df -k /tmp | tail -1 | awk '{print $2}'; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
        "|| cat /sys/fs/cgroup/memory.max; "
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
        "2>/dev/null || cat /sys/fs/cgroup/cpu.max"
    )
    done = clean.hwrun(["--mem", "512M", "--cpus", "1.5", "--", "sh", "-c", probe])
    assert done.returncode == 0, done.stderr
    tmp_kb, memory, quota, period = done.stdout.split()
    assert int(tmp_kb) == 16 * 1024, done.stdout
    assert int(memory) == 512 * 2**20, done.stdout
    assert int(quota) / int(period) == 1.5, done.stdout


def test_a_kernel_that_cannot_start_says_why_at_once(clean: Pool, tmp_path: Path) -> None:
    """An interpreter that fails in the container: the Remote GPU kernel's launcher (what every
    front end starts) fails with the kernel's own words, once, and the GPU is free again."""
    fake = Path("/var/lib/hwsched-test") / f"broken-python-{clean.node}"
    fake.write_text(
        "#!/bin/sh\necho 'this python is broken: No module named ipykernel' >&2\nexit 7\n"
    )
    fake.chmod(0o755)
    connection, _ = write_connection_file(str(tmp_path / "kernel.json"), ip="127.0.0.1")
    launcher = ["--gpu", "1", "--python", str(fake)]
    try:
        done = subprocess.run(
            [PY, "-m", "jupyter_hwsched.developer.kernel", "-f", str(connection), *launcher],
            env=clean.client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        fake.unlink()
    assert done.returncode == 1, done.stderr
    lines = [x for x in done.stderr.splitlines() if "could not start" in x]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert "the kernel exited at start (exit code 7)" in line, line
    assert "No module named ipykernel" in line, line
    assert "restarting kernel" not in clean.services[1].log.read_text()
    wait_for(lambda: clean.held_gpus() == [], 30, "the GPU to be back")

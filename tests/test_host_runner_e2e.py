"""The host runner: a GPU machine without a container engine that is the developer's own.

This is the path the lent GPU machines take (no Docker, no sshd there); here it runs with
simulated GPUs, with the same scheduler and agent as everywhere else.
"""

from __future__ import annotations

import pwd
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import DEV_USER, Pool, agent_alone

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def host_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    pool = Pool(
        tmp_path_factory.mktemp("host-pool"),
        agent_args=(
            "--AgentApp.runner_class=jupyter_hwsched.agent.host_runner.HostRunner",
            "--HostRunner.single_user=True",
        ),
    )
    try:
        yield pool
    finally:
        pool.stop()


def test_runs_as_the_developer_with_only_the_allocated_gpus(
    host_pool: Pool, dev_workspace: Path
) -> None:
    result = host_pool.hwrun(
        ["-q", "--gpu", "1", "--", "sh", "-c", "id -u; pwd; echo $CUDA_VISIBLE_DEVICES; exit 5"],
        user=DEV_USER,
        cwd=str(dev_workspace),
    )
    assert result.returncode == 5, result.stderr
    uid, cwd, visible = result.stdout.split()
    assert int(uid) == pwd.getpwnam(DEV_USER).pw_uid
    assert cwd == str(dev_workspace)
    assert visible in ("0", "1")
    assert host_pool.shares() == []  # the node's own root: no share was opened
    host_pool.assert_clean()


def test_kernel_session_through_the_host_runner(host_pool: Pool, dev_workspace: Path) -> None:
    from test_magic_e2e import Notebook

    nb = Notebook(host_pool, dev_workspace)
    try:
        result = nb.run("%%hwrun --gpu 2\nimport os\nprint(os.environ['CUDA_VISIBLE_DEVICES'])")
    finally:
        nb.close()
    assert result["status"] == "ok", result
    assert "0,1" in "".join(o.get("text", "") for o in result["outputs"])
    host_pool.assert_clean()


def test_the_work_has_no_network_of_the_node(host_pool: Pool, dev_workspace: Path) -> None:
    """Each process has a network namespace of its own: the scheduler and the agent, both
    listening on the node's loopback, are out of reach, and no socket of the node shows."""
    probe = (
        "import socket, sys\n"
        f"for port in ({host_pool.port}, {host_pool.agent_port}):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=5).close()\n"
        "        print('reached', port)\n"
        "    except OSError as exc:\n"
        "        print('refused', port)\n"
        "tables = [open(f'/proc/net/{t}').read().splitlines()[1:] for t in ('tcp', 'tcp6')]\n"
        "print('sockets', sum(map(len, tables)))\n"
    )
    result = host_pool.hwrun(
        ["-q", "--", sys.executable, "-c", probe], user=DEV_USER, cwd=str(dev_workspace)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "refused",
        str(host_pool.port),
        "refused",
        str(host_pool.agent_port),
        "sockets",
        "0",
    ], result.stdout
    host_pool.assert_clean()


def test_the_host_runner_is_refused_unless_the_pool_is_single_user(tmp_path: Path) -> None:
    done = agent_alone(
        tmp_path / "state",
        "--simulate-gpus=1xA100-80GB",
        "--AgentApp.runner_class=jupyter_hwsched.agent.host_runner.HostRunner",
    )
    assert done.returncode == 1, done.stderr
    [line] = [x for x in done.stderr.splitlines() if "cannot start" in x]
    assert "use the Docker runner" in line and "--HostRunner.single_user=True" in line, line

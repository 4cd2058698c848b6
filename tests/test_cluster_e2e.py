"""Several agents on one running scheduler: placement across nodes, and the loss of a node."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import DEV_USER, Pool, assert_nothing_left, free_port, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pool, str]]:
    pool = Pool(tmp_path_factory.mktemp("cluster"), simulate="3xA100-80GB", node_timeout=3)
    fast = f"fast-{uuid.uuid4().hex[:6]}"
    pool.add_agent(fast, "2xH100-80GB", "--AgentApp.labels=fastlane")
    try:
        yield pool, fast
    finally:
        pool.stop()


def where(pool: Pool, *args: str) -> str:
    result = pool.hwrun(["-q", *args, "--", "sh", "-c", "echo $HWSCHED_NODE"], cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_type_alternatives_labels_and_best_fit(cluster: tuple[Pool, str]) -> None:
    pool, fast = cluster
    assert where(pool, "--gpu-type", "V100|H100") == fast
    assert where(pool, "--node", "fastlane") == fast
    assert where(pool, "--gpu-type", "A100") == pool.node
    # best fit: a 1-GPU request goes to the node with fewer free GPUs, keeping the other whole
    assert where(pool, "--gpu", "1") == fast
    assert where(pool, "--gpu", "3") == pool.node


def test_a_node_refuses_root_unless_allowed(cluster: tuple[Pool, str], dev_workspace: Path) -> None:
    pool, _ = cluster
    strict = f"strict-{uuid.uuid4().hex[:6]}"
    pool.add_agent(strict, "1xT4-16GB", "--AgentApp.allow_root=False")
    as_root = pool.hwrun(["--node", strict, "--", "true"], cwd="/")
    assert as_root.returncode == 2
    assert "does not run work as root" in as_root.stderr
    as_dev = pool.hwrun(
        ["-q", "--node", strict, "--", "id", "-u"], user=DEV_USER, cwd=str(dev_workspace)
    )
    assert as_dev.returncode == 0, as_dev.stderr
    pool.assert_clean()


def test_lost_node_ends_its_sessions_and_leaves_the_pool(cluster: tuple[Pool, str]) -> None:
    pool, fast = cluster
    # one session held through the API (renewed below), one by a running hwrun
    held = pool.api(
        "POST", "/api/sessions", {"request": {"node": fast}, "user": "api", "host": "h"}
    )
    assert held["node"] == fast
    proc = pool.popen_hwrun(["-q", "--node", fast, "--", "sh", "-c", "echo up; sleep 300"], cwd="/")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    agent = next(s for s in pool.services if s.name == f"agent-{fast}")
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()

    def ended() -> dict[str, str] | None:
        session = pool.api("GET", f"/api/sessions/{held['id']}")
        if session["state"] != "ended":
            try:  # keep its lease: the node's heartbeats, not the lease, must end it
                pool.api("POST", f"/api/sessions/{held['id']}/renew")
            except urllib.error.HTTPError as exc:
                if exc.code != 410:  # 410: it ended between the two calls; read why
                    raise
            return None
        return dict(session)

    session = wait_for(ended, 60, "the scheduler to end the session")
    assert f"node {fast} stopped sending heartbeats" in session["end_reason"]
    # hwrun waited for its node to come back, and hears the scheduler's verdict
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 125 and "Traceback" not in err
    assert err.splitlines() == [f"hwrun: error: the session ended: {session['end_reason']}"]
    nodes = {n["name"]: n for n in pool.pool()["nodes"]}
    assert not nodes[fast]["up"]
    down = pool.hwrun(["--node", fast, "--", "true"], cwd="/")
    assert down.returncode == 125  # its GPUs are out of the pool until it returns
    assert f"the nodes that could hold this request are down ({fast})" in down.stderr
    # the node comes back: what the killed agent left (container, mount) is removed at start
    restarted = pool.agent_service(
        fast, free_port(), "2xH100-80GB", ("--AgentApp.labels=fastlane",), f"agent-{fast}"
    )
    pool.services.insert(1, restarted)
    restarted.wait_line("HWSCHED_AGENT_READY")

    def leftovers() -> dict[str, list[str]]:
        containers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=hwsched.node={fast}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        with open("/proc/self/mounts") as f:
            mounts = [line for line in f if str(pool.state / f"agent-{fast}") in line]
        return {k: v for k, v in (("containers", containers), ("mounts", mounts)) if v}

    # what it could not take back goes at its start; a command it took back (its container,
    # mount and keeper still there) goes once its first heartbeat hears the session ended
    assert_nothing_left(leftovers, 60, f"node {fast}")
    assert where(pool, "--node", fast) == fast
    pool.assert_clean()

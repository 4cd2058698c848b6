"""A node agent that starts removes what no live session owns: containers and mounts."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from harness import Pool, agent_alone

pytestmark = pytest.mark.e2e


def test_agent_start_removes_leftover_containers_and_mounts(
    pool: Pool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    node = f"restart-{uuid.uuid4().hex[:6]}"
    stray_mount = None

    def plant(p: Pool) -> None:
        nonlocal stray_mount
        # what a crashed agent leaves: a labelled container, a mount under its state dir
        subprocess.run(
            [
                "docker",
                "create",
                "--label",
                f"hwsched.node={node}",
                "--label",
                "hwsched.session=stray",
                "hwsched-base:1",
                "/nothing",
            ],
            check=True,
            capture_output=True,
        )
        stray_mount = p.state / "agent" / "mnt" / "stray"
        stray_mount.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "none", str(stray_mount)], check=True)

    assert pool.containers() == []  # the session pool made the base image; nothing runs
    other = Pool(tmp_path_factory.mktemp("restart"), node=node, before_agent=plant)
    try:
        assert stray_mount is not None
        assert other.containers() == []
        assert other.mounts() == []
    finally:
        other.stop()


def test_an_agent_that_cannot_start_says_why_and_exits(tmp_path: Path) -> None:
    """Not half-loaded: jupyter_server would serve on without the extension."""
    done = agent_alone(tmp_path / "state", "--simulate-gpus=3xNOPE-XYZ")
    assert done.returncode == 1
    assert "the node agent cannot start: --simulate-gpus '3xNOPE-XYZ'" in done.stderr
    assert "AttributeError" not in done.stderr

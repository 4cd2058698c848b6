"""Fixtures: one real pool per test session, and a non-root developer's workspace."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_hwsched.testing import DEV_USER, Pool


def _need_e2e() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (mounting with FUSE and running dockerd need it)")
    for tool in ("sshfs", "docker", "ssh-keygen"):
        if not shutil.which(tool):
            problems.append(f"{tool} is missing")
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "version"], capture_output=True).returncode
    ):
        problems.append("no Docker Engine answers at DOCKER_HOST: run 'bash scripts/dockerd.sh'")
    if problems:
        pytest.fail(
            "end-to-end tests cannot run: " + "; ".join(problems) + " (bash scripts/setup.sh)"
        )


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    _need_e2e()
    the_pool = Pool(tmp_path_factory.mktemp("pool"))
    try:
        yield the_pool
    finally:
        the_pool.stop()


@pytest.fixture
def clean_pool(pool: Pool) -> Iterator[Pool]:
    """The pool, checked clean before and after the test."""
    pool.assert_clean()
    yield pool
    pool.assert_clean(timeout=60)


@pytest.fixture
def dev_workspace() -> Iterator[Path]:
    """A directory owned by the non-root developer account, under its home."""
    try:
        user = pwd.getpwnam(DEV_USER)
    except KeyError:
        pytest.fail(f"the developer account {DEV_USER!r} is missing: run 'bash scripts/setup.sh'")
    path = Path(user.pw_dir) / f"ws-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    os.chown(path, user.pw_uid, user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)

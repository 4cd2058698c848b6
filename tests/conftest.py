"""Fixtures: one real pool per test session, and a non-root developer's workspace."""

from __future__ import annotations

import gc
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DEV_USER, POOL_KINDS, Pool, Service, free_port

from jupyter_hwsched.developer.kernel import registry
from jupyter_hwsched.protocol.version import PROTOCOL_VERSION

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (the browser tests screenshot failures);
    a failed test that used a pool gets the tails of its services' logs in its report."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed:
        # a failure on a pool shows what its services said last: CI keeps no other trace
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Pool) and value.services:
                report.sections.append((f"the pool's service logs ({name})", value.log_tails()))
                break
    return report


@pytest.fixture(autouse=True)
def _server_stopped_for_good() -> Iterator[None]:
    """A Jupyter server that stops marks its process as exiting, so that its Remote GPU
    kernels detach instead of ending (registry.KEEP_ON_EXIT): a real server's process then
    exits. The tests run many servers in one process: each test starts as a fresh process
    would, or its kernels would detach and leave their sessions to the lease's expiry."""
    registry.KEEP_ON_EXIT["active"] = False
    yield
    registry.KEEP_ON_EXIT["active"] = False


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so that what a test leaks (an unclosed socket) fails that
    test rather than whichever later test the garbage collector happens to run in."""
    yield
    gc.collect()


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


def _need_slurm() -> None:
    """Slurm's daemons and MariaDB for accounting; missing, the tests fail (never skip)."""
    from jupyter_hwsched.scheduler.slurm.local import missing_programs

    missing = missing_programs(accounting=True)
    if missing:
        pytest.fail(f"the Slurm tests need {', '.join(missing)} (bash scripts/setup.sh)")


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    _need_e2e()
    the_pool = Pool(tmp_path_factory.mktemp("pool"))
    try:
        yield the_pool
    finally:
        the_pool.stop()


@pytest.fixture(scope="module", params=list(POOL_KINDS))
def each_runner_pool(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pool]:
    """A pool of the module's own for each runner that roots work at the share, and one
    placed by Slurm: a module whose tests must pass on each says ``pool = each_runner_pool``."""
    _need_e2e()
    if request.param == "slurm":
        _need_slurm()
    the_pool = Pool(tmp_path_factory.mktemp(f"pool-{request.param}"), **POOL_KINDS[request.param])
    try:
        yield the_pool
    finally:
        the_pool.stop()


@pytest.fixture(scope="module")
def slurm_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """A pool placed by a private Slurm with accounting, with identities (so that jobs are
    submitted as their verified owner)."""
    _need_e2e()
    _need_slurm()
    the_pool = Pool(tmp_path_factory.mktemp("slurm-pool"), identities=True, placement="slurm")
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
def workspace() -> Iterator[Path]:
    """A directory for the work; not under /tmp, which each node keeps private."""
    path = Path("/var/lib/hwsched-test") / f"ws-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real scheduler process with one registered 4-GPU node that has no agent behind it:
    enough for its API and for what clients read of it. Yields (url, token)."""
    work = tmp_path_factory.mktemp("api")
    token = secrets.token_hex(8)
    port = free_port()
    service = Service(
        "scheduler",
        [
            sys.executable,
            "-m",
            "jupyter_hwsched.cli.hwsched",
            "scheduler",
            f"--port={port}",
            f"--db={work / 's.sqlite'}",
            "--node-timeout=100000",
        ],
        {"HWSCHED_TOKEN": token, "PATH": "/usr/bin:/bin"},
        work / "scheduler.log",
    )
    try:
        service.wait_line("HWSCHED_SCHEDULER_READY")
        url = f"http://127.0.0.1:{port}"
        gpus = [{"index": i, "model": "A100-80GB", "memory": 80 * 1024**3} for i in range(4)]
        request = urllib.request.Request(
            f"{url}/api/nodes/node-a",
            method="PUT",
            data=json.dumps(
                {"url": "http://127.0.0.1:1", "gpus": gpus, "protocol": PROTOCOL_VERSION}
            ).encode(),
            headers={"Authorization": f"token {token}"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        yield url, token
    finally:
        service.stop()
        log = (work / "scheduler.log").read_text()
        assert "Traceback" not in log, log[-3000:]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault matrix (rows of the modules that keep ``FAULT_ROWS``), printed at the end
    of the run, and appended to the file HWSCHED_FAULT_TABLE names, if any."""
    rows = [
        row
        for name, module in sorted(sys.modules.items())
        if name.startswith("test_")
        for row in getattr(module, "FAULT_ROWS", [])
    ]
    if not rows:
        return
    head = ["fault", "pool", "user saw", "left", "GPU back (s)", "work"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(row[k]) for k in head) + " |" for row in rows]
    terminalreporter.write_sep("=", "fault matrix")
    for line in lines:
        terminalreporter.write_line(line)
    if os.environ.get("HWSCHED_FAULT_TABLE"):
        with open(os.environ["HWSCHED_FAULT_TABLE"], "a") as out:
            out.write("\n".join(lines) + "\n")

"""The link between the GPU node and the developer's machine down mid-run, on the test hosts
(network namespaces): 5 s, which the run rides out, and 60 s, which ends it cleanly.

Only that link goes down: each of the two hosts gets a blackhole route to the other, so both
keep reaching the scheduler (the client renews its lease, the share agent learns how the
session ended). The pool's lease is long enough to outlast the short cut (the default lease
of the one-machine pool, 4 s, would not; a real pool's is a minute). Rows go to the fault
matrix (test_faults_e2e.py) printed at the end of the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import wait_for
from pool_hosts import DEVELOPERS, HWRUN, NODE, HostsPool

pytestmark = pytest.mark.e2e

FAULT_ROWS: list[dict[str, Any]] = []
COUNT = (
    "import itertools, time\nfor i in itertools.count(1):\n print(i, flush=True)\n time.sleep(0.1)"
)
DEV = DEVELOPERS[0]


@pytest.fixture(scope="module")
def hosts_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsPool]:
    with HostsPool(tmp_path_factory.mktemp("links"), lease=20.0, node_timeout=30.0) as pool:
        yield pool


def cut(pool: HostsPool, down: bool) -> None:
    """Take the node-developer link down (or up again), in both directions."""
    verb = "add" if down else "del"
    for here, there in ((NODE, DEV), (DEV, NODE)):
        address = pool.host(there).address
        pool.host(here).run(["ip", "route", verb, "blackhole", f"{address}/32"])


class Counting:
    def __init__(self, pool: HostsPool) -> None:
        work = pool.workdir_in(DEV, f"links-{time.monotonic_ns()}")
        self.proc = pool.host(DEV).popen(
            [HWRUN, "-q", "--gpu", "1", "--", "python3", "-u", "-c", COUNT],
            cwd=str(work),
            env=pool.client_env(DEV),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.lines: list[int] = []

    def read(self, n: int) -> None:
        assert self.proc.stdout is not None
        for _ in range(n):
            line = self.proc.stdout.readline()
            assert line, f"the run ended early: {self.finish()}"
            self.lines.append(int(line))
        assert self.lines == list(range(1, len(self.lines) + 1)), self.lines[-20:]

    def finish(self, timeout: float = 300) -> str:
        _, err = self.proc.communicate(timeout=timeout)
        said = err.strip().splitlines()
        return said[-1] if said else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def row(
    fault: str, saw: str, since: float, pool: HostsPool, work: str, back: float | None = None
) -> None:
    if back is None:
        wait_for(lambda: not pool.holders(), 180, "the GPU to go back to the pool")
        back = round(time.monotonic() - since, 1)
    pool.assert_clean(timeout=120)
    FAULT_ROWS.append(
        {
            "fault": fault,
            "pool": "docker, test hosts",
            "user saw": saw.replace("|", "/")[:160] or "(nothing)",
            "left": "nothing",
            "GPU back (s)": back,
            "work": work,
        }
    )


def test_a_5s_cut_is_ridden_out(hosts_pool: HostsPool) -> None:
    hosts_pool.assert_clean()
    run = Counting(hosts_pool)
    try:
        run.read(5)
        cut(hosts_pool, True)
        time.sleep(5)
        cut(hosts_pool, False)
        run.read(60)  # every line, in order: what was written during the cut arrives too
        os.killpg(run.proc.pid, signal.SIGINT)
        since = time.monotonic()
        run.finish()
        row("node-developer link down 5 s", "(nothing: the run went on)", since, hosts_pool, "kept")
    finally:
        cut_quietly(hosts_pool)
        run.kill()


def test_a_60s_cut_ends_the_run_cleanly(hosts_pool: HostsPool) -> None:
    hosts_pool.assert_clean()
    run = Counting(hosts_pool)
    try:
        run.read(5)
        since = time.monotonic()
        cut(hosts_pool, True)
        # the node gives up on the share while the link is down: the GPU comes back then
        # (the link stays down until it has, and for 60 s at least)
        wait_for(lambda: not hosts_pool.holders(), 300, "the GPU to go back during the cut")
        back = round(time.monotonic() - since, 1)
        time.sleep(max(0.0, 60 - (time.monotonic() - since)))
        cut(hosts_pool, False)
        saw = run.finish()
        assert run.proc.returncode != 0
        assert "share was lost" in saw, saw
        work = "lost (its files were away)"
        row("node-developer link down 60 s", saw, since, hosts_pool, work, back)
    finally:
        cut_quietly(hosts_pool)
        run.kill()


def cut_quietly(pool: HostsPool) -> None:
    """The link up again, whatever state a failed test left it in."""
    for here, there in ((NODE, DEV), (DEV, NODE)):
        address = pool.host(there).address
        pool.host(here).run(["ip", "route", "del", "blackhole", f"{address}/32"], check=False)

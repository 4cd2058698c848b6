"""Load: 50 concurrent ``hwrun`` sessions across two nodes, each streaming numbered lines,
while a client polls the scheduler's status.

The nodes run the host runner: each session's command is a plain process on this machine.
The path under load is the one every runner shares (the scheduler's admission and status,
the agent's session start, heartbeats and command relay, the ``hwrun`` client); the Docker
runner would add, per session, an sshd, an sshfs mount and a container, which on a two-core
CI machine turns the test into a measure of dockerd's start-up (``benchmarks/load.py
--runner docker`` runs that path).

Each node has 25 simulated GPUs, so all 50 sessions hold one at once: each command waits at
a barrier until all 50 have started, then prints its lines, so the 50 streams really are
concurrent and status is polled while the pool is full.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from harness import (
    HOST_RUNNER_ARGS,
    LoadRun,
    Pool,
    StatusPoller,
    assert_nothing_left,
    load_leftovers,
    numbering_problem,
    run_load,
)

pytestmark = pytest.mark.e2e

SESSIONS = 50
LINES = 50_000
GPUS_PER_NODE = 25


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Two nodes of 25 simulated GPUs each, with the host runner, and the scheduler's own
    lease and node timeout (30 s, 20 s): what a pool runs with, not the harness's short ones."""
    pool = Pool(
        tmp_path_factory.mktemp("load"),
        simulate=f"{GPUS_PER_NODE}xA100-80GB",
        agent_args=HOST_RUNNER_ARGS,
        lease=30.0,
        node_timeout=20.0,
    )
    try:
        pool.add_agent(
            f"load-{uuid.uuid4().hex[:6]}", f"{GPUS_PER_NODE}xA100-80GB", *HOST_RUNNER_ARGS
        )
        yield pool
    finally:
        pool.stop()


def test_the_line_check_catches_loss_duplication_and_reordering() -> None:
    right = "".join(f"{i}\n" for i in range(1, 6))
    assert numbering_problem(right, 5) is None
    assert "line 3 is 4" in str(numbering_problem("1\n2\n4\n5\n", 5))  # one lost
    assert "duplicated" in str(numbering_problem("1\n2\n2\n3\n4\n5\n", 5))
    assert "line 2 is 3" in str(numbering_problem("1\n3\n2\n4\n5\n", 5))  # swapped
    assert "not 5" in str(numbering_problem("1\n2\n3\n4\n", 5))  # the end lost
    assert "not 5" in str(numbering_problem(right + "6\n", 5))  # one too many
    assert "inside a line" in str(numbering_problem("1\n2\n3\n4\n5", 5))
    assert "not a number" in str(numbering_problem("1\n2\nx\n4\n5\n", 5))
    assert "lost or reordered" in str(numbering_problem("1\n2\n34\n5\n", 5))  # two merged


def test_fifty_sessions_stream_every_line_in_order_while_status_is_polled(
    two_nodes: Pool,
) -> None:
    pool = two_nodes
    nodes = {n["name"] for n in pool.pool()["nodes"]}
    assert len(nodes) == 2
    folder = pool.state / f"barrier-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    with StatusPoller(pool) as status:
        run = run_load(pool, SESSIONS, LINES, folder, together=True)
    problems = run.problems()
    assert not problems, f"{len(problems)} of {SESSIONS} sessions went wrong:\n" + "\n".join(
        problems[:10]
    )
    # status answered throughout, and saw the pool full: every session held a GPU at once
    assert not status.failures, status.failures[:5]
    during = status.seconds_between(run.start, run.end)
    assert len(during) >= 10, f"only {len(during)} status calls during the load"
    assert status.peak_held == SESSIONS
    # each session was placed, on one of the two nodes (all of both nodes' GPUs were used),
    # and released by its client
    records = [s for s in pool.api("GET", "/api/sessions?all=1") if s["request"]["gpus"] == 1]
    mine = [s for s in records if s["state"] == "ended" and s["placed"]]
    assert len(mine) == SESSIONS, records
    assert Counter(s["node"] for s in mine) == {name: GPUS_PER_NODE for name in nodes}
    assert {s["end_reason"] for s in mine} == {"released by the client"}
    # every GPU back, nothing left on either node
    assert_nothing_left(lambda: load_leftovers(pool, str(folder)), 60, "the two nodes")
    pool.assert_clean()
    # and no part failed on the way (a heartbeat that raised is lost to the scheduler)
    for service in pool.services:
        log = service.log.read_text(errors="replace")
        at = log.find("Traceback")
        assert at < 0, f"{service.name} logged an error:\n{log[max(0, at - 300) : at + 2500]}"


def test_a_dropped_line_fails_the_run_check() -> None:
    """The check the load test applies to a run says which session lost a line."""
    whole = "".join(f"{i}\n" for i in range(1, 101))
    cut = whole.replace("\n57\n", "\n", 1)
    run = LoadRun(100, [whole, cut], ["", ""], [0, 0], [0.0, 0.0], [0.0, 0.0], 0.0, 1.0)
    problems = run.problems()
    assert len(problems) == 1 and problems[0].startswith("session 1:"), problems
    assert "line 57 is 58" in problems[0]
    assert LoadRun(100, [whole], [""], [3], [0.0], [0.0], 0.0, 1.0).problems()

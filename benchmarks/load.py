"""Load: many concurrent ``hwrun`` sessions streaming numbered lines, and the status call under
that load beside the same call on the idle pool.

A real pool (scheduler, node agents with simulated GPUs, share agent) runs ``--sessions``
``hwrun --gpu 1`` commands at once across ``--nodes`` nodes of ``--gpus-per-node`` GPUs; each
prints the lines 1..``--lines``, one flushed write per line. Where the pool holds every session
at once, each command first waits until all have started (a barrier), so that every stream
runs concurrently; with fewer GPUs the rest queue. Meanwhile a client polls ``GET /api/pool``
(what ``hwsched status`` shows) every ``--gap`` seconds on one keep-alive connection.

Printed, with the machine and the parameters:

* sessions admitted per second: sessions placed, over the seconds from the first submission
  to the last placement (the scheduler's own timestamps);
* output lines relayed per second: every session's lines, over the seconds from the first
  line any client received to the last;
* the status call's p50 and p99 over the whole load, and over the part while lines stream,
  each beside the same call's on the idle pool (the baseline: the same poller, the same pool,
  before the load, in the same invocation), with their ratio.

Every session's output is checked (lines 1..N, none lost, duplicated or reordered; exit 0),
every status call must succeed, and every GPU must be back after: else the script says what
went wrong and exits 1.

The same load as ``tests/test_load_e2e.py`` (its size is the default here). Run as root::

    python benchmarks/load.py [--sessions 50] [--lines 50000] [--nodes 2] [--gpus-per-node 25]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
from report import fmt, note, percentile, ratio, table

# the test harness (tests/harness.py) is not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import (
    HOST_RUNNER_ARGS,
    Pool,
    StatusPoller,
    assert_nothing_left,
    load_leftovers,
    run_load,
)

RUNNERS = {"host": HOST_RUNNER_ARGS, "docker": ()}


def machine() -> str:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        memory = f", {kib / 1024**2:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cores} cores ({usable} usable), {model}{memory}; Python {platform.python_version()}"


def cpu_seconds(pool: Pool) -> dict[str, float]:
    """CPU seconds each of the pool's services has used so far (the scheduler, each agent)."""
    used = {}
    for service in pool.services:
        if service.name != "share":
            times = psutil.Process(service.proc.pid).cpu_times()
            used[service.name] = times.user + times.system
    return used


def start_pool(args: argparse.Namespace, workdir: Path) -> Pool:
    gpus = f"{args.gpus_per_node}xA100-80GB"
    runner = RUNNERS[args.runner]
    # the scheduler's own lease and node timeout, not the test harness's short ones; every
    # session is one user's, who may queue them all
    pool = Pool(
        workdir,
        simulate=gpus,
        agent_args=runner,
        lease=30.0,
        node_timeout=20.0,
        scheduler_args=(f"--Scheduler.max_queued_per_user={args.sessions}",),
    )
    try:
        for n in range(1, args.nodes):
            pool.add_agent(f"load-{n}-{uuid.uuid4().hex[:6]}", gpus, *runner)
    except BaseException:
        pool.stop()
        raise
    return pool


def idle_baseline(pool: Pool, calls: int, gap: float) -> list[float]:
    """The status call's times on the pool with nothing running."""
    with StatusPoller(pool, gap) as idle:
        while len(idle.calls) < calls and not idle.failures:
            time.sleep(0.05)
    if idle.failures:
        raise SystemExit(f"status failed on the idle pool: {idle.failures[0]}")
    return [took for _, took in idle.calls[:calls]]


def admission(pool: Pool, sessions: int) -> tuple[float, Counter[str]]:
    """Sessions placed per second (first submission to last placement), and per node."""
    records = [s for s in pool.api("GET", "/api/sessions?all=1") if s.get("placed")]
    if len(records) != sessions:
        raise SystemExit(f"the scheduler placed {len(records)} sessions, not {sessions}")
    span = max(s["placed"] for s in records) - min(s["created"] for s in records)
    return sessions / span if span > 0 else float("nan"), Counter(s["node"] for s in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--lines", type=int, default=50_000, help="lines each session prints")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=25)
    parser.add_argument(
        "--runner",
        choices=sorted(RUNNERS),
        default="host",
        help="host: plain processes (as the test); docker: a container on an sshfs share",
    )
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between status calls")
    parser.add_argument("--idle-calls", type=int, default=300, help="status calls on the idle pool")
    args = parser.parse_args()
    if min(args.sessions, args.lines, args.nodes, args.gpus_per_node) < 1:
        parser.error("--sessions, --lines, --nodes and --gpus-per-node must be at least 1")
    together = args.nodes * args.gpus_per_node >= args.sessions
    workdir = Path(tempfile.mkdtemp(prefix="hwsched-load-"))
    pool = start_pool(args, workdir)
    try:
        idle = idle_baseline(pool, args.idle_calls, args.gap)
        folder = pool.state / f"barrier-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        before = cpu_seconds(pool)
        with StatusPoller(pool, args.gap) as status:
            run = run_load(pool, args.sessions, args.lines, folder, together)
        used = {name: cpu - before.get(name, 0.0) for name, cpu in cpu_seconds(pool).items()}
        problems = run.problems() + [f"status: {f}" for f in status.failures]
        if problems:
            raise SystemExit("PROBLEMS:\n" + "\n".join(problems[:20]))
        admitted, per_node = admission(pool, args.sessions)
        assert_nothing_left(lambda: load_leftovers(pool, str(folder)), 120, "the pool")
        pool.assert_clean(timeout=60)
    finally:
        pool.stop()
    streaming = (min(run.first_output), max(run.last_output))
    rows = report_rows(
        idle,
        status.seconds_between(run.start, run.end),
        status.seconds_between(*streaming),
        admitted,
        args.sessions * args.lines / (streaming[1] - streaming[0]),
    )
    print(f"machine: {machine()}")
    print(
        f"parameters: --sessions {args.sessions} --lines {args.lines} --nodes {args.nodes} "
        f"--gpus-per-node {args.gpus_per_node} --runner {args.runner} --gap {args.gap} "
        f"--idle-calls {args.idle_calls}"
    )
    print()
    print(table(["measure", "under load", "idle pool (baseline)", "ratio"], rows))
    print()
    under = len(status.seconds_between(run.start, run.end))
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    waited = (
        "each waited at a barrier until all had started"
        if together
        else "those the GPUs could not hold at once queued"
    )
    for text in [
        f"{args.sessions} sessions on {args.nodes} node(s) of {args.gpus_per_node} simulated "
        f"GPUs ({args.runner} runner); {waited}; placed per node: "
        + ", ".join(f"{n}: {c}" for n, c in sorted(per_node.items())),
        f"load: {run.end - run.start:.1f} s from the first hwrun to the last exit; lines "
        f"streamed for {streaming[1] - streaming[0]:.1f} s; {args.sessions * args.lines:,} "
        f"lines in all",
        f"status calls: {len(idle)} on the idle pool, {under} under load, every {args.gap} s; "
        f"most GPUs held at once, as status showed: {status.peak_held}",
        f"CPU seconds the pool's services used during the load (of "
        f"{cores * (run.end - run.start):.0f} core-seconds): "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())
        + "; the rest went to the hwrun clients, the commands and the rest of the machine",
        "every session right (lines 1..N in order, exit 0), every status call answered, "
        "every GPU back after",
    ]:
        print(note(text))


def report_rows(
    idle: list[float],
    loaded: list[float],
    streaming: list[float],
    admitted: float,
    lines_per_second: float,
) -> list[list[str]]:
    def ms(values: list[float], pct: float) -> float:
        return 1000 * percentile(values, pct)

    rows: list[list[str]] = []
    for label, values in (("under load", loaded), ("while lines stream", streaming)):
        for pct in (50, 99):
            value, base = ms(values, pct), ms(idle, pct)
            rows.append([f"status p{pct} {label} (ms)", fmt(value), fmt(base), ratio(value, base)])
    rows.append(["sessions admitted per second", fmt(admitted), "-", "-"])
    rows.append(["output lines relayed per second", fmt(lines_per_second), "-", "-"])
    return rows


if __name__ == "__main__":
    main()

"""What spooling a command's output on the node costs: ``hwrun`` through a runner (Docker by
default, or ``--runner bwrap``) with its output spooled by a keeper (the default:
agent/spool.py, agent/keeper.py, so that a restarted agent takes the command back) beside the
same pool with the output streamed to the agent alone (``spool_commands=False``), in the same
invocation.

Measured on each pool, alternating between them run by run:

* ``hwrun -q --gpu 1 -- true``: the whole command, from start to exit (placement, share,
  mount, container, the command, teardown): what the keeper's start adds;
* ``hwrun -q --gpu 1 -- python3 -c <print N lines>``: output lines per second, the client's
  wall time from the first line to the last (one flushed write per line, and in 64 KiB
  writes).

Loopback, no modelled delay (the spool is on the node: the link does not enter into it).
Run as root::

    python benchmarks/command_spool.py [--runner docker|bwrap] [--runs 5] [--lines 200000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from report import fmt, note, ratio, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import RUNNER_ARGS, Pool

#: the runner option that turns spooling off, per runner
RUNNER_CLASS = {"docker": "DockerRunner", "bwrap": "BwrapRunner"}

PER_LINE = "import sys\nfor i in range({n}): print(i, flush=True)"
BULK = "import sys\nw = sys.stdout.write\nfor i in range({n}): w('%d\\n' % i)"


def whole(pool: Pool) -> float:
    start = time.perf_counter()
    done = pool.hwrun(["-q", "--gpu", "1", "--", "true"], cwd="/")
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def lines_per_second(pool: Pool, code: str, n: int) -> float:
    proc = pool.popen_hwrun(["-q", "--gpu", "1", "--", "python3", "-c", code.format(n=n)], cwd="/")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    start = time.perf_counter()
    count = 1
    for _ in proc.stdout:
        count += 1
    took = time.perf_counter() - start
    proc.wait()
    assert first == "0\n" and count == n and proc.returncode == 0, (first, count, proc.returncode)
    return (n - 1) / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runner", choices=sorted(RUNNER_CLASS), default="docker")
    args = parser.parse_args()
    runner = RUNNER_ARGS[args.runner]
    streamed = f"--{RUNNER_CLASS[args.runner]}.spool_commands=False"
    work = Path(tempfile.mkdtemp(prefix="hwsched-bench-"))
    (work / "direct").mkdir()
    (work / "spooled").mkdir()
    pools = {
        "streamed to the agent": Pool(work / "direct", agent_args=(*runner, streamed)),
        "spooled (default)": Pool(work / "spooled", agent_args=runner),
    }
    results: dict[str, dict[str, list[float]]] = {
        name: {"whole": [], "line": [], "bulk": []} for name in pools
    }
    try:
        for _ in range(args.runs):
            for name, pool in pools.items():
                results[name]["whole"].append(whole(pool))
                results[name]["line"].append(lines_per_second(pool, PER_LINE, args.lines))
                results[name]["bulk"].append(lines_per_second(pool, BULK, args.lines))
    finally:
        for pool in pools.values():
            pool.stop()
    base = {k: statistics.median(v) for k, v in results["streamed to the agent"].items()}
    rows = []
    for name, got in results.items():
        med = {k: statistics.median(v) for k, v in got.items()}
        rows.append(
            [
                name,
                f"{fmt(med['whole'])} s",
                ratio(med["whole"], base["whole"]),
                f"{med['line']:,.0f}",
                ratio(med["line"], base["line"]),
                f"{med['bulk']:,.0f}",
                ratio(med["bulk"], base["bulk"]),
            ]
        )
    print(
        note(
            f"{platform.node()}, {platform.machine()}; {args.runner} runner, loopback, no modelled "
            f"delay; medians of {args.runs} runs, alternating; {args.lines:,} lines a run"
        )
    )
    print(
        table(
            [
                "command output",
                "hwrun -- true",
                "ratio",
                "lines/s, a write a line",
                "ratio",
                "lines/s, 64 KiB writes",
                "ratio",
            ],
            rows,
            right={1, 2, 3, 4, 5, 6},
        )
    )


if __name__ == "__main__":
    main()

"""Scheduler speed: allocate+release over HTTP, and one placement decision at scale.

Every figure is printed beside a baseline measured in the same run (interleaved with it, so
drift of a shared machine hits both alike), and as a ratio against it.

1. **Allocate+release cycles per second over HTTP, durable SQLite state.** Measured with the
   scheduler's default, ``synchronous=FULL`` with group commit (the write-ahead log synced
   at every commit, one commit per turn of the event loop for all the requests of that turn,
   each answered after it: a change the scheduler answered for survives a power cut); beside
   it ``FULL`` with a commit per write (the same durability, more syncs) and ``NORMAL`` with a
   commit per write (the setting before: synced at checkpoints only, so the last changes may
   be lost on a power cut). The file system the state is on is printed, since what a sync
   costs is the disk's. The real scheduler
   (``hwsched scheduler``) runs as a separate process on 127.0.0.1 with its state in a SQLite
   file in a temporary directory, pinned to one CPU core with ``sched_setaffinity`` where the
   platform has it (the client threads are pinned to the other cores, when there are any).
   One node with 8 simulated A100 GPUs is registered. A cycle is ``POST /api/sessions`` for one
   GPU (answered 201, ``placed``) then ``DELETE /api/sessions/{id}``: two requests, three
   SQLite writes, two scheduling passes. Clients are threads of this process, each with its
   own keep-alive ``http.client.HTTPConnection``; the run is repeated with 1 and with 4
   clients. Baseline: the same round trips to ``GET /api/nodes`` of the same server (token
   check, tornado, HTTP, a small JSON answer), the cost of the service without the scheduler's
   work. *ratio* is the cycle's time per request over the baseline's time per request (both
   from throughput: elapsed time / requests). *sched CPU* is the scheduler process's CPU time
   over the wall time: about 100% means the one core is the limit, not the client. The aim is
   500 cycles/s.

2. **One placement decision with 1,000 nodes of 8 GPUs and 10,000 queued requests**, in
   process (``Scheduler`` on an in-memory ``Store``, a simulated clock). Nodes have A100-80GB,
   H100-80GB or L40S (48 GB) GPUs; almost every GPU is held by placed sessions of 1, 2, 4 or 8
   GPUs, and the queue holds requests of 1, 2, 4 or 8 GPUs, some with a GPU type or
   alternatives (``A100|H100``), a memory floor, a time limit or a priority, from 200 users.
   The state is written to the store directly and loaded by a new ``Scheduler`` (which runs one
   full pass): 10,000 ``submit`` calls, each re-planning, would take far longer.

   * *placement decision*: ``scheduler.placement.choose(request, scheduler.node_views())`` for
     requests drawn from the queue, after ending a few sessions (without re-planning) so that
     some GPUs are free. The aim is a p99 of at most 5 ms.
   * *full pass*: ``scheduler.schedule()`` after ``end()`` of one random session freed its GPUs
     (``end()`` runs with the re-plan switched off, then the re-plan is timed alone): what the
     scheduler does on each event (submit, end, tick). The queue is refilled to its size
     after each pass. No aim; reported as it is.

   Baseline: the same measurements on 10 nodes with 100 queued requests, interleaved, with
   the same sample counts. Percentiles are nearest-rank; with fewer than 100 samples the p99
   is the maximum.

Run: ``python benchmarks/scheduler.py`` (about 1-2 minutes on 2 cores; ``--help`` for options;
``--profile`` adds a cProfile of one full pass at scale). Only 127.0.0.1 is contacted.

The two measurements live beside this file, in ``scheduler_http.py`` and
``scheduler_placement.py``; ``report.py`` formats what they print.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from report import note
from scheduler_http import http_benchmark
from scheduler_placement import placement_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="HTTP: seconds per case and client count"
    )
    parser.add_argument("--rounds", type=int, default=3, help="HTTP: interleaved rounds")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1, 4],
        help="HTTP: concurrent client counts, comma separated (default 1,4)",
    )
    parser.add_argument("--warmup", type=int, default=100, help="HTTP: warm-up cycles")
    parser.add_argument(
        "--modes",
        type=lambda text: text.split(","),
        default=["full+group", "full+each", "normal+each"],
        help="HTTP: ways of writing the state to measure, SYNCHRONOUS+COMMITS: full+group "
        "(the default: synced, one commit per event-loop turn), full+each (synced, a commit "
        "per write), normal+each (the setting before issue 16: not synced at each commit)",
    )
    parser.add_argument("--nodes", type=int, default=1000, help="placement: nodes of 8 GPUs")
    parser.add_argument("--queued", type=int, default=10000, help="placement: queued requests")
    parser.add_argument("--decisions", type=int, default=500, help="placement: decisions timed")
    parser.add_argument("--passes", type=int, default=5, help="placement: full passes timed")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic state")
    parser.add_argument("--profile", action="store_true", help="cProfile one full pass at scale")
    parser.add_argument("--skip-http", action="store_true", help="only the placement part")
    parser.add_argument("--skip-placement", action="store_true", help="only the HTTP part")
    args = parser.parse_args()

    # SIGTERM ends the run through the finally blocks: the scheduler is stopped, files removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"scheduler benchmark: Python {sys.version.split()[0]}, {cpus} CPU(s)\n")
    if not args.skip_http:
        workdir = Path(tempfile.mkdtemp(prefix="hwsched-scheduler-bench-"))
        try:
            report, notes = http_benchmark(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(
            "1. allocate+release over HTTP, SQLite state, one scheduler process; "
            f"{args.seconds:g} s per row in {args.rounds} interleaved rounds"
        )
        print(report)
        notes.append(
            "ms/request = elapsed / requests (from throughput, not latency); ratio = the "
            "cycle's ms/request / the baseline's; ratio rounds: the same per round; sched CPU = "
            "scheduler process CPU time / wall time"
        )
        for text in notes:
            print(note(text))
        print()
    if not args.skip_placement:
        report, notes = placement_benchmark(args)
        print(
            "2. placement in process; baseline 10 nodes / 100 queued; "
            "decisions and passes interleaved with the baseline's"
        )
        print(report)
        for text in notes:
            print(note(text))
        print()
    print(f"total time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

"""Placement through Slurm beside the built-in scheduler, measured in one run.

Two real one-node pools (scheduler, node agent, share agent, dockerd, sshd, sshfs; simulated
GPUs where NVML finds none), one placed by the built-in queue and one by a private Slurm
(slurmctld, slurmd, slurmdbd over MariaDB, started for it), measured interleaved:

* allocate: a session submitted over the scheduler's API until the scheduler says it is
  placed (under Slurm: sbatch, Slurm's scheduling pass, squeue and scontrol seeing it);
* release: the session ended over the API until its GPU is free in the pool view and (under
  Slurm) squeue no longer lists its job;
* first output: ``hwrun --gpu 1 -- echo 1`` from its start to the ``1`` on its stdout: the
  whole path (queue, share, mount, container, command).

Loopback only, no added delay. Run as root: ``python benchmarks/slurm_placement.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the test harness (tests/harness.py) is not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Pool, wait_for

POLL = 0.01


def allocate_release(pool: Pool) -> tuple[float, float]:
    body = {"request": {"gpus": 1}, "user": "bench", "host": "bench", "group": "", "notebook": ""}
    start = time.perf_counter()
    session = pool.api("POST", "/api/sessions", body)
    while session["state"] == "queued":
        time.sleep(POLL)
        session = pool.api("GET", f"/api/sessions/{session['id']}")
    placed = time.perf_counter()
    assert session["state"] == "placed", session
    pool.api("DELETE", f"/api/sessions/{session['id']}")
    ended = time.perf_counter()
    while pool.held_gpus() or pool.slurm_jobs():
        time.sleep(POLL)
    return placed - start, time.perf_counter() - ended


def first_output(pool: Pool, cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "hwrun"), "--gpu", "1", "--", "echo", "1"],
        env=pool.client_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait(timeout=120)
    assert line.strip() == "1" and proc.returncode == 0, (line, proc.returncode)
    wait_for(lambda: not pool.held_gpus() and not pool.slurm_jobs(), 60, "the GPU back")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hwsched-bench-", dir="/var/tmp"))
    cwd = tempfile.mkdtemp(prefix="cwd-", dir="/var/tmp")
    for name in ("builtin", "slurm"):
        (work / name).mkdir()
    pools = {
        "built-in": Pool(work / "builtin"),
        "Slurm": Pool(work / "slurm", placement="slurm"),
    }
    results: dict[str, dict[str, list[float]]] = {
        name: {"allocate": [], "release": [], "first output": []} for name in pools
    }
    try:
        for pool in pools.values():  # one unmeasured run each: imports, caches
            allocate_release(pool)
            first_output(pool, cwd)
        for _ in range(args.runs):
            for name, pool in pools.items():
                allocated, released = allocate_release(pool)
                results[name]["allocate"].append(allocated)
                results[name]["release"].append(released)
                results[name]["first output"].append(first_output(pool, cwd))
    finally:
        for pool in pools.values():
            pool.stop()
    print(f"placement latency, median of {args.runs} runs (loopback, no added delay)")
    print(f"{'':14}{'built-in (s)':>14}{'Slurm (s)':>12}{'Slurm / built-in':>18}")
    for what in ("allocate", "release", "first output"):
        base = statistics.median(results["built-in"][what])
        slurm = statistics.median(results["Slurm"][what])
        print(f"{what:14}{base:14.3f}{slurm:12.3f}{slurm / base:17.1f}x")
    os.rmdir(cwd)


if __name__ == "__main__":
    main()

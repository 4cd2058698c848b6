"""Placement by a real Slurm (slurmctld, slurmd, slurmdbd over MariaDB, started privately for
the pool by ``harness.start_local_slurm``): what squeue, sacct and scontrol show of a
session, Slurm's reasons in the scheduler's words, and Slurm's decisions followed.

The client-facing tests (hwrun, %%hwrun, Remote GPU kernel, 'Run on GPU') also run on a
Slurm-placed pool, through conftest's ``each_runner_pool``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import DEV_USER, Pool, wait_for


def home() -> str:
    import pwd

    return pwd.getpwnam(DEV_USER).pw_dir


def slurm(pool: Pool, *argv: str) -> str:
    assert pool.slurm is not None
    return pool.slurm.commands.run(list(argv))


def live(pool: Pool) -> set[str]:
    return {s["id"] for s in pool.api("GET", "/api/sessions")}


def session_of(
    pool: Pool,
    user: str,
    state: str,
    besides: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Any] | None:
    """The newest live session of ``user`` in ``state``, other than ``besides`` (those that
    were live before the test started the one it looks for)."""
    found = [
        s
        for s in pool.api("GET", "/api/sessions")
        if s["user"] == user and s["state"] == state and s["id"] not in besides
    ]
    return dict(found[-1]) if found else None


def running(pool: Pool, seconds: int, gpus: int = 1, timeout: int = 0) -> subprocess.Popen[str]:
    args = ["--gpu", str(gpus), *(["--timeout", str(timeout)] if timeout else [])]
    return pool.popen_hwrun(
        [*args, "--", "sh", "-c", f"echo GPUS=$CUDA_VISIBLE_DEVICES; sleep {seconds}"],
        user=DEV_USER,
        cwd=home(),
    )


def stop(proc: subprocess.Popen[str]) -> None:
    """A test's hwrun that may still run: killed, its pipes closed."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=60)


def test_squeue_shows_the_job_while_it_runs_and_sacct_its_gpu_time(slurm_pool: Pool) -> None:
    before = live(slurm_pool)
    proc = running(slurm_pool, 4)
    session = wait_for(lambda: session_of(slurm_pool, DEV_USER, "running", before), 60, "a session")
    jobs = slurm(slurm_pool, "squeue", "--noheader", "--format=%i|%j|%u|%T")
    job = next(line.split("|") for line in jobs.splitlines() if session["id"] in line)
    # a job named for the session, submitted as the verified developer, holding its GPU
    assert job[1:] == [f"hwsched-{session['id']}", DEV_USER, "RUNNING"], jobs
    detail = slurm(slurm_pool, "scontrol", "-d", "show", "job", job[0])
    indices = re.search(r"GRES=gpu:a100:1\(IDX:(\d+)\)", detail)
    assert indices, detail
    assert session["gpu_ids"] == [int(indices.group(1))]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # the container got exactly the GPU Slurm allocated
    assert f"GPUS={indices.group(1)}" in out
    slurm_pool.assert_clean()  # squeue no longer shows it (checked with the rest)

    def accounted() -> str | None:
        line = slurm(
            slurm_pool,
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--jobs={job[0]}",
            "--format=State,ElapsedRaw,AllocTRES",
        ).strip()
        return line if line and not line.startswith("RUNNING") else None

    state, elapsed, tres = wait_for(accounted, 60, "Slurm's accounting of the job").split("|")
    assert "gres/gpu=1" in tres.split(","), tres
    assert int(elapsed) >= 4 and state.startswith("CANCELLED")  # cancelled by the scheduler
    usage = slurm_pool.api("GET", "/api/usage")["users"]
    mine = next(row for row in usage if row["user"] == DEV_USER)
    assert mine["allocated_from"] == "slurm accounting (sacct)"
    assert mine["gpu_seconds_allocated"] >= 4


def test_a_queued_request_shows_slurms_reason_and_expected_start(slurm_pool: Pool) -> None:
    before = live(slurm_pool)
    holder = running(slurm_pool, 120, gpus=2, timeout=600)
    held = wait_for(lambda: session_of(slurm_pool, DEV_USER, "running", before), 60, "the holder")
    waiter = running(slurm_pool, 1)
    try:

        def queued_with_estimate() -> dict[str, Any] | None:
            s = session_of(slurm_pool, DEV_USER, "queued", before)
            waiting = "Resources" in str(s and s["waiting_for"])
            return s if s and waiting and s.get("estimated_start") else None

        queued = wait_for(queued_with_estimate, 60, "Slurm's expected start")
        assert queued["waiting_for"].endswith("(Slurm: Resources)"), queued
        assert "the 2 matching GPU(s) in the pool are busy (held by hwdev)" in queued["waiting_for"]
        assert queued["position"] == 1
        # Slurm expects it when the holder's time limit is up (10 minutes)
        assert 500 < queued["estimated_start"] - queued["created"] < 700, queued
        squeue = slurm(slurm_pool, "squeue", "--noheader", "--states=PENDING", "--format=%j|%r")
        assert f"hwsched-{queued['id']}|Resources" in squeue
        status = subprocess.run(
            [sys.executable, "-m", "jupyter_hwsched.cli.hwsched", "status"],
            env=slurm_pool.client_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "(Slurm: Resources)" in status.stdout and "placed by Slurm" in status.stdout
    except BaseException:
        stop(waiter)
        raise
    finally:
        # the operator ends it (Ctrl-C would not reach hwrun through runuser)
        slurm_pool.api("DELETE", f"/api/sessions/{held['id']}?reason=ended+by+the+test")
        _, held_err = holder.communicate(timeout=60)
    assert "ended by the test" in held_err, held_err
    _, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    # what hwrun showed while it waited: Slurm's own reason, as soon as Slurm gave one
    assert "(Slurm: Resources)" in err, err
    slurm_pool.assert_clean()


@pytest.mark.parametrize("how", ["node down", "scancel"])
def test_what_slurm_ends_ends_the_session_with_slurms_reason(slurm_pool: Pool, how: str) -> None:
    before = live(slurm_pool)
    proc = running(slurm_pool, 120)
    session = wait_for(lambda: session_of(slurm_pool, DEV_USER, "running", before), 60, "a session")
    node = slurm_pool.node
    try:
        if how == "node down":
            slurm(
                slurm_pool,
                "scontrol",
                "update",
                f"nodename={node}",
                "state=down",
                "reason=hwsched test maintenance",
            )
            expected = f"node {node} is down in Slurm: hwsched test maintenance"
        else:
            job = slurm(
                slurm_pool, "squeue", "--noheader", f"--name=hwsched-{session['id']}", "--format=%i"
            ).strip()
            slurm(slurm_pool, "scancel", job)
            expected = f"job {job} was cancelled in Slurm"
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert expected in err, err
        ended = slurm_pool.api("GET", f"/api/sessions/{session['id']}")
        assert ended["end_reason"] == expected
    except BaseException:
        stop(proc)
        raise
    finally:
        if how == "node down":
            slurm(slurm_pool, "scontrol", "update", f"nodename={node}", "state=resume")
    slurm_pool.assert_clean()


def test_what_slurm_cannot_do_is_refused_with_what_to_ask(slurm_pool: Pool) -> None:
    done = slurm_pool.hwrun(
        ["--gpu", "1", "--gpu-type", "T4", "--", "true"], user=DEV_USER, cwd=home()
    )
    assert done.returncode != 0
    assert "no GPU" in done.stderr or "T4" in done.stderr, done.stderr
    done = slurm_pool.hwrun(
        ["--gpu", "1", "--gpu-mem", "79G", "--", "true"], user=DEV_USER, cwd=home()
    )
    assert done.returncode == 0, done.stderr  # gpumem80g says there is enough
    slurm_pool.assert_clean()


def test_the_schedulers_own_queue_settings_are_refused_under_slurm(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_hwsched.cli.hwsched",
            "scheduler",
            "--port=0",
            f"--db={tmp_path / 's.sqlite'}",
            "--Scheduler.backend=slurm",
            "--Scheduler.user_gpu_quota=2",
        ],
        env=dict(os.environ, HWSCHED_TOKEN="t"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "c.Scheduler.user_gpu_quota does not apply when Slurm places sessions" in done.stderr
    assert "MaxTRESPerUser=gres/gpu=N" in done.stderr

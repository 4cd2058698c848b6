"""Slurm's commands, run with the deployment's configuration, and what they print, read.

Every command runs with ``SLURM_CONF`` set: without it Slurm's clients look their controller
up in DNS, which a pool must never depend on. Output is asked for in ``|``-separated fields
(``-o``/``-P``), so parsing never depends on column widths.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from jupyter_hwsched.protocol.errors import UnavailableError

#: job states in which the job still holds (or may yet hold) its allocation
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"})
_JOB_FIELDS = "%i|%T|%r|%S|%N|%Q"
_NODE_FIELDS = "%N|%T|%E|%f|%G"
_IDX_RE = re.compile(r"\bNodes=(\S+)\s.*?\bGRES=(\S*?)\(IDX:([0-9,\-]*)\)")
_GRES_RE = re.compile(r"^gpu(?::([^:(]+))?:(\d+)")


class SlurmError(UnavailableError):
    """A Slurm command failed; the message is Slurm's own, with the command."""


@dataclass
class Job:
    """One job as squeue shows it."""

    id: str
    state: str  # PENDING, RUNNING, ... (squeue's long names)
    reason: str  # Slurm's reason code: Resources, Priority, QOSMaxGRESPerUser, ...
    start: float | None  # expected start (pending) or start time (running), epoch seconds
    nodes: str  # the node list, empty while pending
    priority: int

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass
class SlurmNode:
    """One node as sinfo shows it."""

    name: str
    state: str  # idle, mixed, allocated, down*, drained, ...
    reason: str
    features: tuple[str, ...]
    gpu_types: dict[str, int] = field(default_factory=dict)  # GRES type ("" untyped) -> count

    @property
    def down(self) -> bool:
        """Whether Slurm will run nothing there: down, failed, or not responding (``*``)."""
        return self.state.rstrip("~#!%$@^-+").startswith(("down", "fail")) or self.state.endswith(
            "*"
        )


def parse_time(text: str) -> float | None:
    """squeue's ``2026-11-30T16:22:25`` (the controller's local time) as epoch seconds."""
    if not text or text in ("N/A", "Unknown", "None"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_jobs(text: str) -> dict[str, Job]:
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        job_id, state, reason, start, nodes, priority = parts
        jobs[job_id] = Job(
            job_id,
            state,
            reason,
            parse_time(start),
            "" if nodes in ("", "(null)") else nodes,
            int(priority) if priority.isdigit() else 0,
        )
    return jobs


def parse_gres(text: str) -> dict[str, int]:
    """sinfo's ``gpu:a100:2,gpu:t4:1(S:0)`` -> ``{"a100": 2, "t4": 1}``."""
    types: dict[str, int] = {}
    for item in re.split(r",(?=[a-z])", text):
        match = _GRES_RE.match(item.strip())
        if match:
            kind = match.group(1) or ""
            types[kind] = types.get(kind, 0) + int(match.group(2))
    return types


def parse_nodes(text: str) -> dict[str, SlurmNode]:
    nodes = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        name, state, reason, features, gres = parts
        nodes[name] = SlurmNode(
            name,
            state,
            "" if reason == "none" else reason,
            tuple(f for f in features.split(",") if f and f != "(null)"),
            parse_gres(gres),
        )
    return nodes


def parse_indices(text: str) -> list[int]:
    """``0-1,3`` -> ``[0, 1, 3]``."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def parse_allocation(text: str) -> tuple[str, list[int]] | None:
    """The node and GPU (GRES) indices of a running job, from ``scontrol -d show job``."""
    for line in text.splitlines():
        match = _IDX_RE.search(line)
        if match and match.group(2).startswith("gpu"):
            return match.group(1), parse_indices(match.group(3))
    return None


def parse_usage(text: str) -> dict[str, tuple[str, float]]:
    """sacct's ``JobID|State|ElapsedRaw|AllocTRES`` lines -> job: (state, GPU-seconds)."""
    usage = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        job_id, state, elapsed, tres = parts
        gpus = 0
        for item in tres.split(","):
            name, _, value = item.partition("=")
            if name == "gres/gpu" and value.isdigit():
                gpus = int(value)
        usage[job_id] = (state.split()[0] if state else "", gpus * float(elapsed))
    return usage


class SlurmCommands:
    """Slurm's client commands against one cluster (its ``slurm.conf``)."""

    def __init__(self, conf: str = "", timeout: float = 30.0) -> None:
        self.conf = conf or os.environ.get("SLURM_CONF", "") or "/etc/slurm/slurm.conf"
        self.timeout = timeout

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=self.conf)

    def run(self, argv: list[str], ok_codes: Iterable[int] = (0,)) -> str:
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SlurmError(
                f"{argv[0]} is not installed here: the Slurm backend runs Slurm's client "
                "commands (Debian: apt-get install slurm-client)"
            ) from None
        except subprocess.TimeoutExpired:
            raise SlurmError(
                f"{argv[0]} did not answer in {self.timeout:g} s: is slurmctld up? "
                f"(SLURM_CONF={self.conf})"
            ) from None
        if done.returncode not in tuple(ok_codes):
            message = " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"
            message = re.sub(r"^\w+: error: ", "", message)
            raise SlurmError(f"{os.path.basename(argv[0])}: {message}")
        return done.stdout

    def submit(self, options: list[str]) -> str:
        """A batch job that holds its allocation until it is cancelled or reaches its time
        limit; returns its id."""
        out = self.run(
            [
                "sbatch",
                "--parsable",
                "--output=/dev/null",
                "--error=/dev/null",
                "--nodes=1",
                # a session cannot move: a job whose node fails ends, it is not queued again
                "--no-requeue",
                *options,
                "--wrap=exec sleep infinity",
            ]
        )
        return out.strip().split(";")[0]

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            # a job that already ended is not an error here: cancelling is idempotent
            self.run(["scancel", *job_ids], ok_codes=(0, 1))

    def jobs(self, job_ids: list[str]) -> dict[str, Job]:
        """These jobs as squeue shows them; a job squeue no longer knows is absent."""
        if not job_ids:
            return {}
        out = self.run(
            [
                "squeue",
                "--noheader",
                "--states=all",
                f"--jobs={','.join(job_ids)}",
                f"--format={_JOB_FIELDS}",
            ],
            ok_codes=(0, 1),  # 1: none of them is known any more
        )
        return parse_jobs(out)

    def pending_order(self, partition: str) -> list[str]:
        """The pending jobs of a partition, first to start first (Slurm's priority order)."""
        argv = ["squeue", "--noheader", "--states=PENDING", "--sort=-p,i", "--format=%i"]
        if partition:
            argv.append(f"--partition={partition}")
        return self.run(argv).split()

    def allocation(self, job_id: str) -> tuple[str, list[int]] | None:
        return parse_allocation(self.run(["scontrol", "-d", "show", "job", job_id]))

    def nodes(self) -> dict[str, SlurmNode]:
        return parse_nodes(self.run(["sinfo", "--Node", "--noheader", f"--format={_NODE_FIELDS}"]))

    def usage(self, job_ids: list[str]) -> dict[str, tuple[str, float]]:
        """Each job's state and GPU-seconds from Slurm's accounting (slurmdbd)."""
        if not job_ids:
            return {}
        return parse_usage(
            self.run(
                [
                    "sacct",
                    "--noheader",
                    "--parsable2",
                    "--allocations",
                    f"--jobs={','.join(job_ids)}",
                    "--format=JobID,State,ElapsedRaw,AllocTRES",
                ]
            )
        )

    def ping(self) -> bool:
        try:
            return "UP" in self.run(["scontrol", "ping"])
        except SlurmError:
            return False

"""Accounting: GPU-seconds allocated and busy per user, and the Prometheus metrics.

Allocated time runs from placement to end (under Slurm: Slurm's own figure, from sacct, where
Slurm keeps accounting); busy time is the allocated GPUs' utilization as
the node agents sample it with NVML (simulated GPUs report the load of the work running on
them), integrated over heartbeats. Both are kept per session in SQLite, so a restarted
scheduler reports the same figures.
"""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.model import WAIT_BUCKETS


def usage_report(scheduler: Scheduler, since: float) -> list[dict[str, Any]]:
    """Per user, for sessions that ended after ``since`` or are live: what they were given
    and what they used."""
    now = scheduler.clock()
    rows: dict[str, dict[str, Any]] = {}
    sessions = [*scheduler.store.ended_since(since), *scheduler.live.values()]
    # under Slurm, allocated time is Slurm's own accounting (sacct), where it keeps one
    from_slurm = (
        scheduler.slurm.usage([s.job for s in sessions if s.job and s.placed is not None])
        if scheduler.slurm is not None
        else {}
    )
    for s in sessions:
        row = rows.setdefault(
            s.user,
            {
                "user": s.user,
                "sessions": 0,
                "gpu_seconds_allocated": 0.0,
                "gpu_seconds_busy": 0.0,
                "wait_seconds": 0.0,
                "allocated_from": "scheduler",
            },
        )
        row["sessions"] += 1
        if s.job in from_slurm:
            row["gpu_seconds_allocated"] += from_slurm[s.job]
            row["allocated_from"] = "slurm accounting (sacct)"
        else:
            row["gpu_seconds_allocated"] += s.allocated_seconds(now)
        row["gpu_seconds_busy"] += s.busy
        if s.placed is not None:
            row["wait_seconds"] += s.placed - s.created
        elif s.live:
            row["wait_seconds"] += now - s.created
    for row in rows.values():
        allocated = row["gpu_seconds_allocated"]
        row["busy_fraction"] = row["gpu_seconds_busy"] / allocated if allocated else None
    return sorted(rows.values(), key=lambda r: -float(r["gpu_seconds_allocated"]))


def metrics_text(scheduler: Scheduler) -> str:
    """The pool in Prometheus' text format."""
    now = scheduler.clock()
    up = [n for n in scheduler.nodes.values() if n.up(now, scheduler.node_timeout)]
    held = [s for s in scheduler.live.values() if s.holding]
    busy = sum(
        (scheduler.nodes[s.node].utilization(i) or 0.0) / 100.0
        for s in held
        if s.node in scheduler.nodes
        for i in s.gpu_ids
    )
    queued = sum(1 for s in scheduler.live.values() if s.state == "queued")
    lines: list[str] = []

    def gauge(name: str, help_text: str, value: float) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"])

    gauge("hwsched_queue_length", "Requests waiting for GPUs.", queued)
    gauge("hwsched_nodes_up", "Nodes sending heartbeats.", len(up))
    gauge("hwsched_gpus_total", "GPUs on nodes that are up.", sum(len(n.gpus) for n in up))
    gauge("hwsched_gpus_allocated", "GPUs held by sessions.", sum(len(s.gpu_ids) for s in held))
    gauge("hwsched_gpus_busy", "Held GPUs weighted by their last utilization sample.", busy)
    waits = scheduler.wait_histogram
    lines.append("# HELP hwsched_wait_seconds Seconds from request to placement.")
    lines.append("# TYPE hwsched_wait_seconds histogram")
    for bound, count in zip(WAIT_BUCKETS, waits.counts, strict=True):
        lines.append(f'hwsched_wait_seconds_bucket{{le="{bound:g}"}} {count}')
    lines.append(f'hwsched_wait_seconds_bucket{{le="+Inf"}} {waits.count}')
    lines.append(f"hwsched_wait_seconds_sum {waits.total:g}")
    lines.append(f"hwsched_wait_seconds_count {waits.count}")
    return "\n".join(lines) + "\n"

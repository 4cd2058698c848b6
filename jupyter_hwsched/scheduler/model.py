"""The scheduler's objects in memory: nodes, sessions, and the wait histogram."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jupyter_hwsched.protocol.records import HOLDING_STATES, LIVE_STATES, Identity
from jupyter_hwsched.protocol.request import HardwareRequest

__all__ = ["HOLDING_STATES", "LIVE_STATES", "Node", "Session", "WaitHistogram"]

WAIT_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class Node:
    name: str
    url: str
    gpus: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)  # {"share": bool, "labels": [...]}
    registered: float = 0.0
    last_seen: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)  # last heartbeat's utilization
    #: developers whose files the node's cache keeps (``warm_key``s, last heartbeat's)
    warm: set[str] = field(default_factory=set)
    #: the warm leases the node holds (last heartbeat's; protocol.records.LeaseRecord JSON)
    leases: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_index = {g["index"]: g for g in self.gpus}

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.info.get("labels", [])]

    def up(self, now: float, timeout: float) -> bool:
        return now - self.last_seen <= timeout

    def _sample(self, key: str, index: int) -> Any:
        """One GPU's value of the last heartbeat's ``stats[key]``, or None."""
        return self.stats.get(key, {}).get(str(index))

    def utilization(self, index: int) -> float | None:
        value = self._sample("utilization", index)
        return None if value is None else float(value)

    def memory_used(self, index: int) -> int | None:
        value = self._sample("memory_used", index)
        return None if value is None else int(value)


@dataclass
class Session:
    id: str
    seq: int
    user: str
    group: str
    host: str
    request: HardwareRequest
    state: str
    created: float
    lease_expires: float
    node: str | None = None
    gpu_ids: list[int] = field(default_factory=list)
    placed: float | None = None
    started: float | None = None
    ended: float | None = None
    end_reason: str | None = None
    busy: float = 0.0  # GPU-seconds the allocated GPUs were busy, from NVML samples
    secret_hash: str = ""  # sha256 of the secret its client shows the node agent
    notebook: str = ""  # the notebook the work comes from, where it comes from one
    owner: Identity | None = None  # the verified account it runs as (pools with identities)
    job: str = ""  # its Slurm job, where Slurm places sessions
    cell_seconds: float = 0.0  # a shared kernel's cells' run time, as its node reports it

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def holding(self) -> bool:
        return self.state in HOLDING_STATES

    def allocated_seconds(self, now: float) -> float:
        """GPU-seconds charged: held time, or for a kernel sharing a GPU, its cells' time."""
        if self.placed is None:
            return 0.0
        if self.request.shared:
            return self.cell_seconds
        return len(self.gpu_ids) * max(0.0, (self.ended or now) - self.placed)

    def expected_end(self, default_runtime: float) -> float:
        """When the session is expected to end: its time limit, else a default estimate."""
        start = self.started or self.placed or self.created
        return start + (self.request.timeout or default_runtime)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "grp": self.group,
            "host": self.host,
            "request": json.dumps(self.request.to_json()),
            "state": self.state,
            "node": self.node,
            "gpu_ids": json.dumps(self.gpu_ids),
            "created": self.created,
            "placed": self.placed,
            "started": self.started,
            "ended": self.ended,
            "lease_expires": self.lease_expires,
            "end_reason": self.end_reason,
            "busy": self.busy,
            "secret_hash": self.secret_hash,
            "notebook": self.notebook,
            "owner": json.dumps(self.owner.to_json()) if self.owner else "",
            "slurm_job": self.job,
            "cell_seconds": self.cell_seconds,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Session:
        return cls(
            id=row["id"],
            seq=row["seq"],
            user=row["user"],
            group=row.get("grp") or "",
            host=row["host"],
            request=HardwareRequest(**json.loads(row["request"])),
            state=row["state"],
            created=row["created"],
            lease_expires=row["lease_expires"],
            node=row["node"],
            gpu_ids=json.loads(row["gpu_ids"]),
            placed=row["placed"],
            started=row["started"],
            ended=row["ended"],
            end_reason=row["end_reason"],
            busy=row.get("busy") or 0.0,
            secret_hash=row.get("secret_hash") or "",
            notebook=row.get("notebook") or "",
            owner=Identity.from_json(json.loads(row["owner"])) if row.get("owner") else None,
            job=row.get("slurm_job") or "",
            cell_seconds=row.get("cell_seconds") or 0.0,
        )


class WaitHistogram:
    """Seconds from request to placement, as a Prometheus histogram."""

    def __init__(self) -> None:
        self.counts = [0] * len(WAIT_BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for i, bound in enumerate(WAIT_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1

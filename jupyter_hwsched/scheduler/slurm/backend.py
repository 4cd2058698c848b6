"""The Slurm backend: a session is a Slurm job that holds its allocation for the session's
life.

The scheduler keeps what is its own under Slurm: sessions and their secrets, leases renewed by
clients, node agents and their heartbeats, the pool view. Slurm decides which request starts
when and where: a session is placed when its job runs, on the job's node, with exactly the GRES
indices Slurm allocated, and the GPUs are back when Slurm says so (the job is cancelled once
the node has torn the session down). Queue positions, reasons and expected starts are
Slurm's, put in the scheduler's words. This module turns requests into sbatch options and
Slurm's view into records; ``core.Scheduler`` applies them.
"""

from __future__ import annotations

import math
import os
import pwd
import re
from dataclasses import dataclass, field
from typing import Any

from traitlets import Dict, Enum, Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.records import Identity
from jupyter_hwsched.protocol.request import HardwareRequest, format_memory
from jupyter_hwsched.scheduler.placement import model_matches
from jupyter_hwsched.scheduler.slurm.commands import (
    Job,
    SlurmCommands,
    SlurmError,
    SlurmNode,
)

#: the scheduler's own queue settings, and what does their work under Slurm
SLURM_EQUIVALENTS = {
    "user_gpu_quota": "a GPU limit per user on a QOS or association "
    "(sacctmgr modify qos NAME set MaxTRESPerUser=gres/gpu=N)",
    "group_gpu_quotas": "an account's GPU limit (sacctmgr modify account NAME set "
    "GrpTRES=gres/gpu=N)",
    "fair_share_half_life": "PriorityDecayHalfLife in slurm.conf, with "
    "PriorityType=priority/multifactor",
    "backfill": "SchedulerType=sched/backfill in slurm.conf",
    "placement_class": "SelectTypeParameters in slurm.conf (CR_LLN, or LLN=YES on the "
    "partition, spreads sessions over nodes)",
    "default_runtime": "DefaultTime on the partition",
    "max_queued_per_user": "MaxSubmitJobsPerUser on a QOS",
}


def refused_settings(section: Any) -> list[str]:
    """What is wrong with a ``Scheduler`` configuration section under Slurm: each queue
    setting it sets, with Slurm's equivalent. Settings are refused, never silently ignored."""
    return [
        f"c.Scheduler.{name} does not apply when Slurm places sessions; use {equivalent}"
        for name, equivalent in SLURM_EQUIVALENTS.items()
        if name in section
    ]


@dataclass
class Observation:
    """Slurm's view of the pool's jobs and nodes at one moment."""

    jobs: dict[str, Job] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # pending jobs, first to start first
    nodes: dict[str, SlurmNode] = field(default_factory=dict)
    allocations: dict[str, tuple[str, list[int]]] = field(default_factory=dict)
    error: str = ""  # Slurm did not answer: the scheduler keeps its state and says so


#: Slurm's reason codes for a pending job, in the scheduler's words ({} is the code)
_REASONS = [
    (re.compile(r"^(QOS|Assoc)Max.*PerUser"), "user quota: Slurm's per-user limit is reached"),
    (re.compile(r"^(QOS|Assoc)Grp"), "group quota: the account's limit in Slurm is reached"),
    (re.compile(r"^(QOS|Assoc)Max"), "a Slurm QOS or association limit holds it back"),
    (re.compile(r"^Priority$"), "waiting behind requests ahead of it in Slurm's queue"),
    (
        re.compile(r"^(ReqNodeNotAvail|NodeDown|BadConstraints)"),
        "the node or feature it asks for is not available now",
    ),
    (re.compile(r"^Partition"), "the partition cannot start jobs now"),
    (re.compile(r"^(JobHeld|BeginTime|Dependency)"), "held in Slurm"),
    (re.compile(r"^None$"), "waiting for Slurm's next scheduling pass"),
]

#: how Slurm ended a job the scheduler did not cancel, in its words
_END_WORDS = {
    "TIMEOUT": "Slurm's time limit for job {job} was reached",
    "CANCELLED": "job {job} was cancelled in Slurm",
    "NODE_FAIL": "node {node} failed in Slurm (job {job})",
    "PREEMPTED": "job {job} was preempted by Slurm",
    "OUT_OF_MEMORY": "job {job} ran out of memory in Slurm",
    "BOOT_FAIL": "node {node} failed to boot for job {job}",
    "DEADLINE": "job {job} reached its deadline in Slurm",
    "PENDING": "Slurm put job {job} back in its queue (requeued)",
    "SUSPENDED": "job {job} was suspended by Slurm",
}


def waiting_words(job: Job, busy: str) -> str:
    """Why a pending job waits, as the scheduler says it, with Slurm's code after it;
    ``busy`` is the scheduler's own sentence for GPUs that are all taken."""
    if job.reason == "Resources":
        return f"{busy} (Slurm: Resources)"
    for pattern, words in _REASONS:
        if pattern.search(job.reason):
            return f"{words} (Slurm: {job.reason})"
    return f"waiting in Slurm's queue (Slurm: {job.reason})"


def end_words(job: Job | None, job_id: str, node: str) -> str:
    if job is None:
        return f"Slurm no longer knows job {job_id}"
    state = job.state.split()[0]
    return _END_WORDS.get(state, "Slurm ended job {job}: " + state).format(
        job=job_id, node=node or job.nodes
    )


class SlurmBackend(LoggingConfigurable):
    """What the scheduler needs from Slurm: jobs for sessions, and Slurm's view of them."""

    slurm_conf = Unicode(
        "",
        config=True,
        help="The cluster's slurm.conf (default: $SLURM_CONF, else /etc/slurm/slurm.conf).",
    )
    partition = Unicode("", config=True, help="The partition sessions run in (Slurm's default).")
    account = Unicode("", config=True, help="The Slurm account jobs are charged to (--account).")
    qos = Unicode("", config=True, help="The QOS of the jobs (--qos).")
    submit_as = Enum(
        ["auto", "owner", "scheduler"],
        "auto",
        config=True,
        help="Whose job a session is: 'owner' submits as the verified user's account of the "
        "same name on this machine (the scheduler runs as root, the pool has identities); "
        "'scheduler' as the scheduler's own account, the user named in the job's comment; "
        "'auto' as the owner where that is possible.",
    )
    node_names = Dict(
        per_key_traits=None,
        config=True,
        help="Slurm's node name -> the node agent's name, where they differ.",
    )
    gpu_mem_feature = Unicode(
        "gpumem{gb}g",
        config=True,
        help="The node features that state GPU memory ({gb}: GiB per GPU); --gpu-mem asks "
        "for any node with at least that much.",
    )
    nice_per_priority = Int(
        100, min=1, config=True, help="--priority P is submitted as --nice=-(P x this)."
    )
    extra_options = List(Unicode(), config=True, help="More sbatch options for every session.")
    command_timeout = Float(30.0, config=True, help="Seconds a Slurm command may take.")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.commands = SlurmCommands(self.slurm_conf, self.command_timeout)
        self.can_switch_user = os.geteuid() == 0

    # names

    def agent_name(self, slurm_node: str) -> str:
        return str(self.node_names.get(slurm_node, slurm_node))

    def slurm_name(self, agent_node: str) -> str:
        for slurm, agent in self.node_names.items():
            if agent == agent_node:
                return str(slurm)
        return agent_node

    # sessions as jobs

    def options(
        self,
        session_id: str,
        request: HardwareRequest,
        who: str,
        owner: Identity | None,
        nodes: dict[str, SlurmNode],
    ) -> list[str]:
        """sbatch options for a session; a request Slurm cannot express is refused here,
        with what to ask for instead."""
        if request.shared:
            raise RequestError(
                "--shared GPUs are not offered where Slurm places sessions: ask for a whole "
                "GPU (leave out --shared); Slurm's own GPU sharing (its 'shard' GRES) is not "
                "used by this pool"
            )
        options = [
            f"--job-name=hwsched-{session_id}",
            f"--comment=hwsched session {session_id} for {who}",
            "--chdir=/",
            f"--gres={self._gres(request, nodes)}",
            *self._account_options(owner),
        ]
        constraints = []
        if request.gpu_mem:
            constraints.append(self._memory_constraint(request.gpu_mem, nodes))
        if request.node:
            name = self.slurm_name(request.node)
            if name in nodes:
                options.append(f"--nodelist={name}")
            elif any(request.node in n.features for n in nodes.values()):
                constraints.append(request.node)
            else:
                raise RequestError(
                    f"--node {request.node}: no Slurm node is named so or has that feature; "
                    f"the nodes are {', '.join(sorted(self.agent_name(n) for n in nodes))}"
                )
        if constraints:
            options.append("--constraint=" + "&".join(constraints))
        if request.timeout:
            options.append(f"--time={max(1, math.ceil(request.timeout / 60))}")
        if request.priority:
            options.append(f"--nice={-request.priority * self.nice_per_priority}")
        if request.cpus:
            options.append(f"--cpus-per-task={math.ceil(request.cpus)}")
        if request.mem:
            options.append(f"--mem={math.ceil(request.mem / 1024**2)}M")
        for name, value in (
            ("partition", self.partition),
            ("account", self.account),
            ("qos", self.qos),
        ):
            if value:
                options.append(f"--{name}={value}")
        return options + list(self.extra_options)

    def _gres(self, request: HardwareRequest, nodes: dict[str, SlurmNode]) -> str:
        wanted = request.gpu_types()
        if not wanted:
            return f"gpu:{request.gpus}"
        types = sorted({t for n in nodes.values() for t in n.gpu_types if t})
        found = sorted(
            {t for t in types for w in wanted if model_matches(t, w) or model_matches(w, t)}
        )
        if len(found) == 1:
            return f"gpu:{found[0]}:{request.gpus}"
        known = ", ".join(types) or "none (the GRES are untyped)"
        if not found:
            raise RequestError(
                f"--gpu-type {request.gpu_type}: Slurm has no GPU of that type; its GPU "
                f"types are {known}"
            )
        raise RequestError(
            f"--gpu-type {request.gpu_type} matches Slurm's GPU types {', '.join(found)}; a "
            "Slurm job asks for one type: name one of them"
        )

    def _memory_constraint(self, gpu_mem: int, nodes: dict[str, SlurmNode]) -> str:
        pattern = re.compile(
            "^" + re.escape(self.gpu_mem_feature).replace(re.escape("{gb}"), r"(\d+)") + "$"
        )
        enough = sorted(
            {
                f
                for n in nodes.values()
                for f in n.features
                if (m := pattern.match(f)) and int(m.group(1)) * 1024**3 >= gpu_mem
            }
        )
        if not enough:
            raise RequestError(
                f"--gpu-mem {format_memory(gpu_mem)}: no Slurm node states that much GPU "
                f"memory (node features like {self.gpu_mem_feature.format(gb=80)}); ask for less"
            )
        return enough[0] if len(enough) == 1 else "[" + "|".join(enough) + "]"

    def _account_options(self, owner: Identity | None) -> list[str]:
        """Submit as the verified user where the deployment allows it."""
        if self.submit_as == "scheduler":
            return []
        if owner is None or not self.can_switch_user:
            if self.submit_as == "owner":
                raise RequestError(
                    "the pool submits Slurm jobs as their owner (c.SlurmBackend.submit_as), "
                    "which needs a pool with identities and a scheduler running as root"
                )
            return []
        try:
            account = pwd.getpwnam(owner.name)
        except KeyError:
            if self.submit_as == "owner":
                raise RequestError(
                    f"user {owner.name} has no account on the Slurm cluster; ask its operator "
                    "to add one"
                ) from None
            return []
        return [f"--uid={account.pw_uid}", f"--gid={account.pw_gid}"]

    def submit(self, options: list[str]) -> str:
        try:
            return self.commands.submit(options)
        except SlurmError as exc:
            if "sbatch:" in str(exc) and "Unable to contact" not in str(exc):
                raise RequestError(f"Slurm refused the request: {exc}") from None
            raise

    def cancel(self, job_ids: list[str]) -> None:
        try:
            self.commands.cancel(job_ids)
        except SlurmError as exc:  # the job still ends at its time limit
            self.log.warning("could not cancel Slurm job(s) %s: %s", job_ids, exc)

    # Slurm's view

    def look(self, job_ids: list[str], placed: set[str]) -> Observation:
        """Slurm's view of these jobs and of the nodes; ``placed``: jobs already placed, whose
        allocation is known. Runs off the scheduler's event loop: it only reads Slurm."""
        seen = Observation()
        try:
            seen.jobs = self.commands.jobs(job_ids)
            seen.nodes = self.commands.nodes()
            if any(j.state == "PENDING" for j in seen.jobs.values()):
                seen.order = self.commands.pending_order(self.partition)
            for job in seen.jobs.values():
                if job.state == "RUNNING" and job.id not in placed:
                    allocation = self.commands.allocation(job.id)
                    if allocation is not None:
                        seen.allocations[job.id] = allocation
        except SlurmError as exc:
            seen.error = str(exc)
        return seen

    def usage(self, job_ids: list[str]) -> dict[str, float]:
        """GPU-seconds per job from Slurm's accounting; empty where it keeps none."""
        try:
            return {job: used for job, (_, used) in self.commands.usage(job_ids).items()}
        except SlurmError as exc:
            self.log.warning("Slurm accounting is not available: %s", exc)
            return {}

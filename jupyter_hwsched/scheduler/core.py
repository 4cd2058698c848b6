"""The scheduler's rules: submit, place, lease, end, account, and the view of the pool.

The working set (nodes, live sessions) lives in memory; every change is written through to
SQLite before the caller is answered, and a restarted scheduler loads the same state, queue
order and accounting. Everything runs on the service's event loop.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from traitlets import Bool, Dict, Enum, Float, Instance, Int, Type, default
from traitlets.config import LoggingConfigurable

from jupyter_hwsched.protocol.errors import (
    ConflictError,
    NotFoundError,
    RequestError,
    SessionEnded,
    TooManyRequestsError,
    UnavailableError,
)
from jupyter_hwsched.protocol.records import GpuRecord, Identity, Placement, SessionRecord
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.model import Node, Session, WaitHistogram
from jupyter_hwsched.scheduler.placement import (
    Matcher,
    NodeView,
    PackPlacement,
    PlacementPolicy,
    impossible_reason,
)
from jupyter_hwsched.scheduler.queue import Plan, plan, queue_order
from jupyter_hwsched.scheduler.slurm.backend import (
    Observation,
    SlurmBackend,
    end_words,
    refused_settings,
    waiting_words,
)
from jupyter_hwsched.scheduler.store import Store


class SettingsError(ValueError):
    """The scheduler's configuration cannot work; the message says what to change."""


class Scheduler(LoggingConfigurable):
    """Queue, placement, leases and accounting over the registered nodes."""

    lease_seconds = Float(
        30.0, config=True, help="A session whose client does not renew it for this long ends."
    )
    node_timeout = Float(
        20.0,
        config=True,
        help="A node that sends no heartbeat for this long is down; its sessions end.",
    )
    placement_class = Type(
        PackPlacement,
        klass=PlacementPolicy,
        config=True,
        help="The placement policy: PackPlacement (default) or SpreadPlacement.",
    )
    user_gpu_quota = Int(0, config=True, help="GPUs one user may hold at once (0: no limit).")
    group_gpu_quotas = Dict(
        per_key_traits=None,
        config=True,
        help="GPUs each group may hold at once, e.g. {'research': 8}.",
    )
    fair_share_half_life = Float(
        3600.0,
        config=True,
        help="Seconds after which a user's past GPU time counts half in the fair-share order.",
    )
    default_runtime = Float(
        3600.0,
        config=True,
        help="Runtime assumed for a session without a time limit, for start estimates.",
    )
    user_max_priority = Int(
        0,
        config=True,
        help="The highest --priority a user may ask for (operators any); only where the pool "
        "has identities (a CA).",
    )
    max_queued_per_user = Int(
        20,
        min=0,
        config=True,
        help="Sessions one user may have waiting in the queue at once (0: no limit); one "
        "more is refused with 429 until some start or end.",
    )
    backfill = Bool(
        True,
        config=True,
        help="Place later requests around a blocked one where that delays nothing.",
    )
    backend = Enum(
        ["builtin", "slurm"],
        "builtin",
        config=True,
        help="Who decides which request starts where: 'builtin' (this scheduler's queue, "
        "quotas, fair share and backfill) or 'slurm' (each session is a Slurm job; see "
        "SlurmBackend; the queue settings above are then Slurm's own).",
    )
    placement = Instance(PlacementPolicy)
    store = Instance(Store)

    @default("placement")
    def _placement_default(self) -> PlacementPolicy:
        return self.placement_class(parent=self)

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, **kw: Any) -> None:
        super().__init__(store=store, **kw)
        self.clock = clock
        self.slurm: SlurmBackend | None = None
        if self.backend == "slurm":
            refused = refused_settings(self.config.get("Scheduler", {}))
            if refused:
                raise SettingsError("; ".join(refused))
            self.slurm = SlurmBackend(parent=self)
            if not os.path.isfile(self.slurm.commands.conf):
                # without it, Slurm's commands would look for their controller in DNS
                raise SettingsError(
                    f"Slurm's configuration {self.slurm.commands.conf} does not exist: set "
                    "c.SlurmBackend.slurm_conf (or SLURM_CONF) to the cluster's slurm.conf"
                )
        self.observation = Observation()  # Slurm's last view (under Slurm)
        self._asked: set[str] = set()  # the jobs that view covers
        #: the wake-up of the loop that asks Slurm (app.py): a change it should see soon
        self.wake: Callable[[], None] = lambda: None
        # GPUs of sessions the scheduler ended, until their node confirms the teardown
        self.draining: dict[str, tuple[str, list[int]]] = {}
        #: Slurm jobs this scheduler submitted whose sessions may not be on disk yet: a
        #: commit that fails takes the session back, and its job must go too (load)
        self._submitted: set[str] = set()
        self.wait_histogram = WaitHistogram()
        self.load(grace=True)

    def load(self, grace: bool = False, replan: bool = True) -> None:
        """Take the working set from the store: at start, and after a commit failed (the
        working set then holds changes the store does not). ``grace``: the scheduler was
        away, not the nodes and clients, so give each a full period to speak. ``replan``:
        place what can be placed now (which writes)."""
        seen = {n.name: n.last_seen for n in getattr(self, "nodes", {}).values()}
        leases = {s.id: s.lease_expires for s in getattr(self, "live", {}).values()}
        self.nodes: dict[str, Node] = {n.name: n for n in self.store.nodes()}
        self.live: dict[str, Session] = {s.id: s for s in self.store.live_sessions()}
        start = self.clock()
        for node in self.nodes.values():
            # when a node was last heard of, and a lease last renewed, is known here even
            # where it could not be written (a full disk): a node that speaks is not down
            node.last_seen = max(node.last_seen, start if grace else seen.get(node.name, 0.0))
        for s in self.live.values():
            renewed = start + self.lease_seconds if grace else leases.get(s.id, 0.0)
            s.lease_expires = max(s.lease_expires, renewed)
        self._seq = max((s.seq for s in self.live.values()), default=0)
        self._usage: dict[str, float] = {}  # decayed GPU-seconds of ended sessions, at _usage_at
        self._usage_at = start
        horizon = self._usage_at - 10 * self.fair_share_half_life
        for s in self.store.ended_since(horizon):
            self._add_usage(s.user, s.allocated_seconds(self._usage_at), s.ended or self._usage_at)
        self._plan = Plan()
        self._positions: dict[str, int] = {}
        self._busy_reasons: dict[tuple[Any, ...], str] = {}
        # an end that was rolled back left a live session: its GPUs are not draining
        self.draining = {k: v for k, v in self.draining.items() if k not in self.live}
        self._cancel_rolled_back_jobs()
        if replan:
            self.schedule()

    # nodes

    def register_node(
        self,
        name: str,
        url: str,
        gpus: list[dict[str, Any]],
        share: bool = True,
        labels: list[str] | tuple[str, ...] = (),
    ) -> None:
        if not gpus:
            raise RequestError(f"node {name!r} registered with no GPU; there is nothing to share")
        now = self.clock()
        old = self.nodes.get(name)
        node = Node(
            name,
            url,
            gpus,
            {"share": share, "labels": list(labels)},
            registered=old.registered if old else now,
            last_seen=now,
            stats=old.stats if old else {},
        )
        self.nodes[name] = node
        self.store.save_node(node)
        self.log.info("node %s registered at %s with %d GPU(s)", name, url, len(gpus))
        self.schedule()

    def heartbeat(
        self,
        name: str,
        live: list[str],
        stats: dict[str, Any],
        warm: set[str] | None = None,
        leases: list[dict[str, Any]] | None = None,
    ) -> list[str]:
        """Record a heartbeat and its utilization samples; answer which of the node's
        sessions must end now."""
        node = self.nodes.get(name)
        if node is None:
            raise NotFoundError(f"node {name!r} is not registered; register it first")
        now = self.clock()
        elapsed = min(max(0.0, now - node.last_seen), self.node_timeout)
        node.last_seen, node.stats = now, stats
        node.warm = warm or set()
        node.leases = leases or []
        cells = stats.get("cell_seconds") or {}
        for s in self.live.values():
            if s.node == name and s.holding:
                load = sum((node.utilization(i) or 0.0) for i in s.gpu_ids) / 100.0
                ran = cells.get(s.id)
                if s.request.shared and ran is not None and ran != s.cell_seconds:
                    s.cell_seconds = float(ran)  # the GPU time a shared kernel is charged
                    s.busy = s.cell_seconds
                    self.store.save_session(s)
                elif load and not s.request.shared:
                    s.busy += load * elapsed
                    self.store.save_session(s)
        for sid, ran in cells.items():  # a shared kernel that ended: its final cell time
            if sid not in self.live:
                ended = self.store.session(sid)
                if ended is not None and ended.node == name and ended.request.shared:
                    ended.cell_seconds = ended.busy = float(ran)
                    self.store.save_session(ended)
        self.store.touch_node(node)
        reported = set(live)
        changed = False
        for sid, (where, _) in list(self.draining.items()):
            if where == name and sid not in reported:
                del self.draining[sid]  # torn down: its GPUs are free now
                self._release_job(sid)
                changed = True
        for s in list(self.live.values()):
            grace = min(5.0, self.node_timeout / 2)  # a heartbeat may have left before it began
            if (
                s.node == name
                and s.state == "running"
                and s.id not in reported
                and now - (s.started or now) > grace
            ):
                # a running session its node no longer has (the agent restarted, say)
                self.end(s.id, f"node {name} no longer runs the session", replan=False)
                changed = True
        if changed:
            self.schedule()
        return [sid for sid in live if sid not in self.live or self.live[sid].node != name]

    def end_reasons(self, session_ids: list[str]) -> dict[str, str]:
        """Why each of these sessions ended, for the node that must tear them down."""
        reasons = {}
        for sid in session_ids:
            ended = self.store.session(sid)
            reasons[sid] = (ended.end_reason if ended else None) or "unknown to the scheduler"
        return reasons

    def node_views(self) -> list[NodeView]:
        now = self.clock()
        held: dict[str, set[int]] = {}
        shared: dict[str, dict[int, int]] = {}
        for s in self.live.values():
            if s.holding and s.node and s.request.shared:
                promised = shared.setdefault(s.node, {})
                for i in s.gpu_ids:
                    promised[i] = promised.get(i, 0) + (s.request.gpu_mem or 0)
            elif s.holding and s.node:
                held.setdefault(s.node, set()).update(s.gpu_ids)
        for where, gpu_ids in self.draining.values():
            held.setdefault(where, set()).update(gpu_ids)
        views = []
        for n in self.nodes.values():
            if not n.up(now, self.node_timeout):
                continue
            on_node = shared.get(n.name, {})
            views.append(
                NodeView(
                    n.name,
                    n.gpus,
                    set(n.by_index) - held.get(n.name, set()) - set(on_node),
                    n.labels,
                    n.by_index,
                    frozenset(n.warm),
                    frozenset(lease["warm_key"] for lease in n.leases if not lease.get("in_use")),
                    {i: used for i, used in on_node.items() if i not in held.get(n.name, set())},
                    {i: used for i in n.by_index if (used := n.memory_used(i))},
                )
            )
        return views

    # sessions

    def submit(
        self,
        request: HardwareRequest,
        user: str,
        host: str,
        group: str = "",
        notebook: str = "",
        owner: Identity | None = None,
    ) -> dict[str, Any]:
        """Queue a request (``owner``: the verified account it runs as, where the pool has
        identities); the answer carries the session's secret, this once."""
        if self.slurm is None:
            self._check_queue_cap(user)  # under Slurm, a QOS's MaxSubmitJobsPerUser
        reason = impossible_reason(request, self.node_views())
        if reason:
            everywhere = [NodeView(n.name, n.gpus, set(), n.labels) for n in self.nodes.values()]
            if impossible_reason(request, everywhere) is None:
                down = sorted(
                    v.name for v in everywhere if len(v.matching(request)) >= request.gpus
                )
                raise UnavailableError(
                    f"the nodes that could hold this request are down ({', '.join(down)}): "
                    "their GPUs are back in the pool when their agents send heartbeats again"
                )
            if not self.nodes:
                raise UnavailableError(reason)
            raise RequestError(reason)
        now = self.clock()
        session = Session(
            id=secrets.token_hex(8),
            seq=0,
            user=user,
            group=group,
            host=host,
            request=request,
            state="queued",
            created=now,
            lease_expires=now + self.lease_seconds,
            notebook=notebook,
            owner=owner,
        )
        secret = secrets.token_urlsafe(24)
        session.secret_hash = hashlib.sha256(secret.encode()).hexdigest()
        if self.slurm is not None:
            session.job = self._submit_job(session)
        session.seq = self.store.add_session(session)
        self.live[session.id] = session
        self.log.info("session %s queued for %s@%s: %s", session.id, user, host, request)
        self.schedule()
        # the secret goes to the client that asked, once; node agents check it by its hash
        return {**self.describe(session.id), "secret": secret}

    def _check_queue_cap(self, user: str) -> None:
        cap = self.max_queued_per_user
        if not cap:
            return
        waiting = sum(1 for s in self.live.values() if s.state == "queued" and s.user == user)
        if waiting >= cap:
            raise TooManyRequestsError(
                f"{user} already has {waiting} sessions waiting in the queue, the most one "
                f"user may have: end some (hwsched status lists them) or wait until they start"
            )

    def renew(self, session_id: str) -> dict[str, Any]:
        session = self._live(session_id)
        session.lease_expires = self.clock() + self.lease_seconds
        self.store.save_session(session)
        return self.describe(session_id)

    def mark_running(self, session_id: str, node: str) -> dict[str, Any]:
        session = self._live(session_id)
        if session.state != "placed" or session.node != node:
            raise ConflictError(f"session {session_id} is {session.state}, not placed on {node}")
        session.state, session.started = "running", self.clock()
        self.store.save_session(session)
        return self.describe(session_id)

    def end(
        self, session_id: str, reason: str, replan: bool = True, drain: bool = False
    ) -> dict[str, Any]:
        """End a session and return its GPUs to the pool; ending twice is harmless.
        ``drain``: the node still has to tear the session down, so its GPUs stay out of the
        pool until the node's heartbeat no longer lists it."""
        session = self.live.pop(session_id, None)
        if session is None:
            if self.store.session(session_id) is None:
                raise NotFoundError(f"no session {session_id}")
            return self.describe(session_id)
        now = self.clock()
        if drain and session.holding and session.node:
            self.draining[session_id] = (session.node, list(session.gpu_ids))
        elif session.job and self.slurm is not None:
            self.slurm.cancel([session.job])  # else once the node has torn it down
        session.state, session.ended, session.end_reason = "ended", now, reason
        self.store.save_session(session)
        self._add_usage(session.user, session.allocated_seconds(now), now)
        self.log.info("session %s ended: %s", session_id, reason)
        if replan:
            self.schedule()
        return self._view(session)

    def tick(self) -> None:
        """Periodic duties: lapsed leases, time limits, lost nodes; then place what fits."""
        now = self.clock()
        up = {n.name for n in self.nodes.values() if n.up(now, self.node_timeout)}
        for s in list(self.live.values()):
            limit = s.request.timeout
            if s.lease_expires < now:
                reason = "lease expired: the client stopped renewing the session"
                self.end(s.id, reason, replan=False, drain=True)
            elif limit and s.placed and now - s.placed > limit:
                self.end(s.id, f"time limit of {limit:g} s reached", replan=False, drain=True)
            elif s.node and s.node not in up:
                self.end(s.id, f"node {s.node} stopped sending heartbeats", False)
        for sid, (where, _) in list(self.draining.items()):
            if where not in up:  # a lost node tears nothing down: Slurm may have its GPUs
                del self.draining[sid]
                self._release_job(sid)
        self.schedule()

    def schedule(self) -> None:
        """Place what the queue's order, quotas and reservations allow now (under Slurm:
        what Slurm has started)."""
        now = self.clock()
        if self.slurm is not None:
            self._follow_slurm(now)
            return
        queued = [s for s in self.live.values() if s.state == "queued"]
        holding = [s for s in self.live.values() if s.holding]
        usage = self.usage_table(now)
        ordered = queue_order(queued, lambda user: usage.get(user, 0.0))
        self._plan = plan(
            ordered,
            self.node_views(),
            holding,
            now,
            self.placement,
            self._quota,
            self.default_runtime,
            self.backfill,
        )
        for session, node, gpu_ids in self._plan.placements:
            session.state, session.node, session.gpu_ids, session.placed = (
                "placed",
                node,
                gpu_ids,
                now,
            )
            self.store.save_session(session)
            self.wait_histogram.observe(now - session.created)
            self.log.info("session %s placed on %s GPU(s) %s", session.id, node, gpu_ids)
        if self._plan.placements:
            placed = {s.id for s, _, _ in self._plan.placements}
            self._plan.order = [sid for sid in self._plan.order if sid not in placed]
        self._positions = {sid: i + 1 for i, sid in enumerate(self._plan.order)}
        self._busy_reasons = {}

    def _quota(self, session: Session, users: Counter[str], groups: Counter[str]) -> str | None:
        want = session.request.gpus
        if self.user_gpu_quota and users[session.user] + want > self.user_gpu_quota:
            return (
                f"user quota: {session.user} holds {users[session.user]} of the "
                f"{self.user_gpu_quota} GPU(s) a user may hold at once"
            )
        limit = self.group_gpu_quotas.get(session.group) if session.group else None
        if limit is not None and groups[session.group] + want > int(limit):
            return (
                f"group quota: group {session.group} holds {groups[session.group]} of its "
                f"{int(limit)} GPU(s)"
            )
        return None

    # placement by Slurm (slurm/backend.py)

    def _submit_job(self, session: Session) -> str:
        assert self.slurm is not None
        nodes = self.observation.nodes or self.slurm.commands.nodes()
        who = f"{session.user}@{session.host}"
        options = self.slurm.options(session.id, session.request, who, session.owner, nodes)
        job = self.slurm.submit(options)
        self._submitted.add(job)
        self.log.info("session %s is Slurm job %s (%s)", session.id, job, " ".join(options))
        self.wake()  # Slurm often starts a job at once: look soon
        return job

    def _cancel_rolled_back_jobs(self) -> None:
        """Cancel the jobs submitted for sessions that a failed commit took back: Slurm
        holds them, and nothing here knows them any more."""
        if self.slurm is None or not self._submitted:
            return
        known = {s.job for s in self.live.values() if s.job}
        stray = sorted(self._submitted - known)
        self._submitted.clear()
        if stray:
            self.log.warning("cancelling Slurm jobs whose sessions were not written: %s", stray)
            self.slurm.cancel(stray)  # Slurm away: said, and their time limit ends them

    def _release_job(self, session_id: str) -> None:
        """Cancel an ended session's Slurm job, once its node has torn the session down."""
        if self.slurm is not None:
            ended = self.store.session(session_id)
            if ended is not None and ended.job:
                self._submitted.discard(ended.job)
                self.slurm.cancel([ended.job])

    def slurm_jobs(self) -> tuple[list[str], set[str]]:
        """The live sessions' jobs, and those among them already placed: what to ask
        Slurm about."""
        jobs = [s.job for s in self.live.values() if s.job]
        return jobs, {s.job for s in self.live.values() if s.job and s.placed is not None}

    def take_slurm_view(self, observation: Observation, asked: list[str]) -> None:
        """Take Slurm's latest view (of the jobs in ``asked``) and act on it."""
        observation.jobs = {j: observation.jobs[j] for j in asked if j in observation.jobs}
        self.observation = observation
        self._asked = set(asked)
        self.schedule()

    def _follow_slurm(self, now: float) -> None:
        """Place the sessions whose jobs Slurm started, end those whose jobs or nodes it
        ended, and take queue order, reasons and expected starts from it."""
        assert self.slurm is not None
        seen = self.observation
        asked = self._asked
        self._plan, self._busy_reasons = Plan(), {}
        if seen.error:
            for s in self.live.values():
                if s.state == "queued":
                    self._plan.waiting[s.id] = f"Slurm is not answering: {seen.error}"
            self._positions = {}
            return
        down = {self.slurm.agent_name(n.name): n for n in seen.nodes.values() if n.down}
        for s in list(self.live.values()):
            if s.job not in asked:
                continue  # submitted after Slurm was asked: the next look tells
            job = seen.jobs.get(s.job)
            if s.holding and s.node in down:  # its job ends too, with a vaguer reason
                node = down[s.node]
                why = f"node {s.node} is down in Slurm: {node.reason or node.state}"
                self.end(s.id, why, False, drain=True)
            elif job is not None and job.state == "COMPLETING":
                continue  # Slurm is ending it: the next look says how (cancelled, time limit)
            elif job is None or not job.active or (s.holding and job.state != "RUNNING"):
                self.end(s.id, end_words(job, s.job, s.node or ""), False, drain=True)
            elif s.state == "queued" and s.job in seen.allocations:
                self._place_from_slurm(s, *seen.allocations[s.job], now)
        order = {job: i for i, job in enumerate(seen.order)}
        queued = [s for s in self.live.values() if s.state == "queued"]
        queued.sort(key=lambda s: (order.get(s.job, len(order)), s.seq))
        self._plan.order = [s.id for s in queued]
        self._positions = {s.id: order.get(s.job, len(order)) + 1 for s in queued}
        for s in queued:
            job = seen.jobs.get(s.job)
            if job is not None and job.state == "PENDING":
                busy = self._busy_reason(s.request)  # once per kind of request and pass
                self._plan.waiting[s.id] = waiting_words(job, busy)
                if job.start is not None:
                    self._plan.estimates[s.id] = max(job.start, now)

    def _place_from_slurm(
        self, s: Session, slurm_node: str, gpu_ids: list[int], now: float
    ) -> None:
        assert self.slurm is not None
        node = self.slurm.agent_name(slurm_node)
        if node not in self.nodes:
            self.end(
                s.id,
                f"Slurm ran job {s.job} on {slurm_node}, where no hwsched node agent is "
                "registered: start one there (see server/README.md)",
                False,
            )
            return
        s.state, s.node, s.gpu_ids, s.placed = "placed", node, list(gpu_ids), now
        self.store.save_session(s)
        self.wait_histogram.observe(now - s.created)
        self.log.info(
            "session %s placed by Slurm (job %s) on %s GPU(s) %s", s.id, s.job, node, gpu_ids
        )

    # fair share

    def _decay(self, now: float) -> None:
        if now > self._usage_at:
            factor = math.pow(0.5, (now - self._usage_at) / self.fair_share_half_life)
            self._usage = {u: v * factor for u, v in self._usage.items() if v * factor > 1e-3}
            self._usage_at = now

    def _add_usage(self, user: str, gpu_seconds: float, at: float) -> None:
        self._decay(max(at, self._usage_at))
        age = max(0.0, self._usage_at - at)
        weight = math.pow(0.5, age / self.fair_share_half_life)
        self._usage[user] = self._usage.get(user, 0.0) + gpu_seconds * weight

    def usage_table(self, now: float) -> dict[str, float]:
        """Recent GPU-seconds per user, halving every ``fair_share_half_life``; what is held
        now counts in full. Computed once per scheduling pass."""
        self._decay(now)
        table = dict(self._usage)
        for s in self.live.values():
            if s.placed is not None:
                table[s.user] = table.get(s.user, 0.0) + s.allocated_seconds(now)
        return table

    # views

    def describe(self, session_id: str) -> dict[str, Any]:
        return self.record(session_id).to_json()

    def record(self, session_id: str) -> SessionRecord:
        """A session as clients, share agents and node agents are told of it."""
        return self._record(self.find(session_id))

    def _view(self, s: Session) -> dict[str, Any]:
        return self._record(s).to_json()

    def _record(self, s: Session) -> SessionRecord:
        record = SessionRecord(
            id=s.id,
            user=s.user,
            group=s.group,
            host=s.host,
            request=s.request,
            state=s.state,
            node=s.node,
            gpu_ids=list(s.gpu_ids),
            created=s.created,
            lease_expires=s.lease_expires,
            placed=s.placed,
            started=s.started,
            ended=s.ended,
            end_reason=s.end_reason,
            secret_sha256=s.secret_hash,
            notebook=s.notebook,
            owner=s.owner,
        )
        if s.state == "queued":
            record.position = self._positions.get(s.id, len(self._positions) + 1)
            record.waiting_for = self._plan.waiting.get(s.id) or (
                f"submitted to Slurm as job {s.job}; Slurm has not scheduled it yet"
                if s.job
                else self._busy_reason(s.request)
            )
            record.estimated_start = self._plan.estimates.get(s.id)
        node = self.nodes.get(s.node) if s.node else None
        if node is not None:
            record.placement = Placement(
                agent_url=node.url,
                share_needed=bool(node.info.get("share", True)),
                gpus=tuple(
                    GpuRecord.from_json(node.by_index[i]) for i in s.gpu_ids if i in node.by_index
                ),
            )
        return record

    def _busy_reason(self, request: HardwareRequest) -> str:
        """Why a request waits for GPUs; the same for equal requests, so kept per pass."""
        key = tuple(request.to_json().values())
        if key not in self._busy_reasons:
            self._busy_reasons[key] = self._compute_busy_reason(request)
        return self._busy_reasons[key]

    def _compute_busy_reason(self, request: HardwareRequest) -> str:
        views = self.node_views()
        matching = sum(len(v.matching(request)) for v in views)
        match = Matcher(request)
        holders = sorted(
            {
                s.user
                for s in self.live.values()
                if s.holding and s.node in self.nodes
                for i in s.gpu_ids
                if i in self.nodes[s.node].by_index and match(self.nodes[s.node].by_index[i])
            }
        )
        held_by = f" (held by {', '.join(holders)})" if holders else ""
        return (
            f"waiting for {request.gpus} GPU(s): the {matching} matching GPU(s) "
            f"in the pool are busy{held_by} or promised to requests ahead"
        )

    def sessions(self, live_only: bool = True) -> list[dict[str, Any]]:
        if live_only:
            return [self._view(s) for s in sorted(self.live.values(), key=lambda s: s.seq)]
        return [self._view(s) for s in self.store.ended_since(0)] + self.sessions(True)

    def pool(self) -> dict[str, Any]:
        """Nodes, their GPUs with holders, and the queue: what ``hwsched status`` shows."""
        queue = [self._view(self.live[sid]) for sid in self._plan.order if sid in self.live]
        return {
            "nodes": self.node_list(),
            "queue": queue,
            "time": self.clock(),
            "placement": self.backend,
        }

    def node_list(self) -> list[dict[str, Any]]:
        """The nodes and their GPUs, each with its holder."""
        now = self.clock()
        holders: dict[tuple[str | None, int], list[Session]] = {}
        for s in sorted(self.live.values(), key=lambda s: s.seq):
            if s.holding:
                for i in s.gpu_ids:
                    holders.setdefault((s.node, i), []).append(s)
        nodes = []
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            gpus = []
            for gpu in node.gpus:
                on_gpu = holders.get((node.name, gpu["index"]), [])
                holder = on_gpu[0] if on_gpu else None
                tenants = [
                    {"user": s.user, "session": s.id, "gpu_mem": s.request.gpu_mem}
                    for s in on_gpu
                    if s.request.shared
                ]
                gpus.append(
                    dict(
                        gpu,
                        holder=", ".join(sorted({s.user for s in on_gpu})) if on_gpu else None,
                        session=holder.id if holder else None,
                        since=holder.placed if holder else None,
                        # resident kernels sharing it, each with the memory it was promised
                        shared_by=tenants,
                        utilization=node.utilization(gpu["index"]),
                        memory_used=node.memory_used(gpu["index"]),
                    )
                )
            nodes.append(
                {
                    "name": node.name,
                    "url": node.url,
                    "labels": node.labels,
                    "up": node.up(now, self.node_timeout),
                    "gpus": gpus,
                    # how many developers' files its cache keeps (placement prefers it for them)
                    "cache_warm_for": len(node.warm),
                    # what it keeps warm between sessions, for whom (agent/warm.py)
                    "warm_leases": [
                        {k: lease[k] for k in ("id", "user", "host", "expires", "kernel", "in_use")}
                        for lease in node.leases
                    ],
                }
            )
        return nodes

    def find(self, session_id: str) -> Session:
        """A session, live or ended."""
        session = self.live.get(session_id) or self.store.session(session_id)
        if session is None:
            raise NotFoundError(f"no session {session_id}")
        return session

    def _live(self, session_id: str) -> Session:
        session = self.live.get(session_id)
        if session is not None:
            return session
        ended = self.store.session(session_id)
        if ended is None:
            raise NotFoundError(f"no session {session_id}")
        raise SessionEnded(f"session {session_id} has ended: {ended.end_reason}")

"""The queue: who goes first, who may not go yet, and when each may expect to start.

Order: priority first, then fair share (the user with less recent GPU time goes first), then
arrival. Quotas cap the GPUs a user or a group holds at once. When the first request in order
cannot be placed, it gets a reservation (the node and GPUs where it can start soonest, and
when, from the running sessions' time limits or an estimate): later requests are placed now
("backfilled") only where they cannot delay it: on GPUs outside the reservation, or on its
GPUs only if their own time limit ends before the reserved start. That is EASY backfilling:
small requests flow around a large one, and the large one does not starve.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from jupyter_hwsched.protocol.cache_manifest import warm_key
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.model import Session
from jupyter_hwsched.scheduler.placement import Matcher, NodeView, PlacementPolicy, choose_shared

QuotaCheck = Callable[[Session, Counter[str], Counter[str]], str | None]


@dataclass
class Reservation:
    session_id: str
    node: str
    gpus: set[int]
    start: float  # the earliest start the reservation protects
    position: int  # its place in the queue, 1-based


@dataclass
class Plan:
    placements: list[tuple[Session, str, list[int]]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # id -> why ("" = GPUs busy)
    estimates: dict[str, float] = field(default_factory=dict)  # id -> earliest start
    order: list[str] = field(default_factory=list)  # queued ids, first to last
    reservation: Reservation | None = None


def queue_order(queued: list[Session], usage: Callable[[str], float]) -> list[Session]:
    return sorted(queued, key=lambda s: (-s.request.priority, usage(s.user), s.seq))


class Timeline:
    """When each node's held GPUs are expected back: the running sessions' time limits, or an
    estimate. Built once per scheduling pass and shared by every start estimate in it."""

    def __init__(self, holding: list[Session], now: float, runtime: float) -> None:
        self.now = now
        self.runtime = runtime
        self.by_node: dict[str, list[Session]] = {}
        for s in holding:
            if s.node:
                self.by_node.setdefault(s.node, []).append(s)
        self._ends: dict[str, list[tuple[float, set[int]]]] = {}
        self._matching: dict[tuple[str, tuple[Any, ...]], set[int]] = {}

    def add(self, session: Session) -> None:
        assert session.node is not None
        self.by_node.setdefault(session.node, []).append(session)
        self._ends.pop(session.node, None)

    def ends(self, node: str) -> list[tuple[float, set[int]]]:
        if node not in self._ends:
            self._ends[node] = sorted(
                (max(s.expected_end(self.runtime), self.now), set(s.gpu_ids))
                for s in self.by_node.get(node, ())
            )
        return self._ends[node]

    def matching(self, view: NodeView, request: HardwareRequest, match: Matcher) -> set[int]:
        key = (view.name, (request.gpu_type, request.gpu_mem))
        if key not in self._matching:
            self._matching[key] = {g["index"] for g in view.gpus if match(g)}
        return self._matching[key]

    def earliest_start(
        self, session: Session, views: list[NodeView]
    ) -> tuple[float, str, set[int]] | None:
        """When, where and on which GPUs ``session`` could start if nothing else were queued."""
        best: tuple[float, str, set[int]] | None = None
        request = session.request
        need = request.gpus
        match = Matcher(request)
        for view in views:
            if len(view.gpus) < need or not view.accepts(request):
                continue
            matching = self.matching(view, request, match)
            if len(matching) < need:
                continue
            available = view.free & matching
            when = self.now
            for end, ids in self.ends(view.name):
                if len(available) >= need:
                    break
                available = available | (ids & matching)
                when = end
            if len(available) >= need and (best is None or (when, view.name) < best[:2]):
                best = (when, view.name, set(sorted(available)[:need]))
        return best


def plan(
    ordered: list[Session],
    views: list[NodeView],
    holding: list[Session],
    now: float,
    policy: PlacementPolicy,
    quota: QuotaCheck,
    runtime: float,
    backfill: bool = True,
    estimate_limit: int = 50,
) -> Plan:
    """Decide what to place now. ``views`` are consumed (their free sets shrink)."""
    result = Plan(order=[s.id for s in ordered])
    by_name = {v.name: v for v in views}
    users: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for s in holding:
        users[s.user] += len(s.gpu_ids)
        if s.group:
            groups[s.group] += len(s.gpu_ids)
    timeline = Timeline(holding, now, runtime)
    largest = max((len(v.free) for v in views), default=0)  # most free GPUs on one node
    sharing = any(s.request.shared for s in ordered)  # a shared kernel may fit a busy GPU
    for rank, session in enumerate(ordered):
        if largest == 0 and rank >= estimate_limit and not sharing:
            break  # nothing can be placed and no estimate is wanted: the rest simply wait
        why = quota(session, users, groups)
        if why:
            result.waiting[session.id] = why
            continue
        reservation = result.reservation
        choice = None
        warm = warm_key(session.host, session.user)
        if session.request.shared:
            choice = choose_shared(session.request, _usable(views, reservation, session, now), warm)
        elif session.request.gpus <= largest:  # else no node has room: skip the search
            usable = _usable(views, reservation, session, now)
            choice = policy.choose(session.request, usable, warm)
        if choice is not None:
            node, gpu_ids = choice
            by_name[node].free -= set(gpu_ids)
            if session.request.shared:
                shared = by_name[node].shared
                shared[gpu_ids[0]] = shared.get(gpu_ids[0], 0) + (session.request.gpu_mem or 0)
            largest = max((len(v.free) for v in views), default=0)
            users[session.user] += len(gpu_ids)
            if session.group:
                groups[session.group] += len(gpu_ids)
            result.placements.append((session, node, gpu_ids))
            timeline.add(_as_holding(session, node, gpu_ids, now))
            continue
        if session.request.shared:
            result.waiting[session.id] = ""  # no reservation: a share fits as kernels end
            continue
        start = timeline.earliest_start(session, views) if rank < estimate_limit else None
        if start is not None:
            result.estimates[session.id] = max(start[0], reservation.start if reservation else now)
        if reservation is None and start is not None:
            result.reservation = Reservation(session.id, start[1], start[2], start[0], rank + 1)
            result.estimates[session.id] = start[0]
            result.waiting[session.id] = ""
        elif reservation is not None:
            position = reservation.position
            result.waiting[session.id] = (
                f"the GPUs it could use now are reserved for the request at position "
                f"{position}, which would otherwise wait"
                if start is not None and start[0] <= now
                else ""
            )
        else:
            result.waiting[session.id] = ""
        if not backfill:
            for later in ordered[ordered.index(session) + 1 :]:
                result.waiting.setdefault(
                    later.id, "waiting behind an earlier request (no backfill)"
                )
            break
    return result


def _usable(
    views: list[NodeView], reservation: Reservation | None, session: Session, now: float
) -> list[NodeView]:
    """The nodes as ``session`` may use them, given the reservation it must not delay."""
    if reservation is None:
        return views
    limit = session.request.timeout
    if limit is not None and now + limit <= reservation.start:
        return views  # done before the reserved start: may use the reserved GPUs too
    out = []
    for view in views:
        if view.name == reservation.node:
            view = replace(view, free=view.free - reservation.gpus)
        out.append(view)
    return out


def _as_holding(session: Session, node: str, gpu_ids: list[int], now: float) -> Session:
    return replace(session, node=node, gpu_ids=list(gpu_ids), placed=now, state="placed")

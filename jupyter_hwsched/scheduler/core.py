"""The scheduler's rules: submit, place, lease, end, and the view of the pool.

Everything here is synchronous and runs on the service's event loop; SQLite keeps each change
durable before the caller is answered.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from traitlets import Float, Instance, Type, default
from traitlets.config import LoggingConfigurable

from ..errors import ConflictError, NotFoundError, RequestError, SessionEnded
from ..request import HardwareRequest
from .placement import NodeView, PackPlacement, gpu_matches, impossible_reason
from .store import Store

LIVE_STATES = ("queued", "placed", "running")


class Scheduler(LoggingConfigurable):
    """Queue and placement over the registered nodes."""

    lease_seconds = Float(
        30.0, config=True, help="A session whose client does not renew it for this long ends."
    )
    node_timeout = Float(
        20.0,
        config=True,
        help="A node that sends no heartbeat for this long is down; its sessions end.",
    )
    placement_class = Type(
        PackPlacement, klass=PackPlacement, config=True, help="The placement policy."
    )
    placement = Instance(PackPlacement)
    store = Instance(Store)

    @default("placement")
    def _placement_default(self) -> PackPlacement:
        return self.placement_class(parent=self)

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, **kw: Any) -> None:
        super().__init__(store=store, **kw)
        self.clock = clock

    # nodes

    def register_node(
        self, name: str, url: str, gpus: list[dict[str, Any]], share: bool = True
    ) -> None:
        if not gpus:
            raise RequestError(f"node {name!r} registered with no GPU; there is nothing to share")
        self.store.upsert_node(name, url, gpus, {"share": share}, self.clock())
        self.log.info("node %s registered at %s with %d GPU(s)", name, url, len(gpus))
        self.schedule()

    def heartbeat(self, name: str, live: list[str], stats: dict[str, Any]) -> list[str]:
        """Record a heartbeat; answer which of the node's sessions must end now."""
        if not self.store.touch_node(name, self.clock(), stats):
            raise NotFoundError(f"node {name!r} is not registered; register it first")
        sessions = {s["id"]: s for s in self.store.sessions() if s["node"] == name}
        return [sid for sid in live if sid not in sessions or sessions[sid]["state"] == "ended"]

    def node_views(self) -> list[NodeView]:
        now = self.clock()
        held: dict[str, set[int]] = {}
        for s in self.store.sessions(("placed", "running")):
            held.setdefault(s["node"], set()).update(s["gpu_ids"])
        views = []
        for node in self.store.nodes():
            if now - node["last_seen"] > self.node_timeout:
                continue
            indices = {g["index"] for g in node["gpus"]}
            views.append(
                NodeView(node["name"], node["gpus"], indices - held.get(node["name"], set()))
            )
        return views

    # sessions

    def submit(self, request: HardwareRequest, user: str, host: str) -> dict[str, Any]:
        reason = impossible_reason(request, self.node_views())
        if reason:
            raise RequestError(reason)
        now = self.clock()
        session_id = secrets.token_hex(8)
        session: dict[str, Any] = {
            "id": session_id,
            "user": user,
            "host": host,
            "request": request.to_json(),
            "state": "queued",
            "created": now,
            "lease_expires": now + self.lease_seconds,
        }
        self.store.add_session(session)
        self.log.info("session %s queued for %s@%s: %s", session_id, user, host, request)
        self.schedule()
        return self.describe(session_id)

    def renew(self, session_id: str) -> dict[str, Any]:
        self._live(session_id)
        self.store.update_session(session_id, lease_expires=self.clock() + self.lease_seconds)
        return self.describe(session_id)

    def mark_running(self, session_id: str, node: str) -> dict[str, Any]:
        session = self._live(session_id)
        if session["state"] != "placed" or session["node"] != node:
            raise ConflictError(f"session {session_id} is {session['state']}, not placed on {node}")
        self.store.update_session(session_id, state="running", started=self.clock())
        return self.describe(session_id)

    def end(self, session_id: str, reason: str) -> dict[str, Any]:
        """End a session and return its GPUs to the pool; ending twice is harmless."""
        session = self.store.session(session_id)
        if session is None:
            raise NotFoundError(f"no session {session_id}")
        if session["state"] != "ended":
            self.store.update_session(
                session_id, state="ended", ended=self.clock(), end_reason=reason
            )
            self.log.info("session %s ended: %s", session_id, reason)
            self.schedule()
        return self.describe(session_id)

    def tick(self) -> None:
        """Periodic duties: lapsed leases, time limits, lost nodes; then place what fits."""
        now = self.clock()
        up = {v.name for v in self.node_views()}
        for s in self.store.sessions(LIVE_STATES):
            limit = s["request"].get("timeout")
            if s["lease_expires"] < now:
                self.end(s["id"], "lease expired: the client stopped renewing the session")
            elif limit and s["started"] and now - s["started"] > limit:
                self.end(s["id"], f"time limit of {limit:g} s reached")
            elif s["node"] and s["node"] not in up:
                self.end(s["id"], f"node {s['node']} stopped sending heartbeats")
        self.schedule()

    def schedule(self) -> None:
        """Place queued sessions in arrival order on whatever fits now."""
        queued = self.store.sessions(("queued",))
        if not queued:
            return
        views = self.node_views()
        for s in queued:
            request = HardwareRequest(**s["request"])
            choice = self.placement.choose(request, views)
            if choice is None:
                continue
            node, gpu_ids = choice
            self.store.update_session(
                s["id"], state="placed", node=node, gpu_ids=gpu_ids, placed=self.clock()
            )
            for view in views:
                if view.name == node:
                    view.free -= set(gpu_ids)
            self.log.info("session %s placed on %s GPU(s) %s", s["id"], node, gpu_ids)

    # views

    def describe(self, session_id: str) -> dict[str, Any]:
        s = self.store.session(session_id)
        if s is None:
            raise NotFoundError(f"no session {session_id}")
        out = {k: s[k] for k in ("id", "user", "host", "request", "state", "node", "gpu_ids")}
        out.update(
            created=s["created"],
            placed=s["placed"],
            started=s["started"],
            ended=s["ended"],
            lease_expires=s["lease_expires"],
            end_reason=s["end_reason"],
        )
        if s["state"] == "queued":
            queued = [q["id"] for q in self.store.sessions(("queued",))]
            out["position"] = queued.index(session_id) + 1
            out["waiting_for"] = self._waiting_reason(HardwareRequest(**s["request"]))
        if s["node"]:
            node = self.store.node(s["node"])
            if node:
                out["agent_url"] = node["url"]
                out["share_needed"] = bool(node["info"].get("share", True))
                by_index = {g["index"]: g for g in node["gpus"]}
                out["gpus"] = [by_index[i] for i in s["gpu_ids"] if i in by_index]
        return out

    def _waiting_reason(self, request: HardwareRequest) -> str:
        views = self.node_views()
        matching = sum(len(v.matching(request)) for v in views)
        holders = sorted(
            {
                s["user"]
                for s in self.store.sessions(("placed", "running"))
                for v in views
                if v.name == s["node"]
                for g in v.gpus
                if g["index"] in s["gpu_ids"] and gpu_matches(g, request)
            }
        )
        held_by = f" (held by {', '.join(holders)})" if holders else ""
        return (
            f"waiting for {request.gpus} GPU(s): the {matching} matching GPU(s) "
            f"in the pool are busy{held_by} or promised to requests ahead"
        )

    def sessions(self, live_only: bool = True) -> list[dict[str, Any]]:
        rows = self.store.sessions(LIVE_STATES if live_only else None)
        return [self.describe(s["id"]) for s in rows]

    def pool(self) -> dict[str, Any]:
        """Nodes, their GPUs with holders, and the queue: what ``hwsched status`` shows."""
        now = self.clock()
        live = self.store.sessions(LIVE_STATES)
        holders = {
            (s["node"], i): s
            for s in live
            if s["state"] in ("placed", "running")
            for i in s["gpu_ids"]
        }
        nodes = []
        for node in self.store.nodes():
            gpus = []
            for gpu in node["gpus"]:
                holder = holders.get((node["name"], gpu["index"]))
                util = node["stats"].get("utilization", {}).get(str(gpu["index"]))
                gpus.append(
                    dict(
                        gpu,
                        holder=holder["user"] if holder else None,
                        session=holder["id"] if holder else None,
                        since=holder["placed"] if holder else None,
                        utilization=util,
                    )
                )
            up = now - node["last_seen"] <= self.node_timeout
            nodes.append({"name": node["name"], "url": node["url"], "up": up, "gpus": gpus})
        queue = [self.describe(s["id"]) for s in live if s["state"] == "queued"]
        return {"nodes": nodes, "queue": queue, "time": now}

    def _live(self, session_id: str) -> dict[str, Any]:
        session = self.store.session(session_id)
        if session is None:
            raise NotFoundError(f"no session {session_id}")
        if session["state"] == "ended":
            raise SessionEnded(f"session {session_id} has ended: {session['end_reason']}")
        return session

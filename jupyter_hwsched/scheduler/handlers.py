"""The scheduler's REST API: one handler class per resource, all through ``JsonHandler``.

Every body is read into a record of :mod:`jupyter_hwsched.protocol.records` before it reaches
the scheduler, so malformed input is a 400 that names the field, never a 500. The description
of this API is :mod:`jupyter_hwsched.protocol.openapi`, served at ``/api/spec``.
"""

from __future__ import annotations

import math
from typing import Any

from jupyter_hwsched.protocol.errors import NotFoundError, RequestError
from jupyter_hwsched.protocol.handler import JsonHandler
from jupyter_hwsched.protocol.openapi import SPEC
from jupyter_hwsched.protocol.records import (
    NODE_NAME_PATTERN,
    SESSION_ID_PATTERN,
    Heartbeat,
    NodeRegistration,
    SessionSubmission,
    text_field,
)
from jupyter_hwsched.protocol.version import check_protocol
from jupyter_hwsched.scheduler import access
from jupyter_hwsched.scheduler.access import Authenticator
from jupyter_hwsched.scheduler.accounting import metrics_text, usage_report
from jupyter_hwsched.scheduler.core import Scheduler


class SchedulerHandler(JsonHandler):
    scheduler: Scheduler
    surface = "this scheduler"

    def shown(self, view: dict[str, Any]) -> dict[str, Any]:
        """A session's view as this caller may see it."""
        return view if access.may_read_view(self.who(), view) else access.public_view(view)


class NodesHandler(SchedulerHandler):
    def get(self) -> None:
        self.write_json(self.scheduler.node_list())


class NodeHandler(SchedulerHandler):
    def put(self, name: str) -> None:
        access.require_node(self.who(), name, "register")
        node = NodeRegistration.from_json(self.json_body())
        check_protocol(node.protocol, f"node {name}", self.surface)
        gpus = [g.to_json() for g in node.gpus]
        self.scheduler.register_node(name, node.url, gpus, node.share, node.labels)
        self.write_json({"name": name})


class HeartbeatHandler(SchedulerHandler):
    def post(self, name: str) -> None:
        access.require_node(self.who(), name, "send the heartbeat of")
        beat = Heartbeat.from_json(self.json_body())
        end = self.scheduler.heartbeat(
            name,
            list(beat.sessions),
            beat.stats.to_json(),
            set(beat.warm),
            [lease.to_json() for lease in beat.leases],
        )
        self.write_json({"end": end, "reasons": self.scheduler.end_reasons(end)})


class SessionsHandler(SchedulerHandler):
    def get(self) -> None:
        everything = self.get_argument("all", "") in ("1", "true")
        views = self.scheduler.sessions(live_only=not everything)
        self.write_json([self.shown(v) for v in views])

    def post(self) -> None:
        asked = SessionSubmission.from_json(self.json_body())
        owner = access.submitter(self.who(), asked, self.scheduler.user_max_priority)
        session = self.scheduler.submit(
            asked.request,
            user=asked.user,
            host=self.who().machine if owner else asked.host,
            group=owner.group if owner else asked.group,
            notebook=asked.notebook,
            owner=owner,
        )
        self.write_json(session, status=201)


class SessionHandler(SchedulerHandler):
    def get(self, session_id: str) -> None:
        session = self.scheduler.find(session_id)
        if not access.may_read(self.who(), session):
            access.require_manager(self.who(), session, "read")
        self.write_json(self.scheduler.describe(session_id))

    def delete(self, session_id: str) -> None:
        session = self.scheduler.find(session_id)
        if not self.who().is_node(session.node):  # the node reports a session it ended
            access.require_manager(self.who(), session, "end")
        reason = self.get_argument("reason", "released by the client")
        self.write_json(self.scheduler.end(session_id, reason[:500]))


class RenewHandler(SchedulerHandler):
    def post(self, session_id: str) -> None:
        access.require_manager(self.who(), self.scheduler.find(session_id), "renew")
        self.write_json(self.scheduler.renew(session_id))


class RunningHandler(SchedulerHandler):
    def post(self, session_id: str) -> None:
        node = text_field(self.body_object(), "node")
        access.require_node(self.who(), node, "report sessions running on")
        self.write_json(self.scheduler.mark_running(session_id, node))


class PoolHandler(SchedulerHandler):
    def get(self) -> None:
        pool = self.scheduler.pool()
        pool["queue"] = [self.shown(v) for v in pool["queue"]]
        self.write_json(pool)


class UsageHandler(SchedulerHandler):
    def get(self) -> None:
        try:
            window = float(self.get_argument("since", str(7 * 24 * 3600)))
        except ValueError:
            raise RequestError("'since' must be a number of seconds") from None
        if not (math.isfinite(window) and window >= 0):
            raise RequestError("'since' must be a number of seconds, 0 or more")
        since = self.scheduler.clock() - window
        self.write_json({"since": since, "users": usage_report(self.scheduler, since)})


class MetricsHandler(SchedulerHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(metrics_text(self.scheduler))


class SpecHandler(JsonHandler):
    """The OpenAPI description; public, like the API's documentation."""

    def get(self) -> None:
        self.write_json(SPEC)


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise NotFoundError(f"no such endpoint: {self.request.method} {self.request.path}")


def handlers(
    scheduler: Scheduler, authenticate: Authenticator
) -> list[tuple[str, type, dict[str, Any]]]:
    kw = {"scheduler": scheduler, "authenticate": authenticate}
    name = f"({NODE_NAME_PATTERN})"
    sid = f"({SESSION_ID_PATTERN})"
    return [
        (r"/api/spec", SpecHandler, {}),
        (r"/api/pool", PoolHandler, kw),
        (r"/api/usage", UsageHandler, kw),
        (r"/metrics", MetricsHandler, kw),
        (r"/api/nodes", NodesHandler, kw),
        (rf"/api/nodes/{name}", NodeHandler, kw),
        (rf"/api/nodes/{name}/heartbeat", HeartbeatHandler, kw),
        (r"/api/sessions", SessionsHandler, kw),
        (rf"/api/sessions/{sid}", SessionHandler, kw),
        (rf"/api/sessions/{sid}/renew", RenewHandler, kw),
        (rf"/api/sessions/{sid}/running", RunningHandler, kw),
    ]

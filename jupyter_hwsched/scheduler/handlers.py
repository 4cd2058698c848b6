"""The scheduler's REST API: one handler class per resource, all through ``JsonHandler``.

Every body is read into a record of :mod:`jupyter_hwsched.protocol.records` before it reaches
the scheduler, so malformed input is a 400 that names the field, never a 500. The description
of this API is :mod:`jupyter_hwsched.protocol.openapi`, served at ``/api/spec``.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

from jupyter_hwsched.protocol.errors import HwschedError, NotFoundError, RequestError
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
from jupyter_hwsched.scheduler.commits import GroupCommit
from jupyter_hwsched.scheduler.core import Scheduler


class SchedulerHandler(JsonHandler):
    scheduler: Scheduler
    commits: GroupCommit | None = None  # None: every write is committed as it is made
    surface = "this scheduler"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each verb's refusal, too, waits for the changes made before it to be durable: a
        request may change the state and then be refused (a renewal that finds the lease
        run out ends the session, and says 410)."""
        super().__init_subclass__(**kwargs)
        for verb in ("get", "post", "put", "delete"):
            method = cls.__dict__.get(verb)
            if method is not None:
                setattr(cls, verb, _durable_refusals(method))

    async def reply(self, data: Any, status: int = 200) -> None:
        """Answer once every change made so far is durable (see commits.py): nobody reads,
        or is told of, a change a power cut could still take back."""
        if self.commits is not None:
            await self.commits.durable()
        self.write_json(data, status)

    def shown(self, view: dict[str, Any]) -> dict[str, Any]:
        """A session's view as this caller may see it."""
        return view if access.may_read_view(self.who(), view) else access.public_view(view)


def _durable_refusals(method: Any) -> Any:
    @functools.wraps(method)
    async def verb(self: SchedulerHandler, *args: Any, **kwargs: Any) -> None:
        try:
            result = method(self, *args, **kwargs)
            if inspect.isawaitable(result):
                await result
        except HwschedError:
            if self.commits is not None:
                await self.commits.durable()
            raise

    return verb


class NodesHandler(SchedulerHandler):
    async def get(self) -> None:
        await self.reply(self.scheduler.node_list())


class NodeHandler(SchedulerHandler):
    async def put(self, name: str) -> None:
        access.require_node(self.who(), name, "register")
        node = NodeRegistration.from_json(self.json_body())
        check_protocol(node.protocol, f"node {name}", self.surface)
        gpus = [g.to_json() for g in node.gpus]
        self.scheduler.register_node(name, node.url, gpus, node.share, node.labels)
        await self.reply({"name": name})


class HeartbeatHandler(SchedulerHandler):
    async def post(self, name: str) -> None:
        access.require_node(self.who(), name, "send the heartbeat of")
        beat = Heartbeat.from_json(self.json_body())
        end = self.scheduler.heartbeat(
            name,
            list(beat.sessions),
            beat.stats.to_json(),
            set(beat.warm),
            [lease.to_json() for lease in beat.leases],
        )
        await self.reply({"end": end, "reasons": self.scheduler.end_reasons(end)})


class SessionsHandler(SchedulerHandler):
    async def get(self) -> None:
        everything = self.get_argument("all", "") in ("1", "true")
        views = self.scheduler.sessions(live_only=not everything)
        await self.reply([self.shown(v) for v in views])

    async def post(self) -> None:
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
        await self.reply(session, status=201)


class SessionHandler(SchedulerHandler):
    async def get(self, session_id: str) -> None:
        session = self.scheduler.find(session_id)
        if not access.may_read(self.who(), session):
            access.require_manager(self.who(), session, "read")
        await self.reply(self.scheduler.describe(session_id))

    async def delete(self, session_id: str) -> None:
        session = self.scheduler.find(session_id)
        if not self.who().is_node(session.node):  # the node reports a session it ended
            access.require_manager(self.who(), session, "end")
        reason = self.get_argument("reason", "released by the client")
        await self.reply(self.scheduler.end(session_id, reason[:500]))


class RenewHandler(SchedulerHandler):
    async def post(self, session_id: str) -> None:
        access.require_manager(self.who(), self.scheduler.find(session_id), "renew")
        await self.reply(self.scheduler.renew(session_id))


class RunningHandler(SchedulerHandler):
    async def post(self, session_id: str) -> None:
        node = text_field(self.body_object(), "node")
        access.require_node(self.who(), node, "report sessions running on")
        await self.reply(self.scheduler.mark_running(session_id, node))


class PoolHandler(SchedulerHandler):
    async def get(self) -> None:
        pool = self.scheduler.pool()
        pool["queue"] = [self.shown(v) for v in pool["queue"]]
        await self.reply(pool)


class UsageHandler(SchedulerHandler):
    async def get(self) -> None:
        try:
            window = float(self.get_argument("since", str(7 * 24 * 3600)))
        except ValueError:
            raise RequestError("'since' must be a number of seconds") from None
        if not (math.isfinite(window) and window >= 0):
            raise RequestError("'since' must be a number of seconds, 0 or more")
        since = self.scheduler.clock() - window
        await self.reply({"since": since, "users": usage_report(self.scheduler, since)})


class MetricsHandler(SchedulerHandler):
    async def get(self) -> None:
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
    scheduler: Scheduler, authenticate: Authenticator, commits: GroupCommit | None = None
) -> list[tuple[str, type, dict[str, Any]]]:
    kw = {"scheduler": scheduler, "authenticate": authenticate, "commits": commits}
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

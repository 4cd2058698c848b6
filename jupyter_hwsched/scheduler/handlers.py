"""The scheduler's REST API: one handler class per resource, all through ``JsonHandler``."""

from __future__ import annotations

from typing import Any

from ..errors import RequestError
from ..request import HardwareRequest
from ..web import JsonHandler
from .accounting import metrics_text, usage_report
from .core import Scheduler


class SchedulerHandler(JsonHandler):
    scheduler: Scheduler

    def field(self, body: dict[str, Any], name: str, kind: type = str) -> Any:
        value = body.get(name)
        if not isinstance(value, kind):
            raise RequestError(f"field {name!r} must be a {kind.__name__}")
        return value


class NodesHandler(SchedulerHandler):
    def get(self) -> None:
        self.write_json(self.scheduler.pool()["nodes"])


class NodeHandler(SchedulerHandler):
    def put(self, name: str) -> None:
        body = self.json_body()
        gpus = self.field(body, "gpus", list)
        for gpu in gpus:
            if not isinstance(gpu, dict) or not {"index", "model", "memory"} <= set(gpu):
                raise RequestError("each GPU needs index, model and memory")
        share = body.get("share", True)
        if not isinstance(share, bool):
            raise RequestError("field 'share' must be true or false")
        labels = body.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise RequestError("field 'labels' must be a list of strings")
        self.scheduler.register_node(name, self.field(body, "url"), gpus, share, labels)
        self.write_json({"name": name})


class HeartbeatHandler(SchedulerHandler):
    def post(self, name: str) -> None:
        body = self.json_body()
        live = self.field(body, "sessions", list)
        stats = body.get("stats") or {}
        self.write_json({"end": self.scheduler.heartbeat(name, live, stats)})


class SessionsHandler(SchedulerHandler):
    def get(self) -> None:
        everything = self.get_argument("all", "") in ("1", "true")
        self.write_json(self.scheduler.sessions(live_only=not everything))

    def post(self) -> None:
        body = self.json_body()
        request = HardwareRequest.from_json(body.get("request", {}))
        group = body.get("group", "")
        if not isinstance(group, str):
            raise RequestError("field 'group' must be a string")
        session = self.scheduler.submit(
            request, user=self.field(body, "user"), host=self.field(body, "host"), group=group
        )
        self.write_json(session, status=201)


class SessionHandler(SchedulerHandler):
    def get(self, session_id: str) -> None:
        self.write_json(self.scheduler.describe(session_id))

    def delete(self, session_id: str) -> None:
        reason = self.get_argument("reason", "released by the client")
        self.write_json(self.scheduler.end(session_id, reason[:500]))


class RenewHandler(SchedulerHandler):
    def post(self, session_id: str) -> None:
        self.write_json(self.scheduler.renew(session_id))


class RunningHandler(SchedulerHandler):
    def post(self, session_id: str) -> None:
        body = self.json_body()
        self.write_json(self.scheduler.mark_running(session_id, self.field(body, "node")))


class UsageHandler(SchedulerHandler):
    def get(self) -> None:
        try:
            window = float(self.get_argument("since", str(7 * 24 * 3600)))
        except ValueError:
            raise RequestError("'since' must be a number of seconds") from None
        if not window >= 0:
            raise RequestError("'since' must be a number of seconds, 0 or more")
        since = self.scheduler.clock() - window
        self.write_json({"since": since, "users": usage_report(self.scheduler, since)})


class MetricsHandler(SchedulerHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(metrics_text(self.scheduler))


class PoolHandler(SchedulerHandler):
    def get(self) -> None:
        self.write_json(self.scheduler.pool())


def handlers(scheduler: Scheduler, token: str) -> list[tuple[str, type, dict[str, Any]]]:
    kw = {"scheduler": scheduler, "token": token}
    return [
        (r"/api/pool", PoolHandler, kw),
        (r"/api/usage", UsageHandler, kw),
        (r"/metrics", MetricsHandler, kw),
        (r"/api/nodes", NodesHandler, kw),
        (r"/api/nodes/([\w.\-]+)", NodeHandler, kw),
        (r"/api/nodes/([\w.\-]+)/heartbeat", HeartbeatHandler, kw),
        (r"/api/sessions", SessionsHandler, kw),
        (r"/api/sessions/(\w+)", SessionHandler, kw),
        (r"/api/sessions/(\w+)/renew", RenewHandler, kw),
        (r"/api/sessions/(\w+)/running", RunningHandler, kw),
    ]

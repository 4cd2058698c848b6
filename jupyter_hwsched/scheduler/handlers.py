"""The scheduler's REST API: one handler class per resource, all through ``JsonHandler``.

Every body is checked here before it reaches the scheduler, so malformed input is a 400 that
names the field, never a 500. The description of this API is ``openapi.py``, served at
``/api/spec``.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import NotFoundError, RequestError
from ..request import HardwareRequest
from ..web import JsonHandler
from .accounting import metrics_text, usage_report
from .core import Scheduler
from .openapi import SPEC

MAX_NAME = 200
MAX_PATH = 4096


class SchedulerHandler(JsonHandler):
    scheduler: Scheduler

    def body_object(self) -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def text(
        self, body: dict[str, Any], name: str, default: str | None = None, limit: int = MAX_NAME
    ) -> str:
        value = body.get(name, default)
        if not isinstance(value, str) or (default is None and not value) or len(value) > limit:
            raise RequestError(f"field {name!r} must be a non-empty string of at most {limit}")
        return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _gpu(gpu: Any) -> dict[str, Any]:
    if not isinstance(gpu, dict):
        raise RequestError("each GPU must be an object with index, model and memory")
    index, model, memory = gpu.get("index"), gpu.get("model"), gpu.get("memory")
    if not (isinstance(index, int) and not isinstance(index, bool) and index >= 0):
        raise RequestError("a GPU's index must be a whole number, 0 or more")
    if not isinstance(model, str) or not model or len(model) > MAX_NAME:
        raise RequestError("a GPU's model must be a non-empty string")
    if not (isinstance(memory, int) and not isinstance(memory, bool) and memory > 0):
        raise RequestError("a GPU's memory must be a positive number of bytes")
    links = gpu.get("links", [])
    if not isinstance(links, list) or not all(isinstance(x, int) for x in links):
        raise RequestError("a GPU's links must be a list of GPU indices")
    return gpu


class NodesHandler(SchedulerHandler):
    def get(self) -> None:
        self.write_json(self.scheduler.node_list())


class NodeHandler(SchedulerHandler):
    def put(self, name: str) -> None:
        body = self.body_object()
        gpus = body.get("gpus")
        if not isinstance(gpus, list):
            raise RequestError("field 'gpus' must be a list of GPUs")
        gpus = [_gpu(g) for g in gpus]
        if len({g["index"] for g in gpus}) != len(gpus):
            raise RequestError("GPU indices must be unique")
        share = body.get("share", True)
        if not isinstance(share, bool):
            raise RequestError("field 'share' must be true or false")
        labels = body.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise RequestError("field 'labels' must be a list of strings")
        self.scheduler.register_node(name, self.text(body, "url"), gpus, share, labels)
        self.write_json({"name": name})


class HeartbeatHandler(SchedulerHandler):
    def post(self, name: str) -> None:
        body = self.body_object()
        live = body.get("sessions")
        if not isinstance(live, list) or not all(isinstance(x, str) for x in live):
            raise RequestError("field 'sessions' must be a list of session ids")
        stats = body.get("stats", {})
        for key, unit in (("utilization", "percentages"), ("memory_used", "bytes")):
            per_gpu = stats.get(key, {}) if isinstance(stats, dict) else None
            if not isinstance(per_gpu, dict) or not all(_number(v) for v in per_gpu.values()):
                raise RequestError(f"field 'stats.{key}' must map GPU indices to {unit}")
        end = self.scheduler.heartbeat(name, live, stats)
        self.write_json({"end": end, "reasons": self.scheduler.end_reasons(end)})


class SessionsHandler(SchedulerHandler):
    def get(self) -> None:
        everything = self.get_argument("all", "") in ("1", "true")
        self.write_json(self.scheduler.sessions(live_only=not everything))

    def post(self) -> None:
        body = self.body_object()
        request = HardwareRequest.from_json(body.get("request", {}))
        session = self.scheduler.submit(
            request,
            user=self.text(body, "user"),
            host=self.text(body, "host"),
            group=self.text(body, "group", ""),
            notebook=self.text(body, "notebook", "", limit=MAX_PATH),
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
        body = self.body_object()
        self.write_json(self.scheduler.mark_running(session_id, self.text(body, "node")))


class PoolHandler(SchedulerHandler):
    def get(self) -> None:
        self.write_json(self.scheduler.pool())


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


def handlers(scheduler: Scheduler, token: str) -> list[tuple[str, type, dict[str, Any]]]:
    kw = {"scheduler": scheduler, "token": token}
    name = r"([\w.\-]{1,200})"
    sid = r"(\w{1,64})"
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

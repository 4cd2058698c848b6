"""The REST handlers JupyterLab talks to, under ``/hwsched/api``.

Every verb is ``@web.authenticated``, but for the API's OpenAPI description
(:mod:`jupyter_hwsched.protocol.openapi.serverext`, at ``/hwsched/api/spec``), which is public
like the scheduler's; a path under ``/hwsched/api`` that no route takes is a JSON 404. Errors
go through the package's one mapping (:class:`ErrorMapping`): its exceptions become their
status with ``{"message", "status"}``, and a scheduler that cannot be reached a 503 that says
what to check. This surface differs in one thing, in :meth:`HwschedAPIHandler.error_reply`: a
scheduler that refuses this server's token is a 502 that names the setting (never a 401, which
JupyterLab would read as the user being signed out), so that the front end tells it apart from
an unreachable scheduler.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from tornado import web

from jupyter_hwsched.developer.kernel import registry
from jupyter_hwsched.developer.serverext.cluster import ClusterService
from jupyter_hwsched.developer.serverext.runs import RunService
from jupyter_hwsched.protocol.errors import AuthError, HwschedError, NotFoundError, RequestError
from jupyter_hwsched.protocol.handler import ErrorMapping
from jupyter_hwsched.protocol.openapi.serverext import (
    SCHEDULER_REFUSED,
    SPEC_PATH,
    serverext_spec,
)
from jupyter_hwsched.protocol.records import MAX_PATH, SESSION_ID_PATTERN


class HwschedAPIHandler(ErrorMapping, APIHandler):
    """JSON in and out, through the package's one error mapping."""

    surface = "this Jupyter server"

    @property
    def cluster(self) -> ClusterService:
        service: ClusterService = self.settings["hwsched_cluster"]
        return service

    @property
    def runs(self) -> RunService:
        service: RunService = self.settings["hwsched_runs"]
        return service

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def error_reply(self, exc: HwschedError) -> tuple[int, dict[str, Any]]:
        status, message = exc.status, exc.message
        if isinstance(exc, AuthError):
            status = SCHEDULER_REFUSED
            message = (
                "the GPU scheduler refused this Jupyter server's token: set "
                "c.HwschedServerApp.scheduler_token (or HWSCHED_TOKEN before starting "
                "JupyterLab) to the token the pool was started with"
            )
        return status, {"message": message, "status": status}


class PoolHandler(HwschedAPIHandler):
    @web.authenticated
    async def get(self) -> None:
        self.reply(await self.cluster.pool())


class SessionsHandler(HwschedAPIHandler):
    @web.authenticated
    async def get(self) -> None:
        self.reply(await self.cluster.sessions(self.get_query_argument("path", None)))


class SessionHandler(HwschedAPIHandler):
    @web.authenticated
    async def delete(self, session_id: str) -> None:
        if not re.fullmatch(SESSION_ID_PATTERN, session_id):
            raise NotFoundError(f"no session {session_id[:100]!r}: not a session id")
        self.reply(await self.cluster.cancel(session_id))


def notebook_path(path: Any) -> str:
    """A run's notebook: a path under the server's root, as JupyterLab names it."""
    if not isinstance(path, str) or not path.strip("/"):
        raise RequestError("field 'path' must be the notebook's path")
    if len(path) > MAX_PATH or "\x00" in path:
        raise RequestError(
            f"field 'path' must be a path of at most {MAX_PATH} characters, with no NUL byte"
        )
    if ".." in path.split("/"):
        raise RequestError(
            f"field 'path' {path[:200]!r} climbs out with '..': give the notebook's path "
            "under the server's root, as JupyterLab shows it"
        )
    return path


class RunsHandler(HwschedAPIHandler):
    @web.authenticated
    def post(self) -> None:
        body = self.body_object()
        path = notebook_path(body.get("path"))
        started = self.runs.start(
            path,
            body.get("gpus", 1),
            body.get("gpu_type"),
            body.get("gpu_mem"),
            body.get("shared", False),
        )
        self.reply(started, status=202)


class RunHandler(HwschedAPIHandler):
    @web.authenticated
    def get(self, run_id: str) -> None:
        self.reply(self.runs.get(run_id))

    @web.authenticated
    async def delete(self, run_id: str) -> None:
        self.reply(await self.runs.end(run_id))


class KernelProgressHandler(HwschedAPIHandler):
    """The start phases of a "Remote GPU (shared env)" kernel, by its id or its notebook."""

    @web.authenticated
    def get(self, kernel_id: str | None = None) -> None:
        if kernel_id is None:
            path = self.get_query_argument("path", "")
            kernel_id = registry.latest_for(self.cluster.absolute(path)) if path else None
        events = registry.PROGRESS.get(kernel_id, []) if kernel_id else []
        self.reply({"kernel_id": kernel_id, "events": events})


class SpecHandler(HwschedAPIHandler):
    """This API's OpenAPI description; public, like an API's documentation."""

    @allow_unauthenticated
    def get(self) -> None:
        self.reply(serverext_spec(self.base_url))


class NotFoundHandler(ErrorMapping):
    """Anything else under the API's base: a JSON 404, not the server's HTML page."""

    def check_xsrf_cookie(self) -> None:
        return None  # nothing here acts on a request, so nothing can be forged

    def prepare(self) -> None:  # before any check of the caller: there is nothing here
        raise NotFoundError(f"no such endpoint: {self.request.method} {self.request.path}")


HANDLERS: list[tuple[str, type[web.RequestHandler]]] = [
    (SPEC_PATH, SpecHandler),
    (r"/hwsched/api/pool", PoolHandler),
    (r"/hwsched/api/sessions", SessionsHandler),
    (r"/hwsched/api/sessions/([^/]+)", SessionHandler),
    (r"/hwsched/api/runs", RunsHandler),
    (r"/hwsched/api/runs/([^/]+)", RunHandler),
    (r"/hwsched/api/kernels/progress", KernelProgressHandler),
    (r"/hwsched/api/kernels/([^/]+)/progress", KernelProgressHandler),
    (r"/hwsched/api(?:/.*)?", NotFoundHandler),  # last: what no route above takes
]

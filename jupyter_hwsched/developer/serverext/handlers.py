"""The REST handlers JupyterLab talks to, under ``/hwsched/api``.

Every verb is ``@web.authenticated``. Errors go through the package's one mapping
(:class:`ErrorMapping`): its exceptions become their status with ``{"message", "status"}``,
and a scheduler that cannot be reached a 503 that says what to check. This surface differs in
one thing, in :meth:`HwschedAPIHandler.error_reply`: a scheduler that refuses this server's
token is a 502 that names the setting (never a 401, which JupyterLab would read as the user
being signed out), so that the front end tells it apart from an unreachable scheduler.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

from jupyter_hwsched.developer.kernel import registry
from jupyter_hwsched.developer.serverext.cluster import ClusterService
from jupyter_hwsched.developer.serverext.runs import RunService
from jupyter_hwsched.protocol.errors import AuthError, HwschedError, RequestError
from jupyter_hwsched.protocol.handler import ErrorMapping

#: the status of a scheduler that refused this server's token
SCHEDULER_REFUSED = 502


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
        self.reply(await self.cluster.cancel(session_id))


class RunsHandler(HwschedAPIHandler):
    @web.authenticated
    def post(self) -> None:
        body = self.body_object()
        path = body.get("path")
        if not isinstance(path, str) or not path.strip("/"):
            raise RequestError("field 'path' must be the notebook's path")
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


HANDLERS: list[tuple[str, type[HwschedAPIHandler]]] = [
    (r"/hwsched/api/pool", PoolHandler),
    (r"/hwsched/api/sessions", SessionsHandler),
    (r"/hwsched/api/sessions/([^/]+)", SessionHandler),
    (r"/hwsched/api/runs", RunsHandler),
    (r"/hwsched/api/runs/([^/]+)", RunHandler),
    (r"/hwsched/api/kernels/progress", KernelProgressHandler),
    (r"/hwsched/api/kernels/([^/]+)/progress", KernelProgressHandler),
]

"""The REST handlers JupyterLab talks to, under ``/hwsched/api``.

Every verb is ``@web.authenticated``. Errors are mapped in one place,
:meth:`HwschedAPIHandler.write_error`: the package's exceptions become their status with
``{"message": ...}``, a scheduler that cannot be reached a 503 that says what to check, and a
scheduler that refuses this server's token a 502 (never a 401, which JupyterLab would read as
the user being signed out).
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import AuthError, HwschedError, RequestError
from ..kernel import registry
from .cluster import ClusterService
from .runs import RunService

#: the package's errors as this server reports them, where that differs from their own status
STATUS_FOR: dict[type[HwschedError], int] = {AuthError: 502}


class HwschedAPIHandler(APIHandler):
    """JSON in and out, and the one error mapping."""

    @property
    def cluster(self) -> ClusterService:
        service: ClusterService = self.settings["hwsched_cluster"]
        return service

    @property
    def runs(self) -> RunService:
        service: RunService = self.settings["hwsched_runs"]
        return service

    def body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise RequestError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, HwschedError):
            super().write_error(status_code, **kwargs)
            return
        status = STATUS_FOR.get(type(exc), exc.status)
        message = exc.message
        if isinstance(exc, AuthError):
            message = (
                f"the GPU scheduler refused this Jupyter server's token ({exc.message}); set "
                "c.HwschedServerApp.scheduler_token"
            )
        self.set_status(status)
        self.finish(json.dumps({"message": message, "status": status}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HwschedError):
            self.log.info("%s %s: %s", self.request.method, self.request.path, value)
        else:
            super().log_exception(typ, value, tb)


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
        body = self.body()
        path = body.get("path")
        if not isinstance(path, str) or not path.strip("/"):
            raise RequestError("field 'path' must be the notebook's path")
        self.reply(self.runs.start(path, body.get("gpus", 1), body.get("gpu_type")), status=202)


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

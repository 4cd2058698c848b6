""" "Run on GPU" from JupyterLab: a remote kernel started for a run, in the background.

``start`` returns at once with the kernel's id while the kernel waits in the queue, so the
front end can show the phases (from :mod:`jupyter_hwsched.developer.kernel.registry`) and the
user can cancel before a GPU is found. Once the kernel is ready the front end connects to it like to
any kernel, runs the cells, and ends the run, which shuts the kernel down and frees the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jupyter_hwsched.developer.kernel import registry
from jupyter_hwsched.protocol.errors import HwschedError, NotFoundError
from jupyter_hwsched.protocol.request import HardwareRequest, make_request

KERNEL_NAME = "hwsched-remote"


@dataclass
class Run:
    id: str  # also the kernel's id (a dashed UUID: the kernels API routes only those)
    path: str  # the notebook, relative to the server's root
    request: HardwareRequest
    created: float = field(default_factory=time.time)
    state: str = "starting"  # starting -> ready -> ended, or failed
    error: str = ""
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kernel_id": self.id,
            "kernel_name": KERNEL_NAME,
            "path": self.path,
            "request": {"gpus": self.request.gpus, "gpu_type": self.request.gpu_type},
            "created": self.created,
            "state": self.state,
            "error": self.error,
            "events": registry.PROGRESS.get(self.id, []),
        }


class RunService:
    """The runs of one Jupyter server, over its kernel manager."""

    def __init__(self, kernel_manager: Any, root_dir: str) -> None:
        self.kernels = kernel_manager
        self.root_dir = os.path.abspath(root_dir)
        self.runs: dict[str, Run] = {}

    def start(
        self,
        path: str,
        gpus: Any,
        gpu_type: Any = None,
        gpu_mem: Any = None,
        shared: Any = False,
    ) -> dict[str, Any]:
        """Start a notebook's kernel on pooled GPUs: whole ones, or (``shared``) ``gpu_mem``
        of one GPU whose cells take turns with other kernels'."""
        request = make_request(  # RequestError: a 400
            gpus=gpus, gpu_type=gpu_type or None, gpu_mem=gpu_mem or None, shared=shared
        )
        path = path.strip("/")
        run = Run(str(uuid.uuid4()), path, request)
        run.task = asyncio.create_task(self._start(run))
        self.runs[run.id] = run
        return run.view()

    async def _start(self, run: Run) -> None:
        directory = os.path.dirname(run.path)
        env = {**os.environ, "JPY_SESSION_NAME": os.path.join(self.root_dir, run.path)}
        try:
            await self.kernels.start_kernel(
                kernel_id=run.id,
                kernel_name=KERNEL_NAME,
                path=directory,
                env=env,
                hwsched_request=run.request,
            )
        except asyncio.CancelledError:
            run.state, run.error = "ended", "cancelled before it started"
            self._forget_pending(run.id)
            raise
        except Exception as exc:
            message = exc.message if isinstance(exc, HwschedError) else str(exc)
            run.state, run.error = "failed", message or type(exc).__name__
            self._forget_pending(run.id)
            return
        run.state = "ready"

    def _forget_pending(self, kernel_id: str) -> None:
        """jupyter_client keeps a failed start's task as pending; nothing is left to wait for."""
        pending = getattr(self.kernels, "_pending_kernels", {})
        pending.pop(kernel_id, None)

    def get(self, run_id: str) -> dict[str, Any]:
        return self._run(run_id).view()

    def _run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id} in this Jupyter server")
        return run

    async def end(self, run_id: str) -> dict[str, Any]:
        """Cancel a run still in the queue, or shut its kernel down: the GPU goes back."""
        run = self._run(run_id)
        if run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        if run_id in self.kernels:
            await self.kernels.shutdown_kernel(run_id, now=True)
        if run.state in ("starting", "ready"):
            run.state = "ended"
        view = run.view()
        registry.forget(run_id)
        self.runs.pop(run_id, None)  # gone already if another end came in meanwhile
        return view

    async def end_all(self) -> None:
        for run_id in list(self.runs):
            with contextlib.suppress(HwschedError):
                await self.end(run_id)

"""The agent's kernel manager: a kernel's activity read from each message's header alone.

jupyter_server watches every kernel's iopub to keep ``last_activity`` and ``execution_state``
(what ``GET /api/kernels`` reports and culling reads). Its watcher deserializes each message
whole, dates parsed, and a status message twice, on the same event loop that passes the
kernel's messages on to the client: measured with ``benchmarks/kernel_roundtrip.py`` under
a profiler, that was the agent's largest cost per cell. This watcher parses the frames it
reads (header, parent header, and a status message's content) with ``json.loads`` and keeps
the same rules.

The signature is not checked here: the kernel's channels are unix sockets in the session's
run directory, and what this records is a report, not a permission.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jupyter_client.provisioning.factory import KernelProvisionerFactory as KPF
from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class NodeKernelManager(AsyncMappingKernelManager):
    #: told (kernel id, request id) when a kernel goes idle after an execute request, and
    #: (kernel id) when a kernel restarts: the cell gate of shared GPUs (agent/sharing.py)
    on_cell_done: Callable[[str, str], None] | None = None
    on_restart: Callable[[str], None] | None = None

    async def _async_restart_kernel(self, kernel_id: str, now: bool = False) -> Any:
        """jupyter_server's restart (its answer: a future of the new kernel's first reply),
        the gate of shared GPUs told first."""
        if self.on_restart is not None:
            self.on_restart(kernel_id)
        return await super()._async_restart_kernel(kernel_id, now=now)  # type: ignore[no-untyped-call]

    restart_kernel = _async_restart_kernel  # type: ignore[assignment]

    async def adopt(self, kernel_id: str, kernel_name: str, launch: dict[str, Any]) -> None:
        """Take back a kernel an earlier agent started (agent/recovery.py): a manager for it
        under its own id, its connection read from the file the earlier agent wrote, its
        provisioner (``launch["hwsched_session"]``'s) told the process, then what
        jupyter_server does once a kernel it started is ready: its activity watched, its
        death noticed, and restarts as for any other kernel."""
        session = launch["hwsched_session"]
        process = launch.pop("hwsched_process")
        if kernel_id in self:
            raise RuntimeError(f"kernel {kernel_id} is already known")
        km = self.kernel_manager_factory(
            connection_file=str(session.base / f"agent-kernel-{kernel_id}.json"),
            parent=self,
            log=self.log,
            kernel_name=kernel_name,
            kernel_spec_manager=self.kernel_spec_manager,
        )
        km.load_connection_file()
        km.kernel_id = kernel_id
        km.provisioner = KPF.instance(parent=self).create_provisioner_instance(
            kernel_id, km.kernel_spec, parent=km
        )
        km.provisioner.session = session
        km.provisioner.proc = process
        km.provisioner.pid = process.pid
        km.provisioner.connection_info = km.get_connection_info()
        km._launch_args = dict(launch)  # what a restart starts it with again
        km._attempted_start = True
        km.ready.set_result(None)
        if await km.provisioner.poll() is not None:
            raise RuntimeError("the kernel process has exited")
        self._kernels[kernel_id] = km
        self._kernel_connections[kernel_id] = 0
        km.execution_state = "idle"
        self._kernel_ports[kernel_id] = km.ports
        self.start_watching_activity(kernel_id)
        self.add_restart_callback(
            kernel_id,
            lambda: self._handle_kernel_died(kernel_id),  # type: ignore[no-untyped-call]
            "dead",
        )
        km.autorestart = True
        km.start_restarter()
        if not self._initialized_culler:
            self.initialize_culler()  # type: ignore[no-untyped-call]

    def start_watching_activity(self, kernel_id: str) -> None:
        kernel = self._kernels[kernel_id]
        kernel.reason = ""
        kernel.last_activity = utcnow()
        kernel._activity_stream = kernel.connect_iopub()
        split = kernel.session.feed_identities

        def record_activity(msg_list: list[Any]) -> None:
            _, frames = split(msg_list)  # signature, header, parent header, metadata, content
            if len(frames) < 5:
                return
            msg_type = json.loads(frames[1]).get("msg_type")
            parent = json.loads(frames[2])
            parent_type = parent.get("msg_type")
            tracked = self.track_message_type(parent_type)  # type: ignore[no-untyped-call]
            mine = self.track_message_type(msg_type)  # type: ignore[no-untyped-call]
            if mine or tracked or kernel.execution_state == "busy":
                self.last_kernel_activity = kernel.last_activity = utcnow()
            if msg_type == "status":
                state = json.loads(frames[4]).get("execution_state")
                if tracked:
                    kernel.execution_state = state
                elif kernel.execution_state == "starting" and state != "starting":
                    kernel.execution_state = "idle"  # jupyter_server's own normalization
                done = state == "idle" and parent_type == "execute_request"
                if done and self.on_cell_done is not None:
                    self.on_cell_done(kernel_id, str(parent.get("msg_id", "")))

        kernel._activity_stream.on_recv(record_activity)

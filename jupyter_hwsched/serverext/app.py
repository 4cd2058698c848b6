"""``jupyter_hwsched`` as a jupyter_server extension (enabled when the package is installed).

- ``GET /hwsched/kernels/{kernel_id}/progress``: the start phases of a "Remote GPU (shared
  env)" kernel (queued with position and reason, placed on which node and GPUs, ready), so the
  front end can show them instead of a silent spinner.
- At start, kernels whose remote sessions outlived the previous server run are taken over
  again, under their old kernel ids, with the remote kernel's state intact; at stop, remote
  kernels are detached from rather than released, so a restart within the lease keeps them.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import web

from ..kernel import registry


class ProgressHandler(APIHandler):
    @web.authenticated
    def get(self, kernel_id: str) -> None:
        self.finish(
            json.dumps({"kernel_id": kernel_id, "events": registry.PROGRESS.get(kernel_id, [])})
        )


class HwschedServerApp(ExtensionApp):
    name = "jupyter_hwsched"

    def initialize_handlers(self) -> None:
        self.handlers.extend([(r"/hwsched/kernels/([^/]+)/progress", ProgressHandler)])

    def on_a_node(self) -> bool:
        """Whether this server is a node agent (which runs no remote kernels of its own)."""
        assert self.serverapp is not None
        return "hwsched_agent" in self.serverapp.web_app.settings

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if self.on_a_node():
            return
        registry.KEEP_ON_EXIT["active"] = False
        for kernel_id, state in registry.saved().items():
            try:
                await serverapp.kernel_manager.start_kernel(
                    kernel_id=kernel_id, kernel_name="hwsched-remote", hwsched_attach=state
                )
                self.log.info("Remote GPU kernel %s: attached again after a restart", kernel_id)
            except Exception as exc:  # gone while we were away: nothing to take over
                self.log.info("Remote GPU kernel %s is gone (%s)", kernel_id, exc)
                registry.forget(kernel_id)

    async def stop_extension(self) -> None:
        if not self.on_a_node():
            registry.KEEP_ON_EXIT["active"] = True

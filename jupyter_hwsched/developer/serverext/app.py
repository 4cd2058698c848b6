"""``jupyter_hwsched`` as a jupyter_server extension (enabled when the package is installed).

It serves JupyterLab's GPU features (see :mod:`.handlers`): the pool with live GPU use and
the queue, the user's sessions with cancel, "Run on GPU" runs, and the start phases of
"Remote GPU (shared env)" kernels. At start, kernels whose remote sessions outlived the
previous server run are taken over again, under their old kernel ids, with the remote
kernel's state intact; at stop, remote kernels are detached from rather than released, so a
restart within the lease keeps them.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Unicode

from jupyter_hwsched.developer.kernel import registry
from jupyter_hwsched.developer.serverext.cluster import ClusterService
from jupyter_hwsched.developer.serverext.handlers import HANDLERS
from jupyter_hwsched.developer.serverext.runs import RunService
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.clients import SchedulerClient


class HwschedServerApp(ExtensionApp):
    name = "jupyter_hwsched"
    description = "GPU pool features for JupyterLab: Run on GPU, the GPU cluster sidebar"

    scheduler_url = Unicode(
        config=True,
        help="The GPU scheduler's URL. Default: c.HwschedClient.url, HWSCHED_URL, or the pool "
        "that 'hwsched up' started for this user (looked up until one is found).",
    )
    scheduler_token = Unicode(
        config=True,
        help="The GPU scheduler's token. Default: c.HwschedClient.token, HWSCHED_TOKEN, or "
        "the pool that 'hwsched up' started for this user.",
    )

    def locate_scheduler(self) -> SchedulerClient | None:
        """This config's scheduler, else the client's settings (environment, discovery file);
        None while no pool can be found."""
        client = HwschedClient(parent=self.serverapp)
        if self.scheduler_url:
            client.url = self.scheduler_url
        if self.scheduler_token:
            client.token = self.scheduler_token
        return client.scheduler() if client.url else None

    def on_a_node(self) -> bool:
        """Whether this server is a node agent (which runs no remote kernels of its own)."""
        assert self.serverapp is not None
        return "hwsched_node" in self.serverapp.web_app.settings

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        root = self.serverapp.root_dir
        kernels = self.serverapp.kernel_manager
        self.runs = RunService(kernels, root)
        self.cluster = ClusterService(self.locate_scheduler, root, self._release_kernel)
        self.settings.update(hwsched_cluster=self.cluster, hwsched_runs=self.runs)

    def initialize_handlers(self) -> None:
        self.handlers.extend(HANDLERS)

    async def _release_kernel(self, session_id: str) -> bool:
        """Shut down the kernel of this server that holds a session, if one does."""
        assert self.serverapp is not None
        kernels = self.serverapp.kernel_manager
        for kernel_id in list(kernels.list_kernel_ids()):
            provisioner = getattr(kernels.get_kernel(kernel_id), "provisioner", None)
            remote = getattr(provisioner, "remote", None)
            if remote is not None and remote.id == session_id:
                if kernel_id in self.runs.runs:
                    await self.runs.end(kernel_id)
                else:
                    await kernels.shutdown_kernel(kernel_id, now=True)
                return True
        return False

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
        if self.on_a_node():
            return
        await self.runs.end_all()  # a run belongs to the page that started it
        self.cluster.close()
        registry.KEEP_ON_EXIT["active"] = True

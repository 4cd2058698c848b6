"""A kernel provisioner that starts kernels inside a session's container.

The node agent's jupyter_server asks for a ``hwsched-container`` kernel with the session in
the start arguments; this provisioner writes the connection file into the session's run
directory (shown read-only in the container), starts the developer's own Python there as the
developer, and answers poll/signal/kill for that process. Ports and the connection file are
prepared exactly as for a local kernel, because with host networking the kernel is local to
the node.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING, Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from jupyter_hwsched.agent.runner import ExecProcess
from jupyter_hwsched.protocol.errors import RequestError

if TYPE_CHECKING:
    from jupyter_hwsched.agent.sessions import NodeSession


class ContainerProvisioner(LocalProvisioner):
    """Kernel process inside the session container. Started only by the node agent."""

    session: NodeSession | None = None
    proc: ExecProcess | None = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        session = kwargs.pop("hwsched_session", None)
        if session is None:
            raise RequestError(
                "kernels on a GPU node start through the agent's /hwsched/sessions endpoint"
            )
        self.session = session
        km = self.parent
        assert km is not None, "a provisioner always has its kernel manager as parent"
        name = f"kernel-{self.kernel_id}.json"
        km.connection_file = str(session.run_dir / name)
        km.ip = "127.0.0.1"
        kwargs = await super().pre_launch(**kwargs)
        os.chmod(km.connection_file, 0o400)
        os.chown(km.connection_file, session.uid, session.gid)
        inside = f"{session.runner.visible_run_dir(session.run_dir)}/{name}"
        kwargs["cmd"] = [arg.replace("{connection_file}", inside) for arg in session.spec.argv]
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        self.proc = await loop.run_in_executor(None, self.session.exec_kernel, cmd)
        self.pid = self.proc.pid
        return self.connection_info

    @property
    def has_process(self) -> bool:
        return self.proc is not None

    async def poll(self) -> int | None:
        if self.proc is None:
            return 0
        return self.proc.exit_code

    async def wait(self) -> int | None:
        while self.proc is not None and self.proc.exit_code is None:
            await asyncio.sleep(0.05)
        code = self.proc.exit_code if self.proc else None
        self.proc = None
        return code

    async def send_signal(self, signum: int) -> None:
        if self.proc is not None:
            self.proc.signal(signum)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if not restart and self.session is not None:
            for name in (f"kernel-{self.kernel_id}.json",):
                try:
                    (self.session.run_dir / name).unlink()
                except FileNotFoundError:
                    pass

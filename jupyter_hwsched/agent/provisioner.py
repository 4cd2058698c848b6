"""A kernel provisioner that starts kernels inside a session's container.

The node agent's jupyter_server asks for a ``hwsched-container`` kernel with the session in
the start arguments; this provisioner writes the connection file into the session's run
directory, starts the developer's own Python there as the developer, and answers
poll/signal/kill for that process.

The kernel's channels are unix sockets (ZMQ's ``ipc://`` transport) in the session's run
directory, never TCP ports: the container has no network of its own (``network_mode=none``)
and no other session's run directory, so only this node's agent, which sees every run
directory on its own disk, can reach a kernel. The agent's kernel manager holds the node's path
of the sockets; the connection file the kernel reads holds the same sockets as the container
sees them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import TYPE_CHECKING, Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from jupyter_hwsched.agent import recovery
from jupyter_hwsched.agent.relay import may_pause, running
from jupyter_hwsched.agent.runner import ExecProcess
from jupyter_hwsched.protocol.errors import RequestError

if TYPE_CHECKING:
    from jupyter_hwsched.agent.sessions import NodeSession


#: the stem of the kernel's socket files in the run directory: k-1 ... k-5
SOCKETS = "k"
#: longest path of a unix socket (sun_path less its terminating NUL) on Linux
MAX_SOCKET_PATH = 107


def _check_socket_path(stem: str) -> None:
    longest = f"{stem}-99"
    if len(longest.encode()) > MAX_SOCKET_PATH:
        raise RequestError(
            f"the node's state directory is too deep for a kernel's unix sockets ({longest} is "
            f"over {MAX_SOCKET_PATH} bytes): give the agent a shorter --state-dir"
        )


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
        km = self.parent
        assert km is not None, "a provisioner always has its kernel manager as parent"
        name = f"kernel-{self.kernel_id}.json"
        visible = session.runner.visible_run_dir(session.run_dir)
        # the manager's own connection file (the node's paths) stays outside the run directory;
        # jupyter_client rewrites it whenever it differs from what the provisioner returned
        km.connection_file = str(session.base / f"agent-{name}")
        if self.session is None:  # the first start, not a restart
            # a kernel that cannot start says why and ends its session (NodeService): no
            # restart loop. ServerKernels turns restarts on once the kernel has answered.
            km.autorestart = False
        km.transport = "ipc"
        km.cache_ports = False  # a port cache is for TCP
        km.ip = str(session.run_dir / SOCKETS)
        _check_socket_path(km.ip)
        self.session = session
        kwargs = await super().pre_launch(**kwargs)
        # the kernel's copy: the same sockets, at the path its container shows
        info = dict(self.connection_info)
        info["ip"] = f"{visible}/{SOCKETS}"
        info = {k: v.decode() if isinstance(v, bytes) else v for k, v in info.items()}
        own = session.run_dir / name
        own.unlink(missing_ok=True)
        # the developer owns the run directory: never follow a link they may have put there
        fd = os.open(own, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "w") as out:
            os.fchown(out.fileno(), session.uid, session.gid)
            json.dump(info, out)
        inside = f"{visible}/{name}"
        kwargs["cmd"] = [arg.replace("{connection_file}", inside) for arg in session.kernel_argv()]
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        await running(self.session)  # a restart may find the container paused
        try:
            self.proc = await loop.run_in_executor(None, self.session.exec_kernel, cmd)
        finally:
            may_pause(self.session)
        self.pid = self.proc.pid
        recovery.update_kernel(self.session, self.proc)  # a restart: the record names it
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
            if signum in (signal.SIGKILL, signal.SIGTERM) and self.session is not None:
                await running(self.session)  # a frozen kernel would not take it
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

"""``hwsched agent``: the node agent, a jupyter_server application.

jupyter_server already serves the Kernel Gateway API (``/api/kernels``, the channels
websocket, interrupt, restart) over any kernel provisioner, so the agent is a server extension
whose kernels the container provisioner launches. This module is wiring: its settings, the
:class:`NodeService` that holds the sessions and speaks with the scheduler, the periodic
heartbeat and share checks, and the handlers.
"""

from __future__ import annotations

import ast
import asyncio
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, List, Type, Unicode, default

from jupyter_hwsched.agent.cache import NodeCache
from jupyter_hwsched.agent.docker_runner import DockerRunner
from jupyter_hwsched.agent.gpus import discover
from jupyter_hwsched.agent.handlers import handlers, json_not_found
from jupyter_hwsched.agent.kernelspecs import CONTAINER_KERNEL
from jupyter_hwsched.agent.limits import SessionLimits
from jupyter_hwsched.agent.mount import DEFAULT_OPTIONS
from jupyter_hwsched.agent.process import pass_default_signals
from jupyter_hwsched.agent.runner import ExecProcess, Runner
from jupyter_hwsched.agent.service import NodeService
from jupyter_hwsched.agent.serving import AGENT_LIMITS, LimitSettings, limit_server
from jupyter_hwsched.agent.sessions import NodeSession
from jupyter_hwsched.agent.sharing import SharedGpus
from jupyter_hwsched.protocol import settings as env
from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import KernelStartError
from jupyter_hwsched.protocol.http import Credential
from jupyter_hwsched.protocol.identity import Signer, signed
from jupyter_hwsched.protocol.tls import is_loopback


class AgentApp(ExtensionApp, LimitSettings):
    limit_defaults = AGENT_LIMITS  # the server limits' settings: c.AgentApp.max_body_bytes...
    name = "hwsched_agent"
    description = "Serve this node's GPUs to the hwsched scheduler."
    load_other_extensions = False
    serverapp_config = {
        "open_browser": False,
        "allow_root": True,  # mounting, containers and signals need root on a GPU node
        "kernel_spec_manager_class": "jupyter_hwsched.agent.kernelspecs.NodeKernelSpecManager",
        "authorizer_class": "jupyter_hwsched.agent.authorizer.NodeAuthorizer",
        "identity_provider_class": "jupyter_hwsched.agent.authorizer.NodeIdentityProvider",
        "terminals_enabled": False,
        "kernel_websocket_connection_class": "jupyter_hwsched.agent.websocket.NoDelayConnection",
        "kernel_manager_class": "jupyter_hwsched.agent.kernels.NodeKernelManager",
    }

    node_name = Unicode(config=True, help="Name of this node in the pool (default: hostname).")
    scheduler_url = Unicode(config=True, help="The scheduler's URL (env HWSCHED_URL).")
    scheduler_token = Unicode(config=True, help="The scheduler's token (env HWSCHED_TOKEN).")
    public_url = Unicode(config=True, help="URL at which clients reach this agent.")
    ca_file = Unicode(
        config=True,
        help="The pool CA's certificate, to verify the scheduler over TLS (env HWSCHED_CA). "
        "The agent serves TLS itself with --ServerApp.certfile and --ServerApp.keyfile.",
    )
    simulate_gpus = Unicode(
        "",
        config=True,
        help="Serve simulated GPUs, e.g. 2xA100-80GB, on a machine where NVML finds none.",
    )
    simulate_if_no_gpu = Unicode(
        "", config=True, help="Simulated GPUs to serve only if NVML finds no GPU ('hwsched up')."
    )
    state_dir = Unicode(config=True, help="Directory for mounts and per-session files.")
    labels = List(
        Unicode(), [], config=True, help="Labels of this node, which requests can ask for (--node)."
    )
    heartbeat_interval = Float(2.0, config=True, help="Seconds between heartbeats.")
    allow_root = Bool(
        False,
        config=True,
        help="Run sessions whose developer is root (uid 0). Off on a shared node; 'hwsched up' "
        "turns it on, since there the developer and the node are the same machine.",
    )
    root_users = List(
        Unicode(),
        [],
        config=True,
        help="Users who may run work as root here, as the scheduler verified them: "
        "'root@dev-21' (where allow_root is off, as on a shared node).",
    )
    kernel_start_timeout = Float(
        300.0,
        config=True,
        help="Seconds a kernel may take to answer its first request (its imports arrive over "
        "the share). A kernel that exits sooner fails the start at once, with its first lines.",
    )
    limit_check_interval = Float(
        1.0, config=True, help="Seconds between checks of each session against its limits."
    )
    share_check_interval = Float(
        5.0, config=True, help="Seconds between checks that each session's share still answers."
    )
    runner_class = Type(
        DockerRunner,
        klass=Runner,
        config=True,
        help="What runs sessions: DockerRunner (default), or "
        "jupyter_hwsched.agent.host_runner.HostRunner on a GPU machine without a container "
        "engine that is also the developer's machine.",
    )
    sign_with_certificate = Bool(
        True,
        config=True,
        help="Sign the node's calls to the scheduler with its TLS certificate (a 'node' "
        "certificate from 'hwsched pki issue'), so that it can act only as itself. Off: the "
        "pool token, for a scheduler without a CA.",
    )
    sshfs_options = List(
        Unicode(),
        DEFAULT_OPTIONS,
        config=True,
        help="The sshfs -o options of every share's mount (setting it replaces the defaults).",
    )
    sshfs_extra_options = List(
        Unicode(),
        [],
        config=True,
        help="sshfs -o options added to sshfs_options, e.g. ProxyCommand=... (commas allowed).",
    )

    aliases = {
        "node-name": "AgentApp.node_name",
        "scheduler-url": "AgentApp.scheduler_url",
        "public-url": "AgentApp.public_url",
        "simulate-gpus": "AgentApp.simulate_gpus",
        "state-dir": "AgentApp.state_dir",
        "labels": "AgentApp.labels",
    }

    @classmethod
    def get_extension_package(cls) -> str:
        return "jupyter_hwsched.agent"

    @default("node_name")
    def _node_name_default(self) -> str:
        return socket.gethostname()

    @default("scheduler_url")
    def _url_default(self) -> str:
        return env.scheduler_url()

    @default("ca_file")
    def _ca_file_default(self) -> str:
        return env.ca_file()

    @default("scheduler_token")
    def _token_default(self) -> str:
        return env.scheduler_token()

    @default("state_dir")
    def _state_default(self) -> str:
        if os.geteuid() == 0:
            return "/var/lib/hwsched/agent"
        return str(Path.home() / ".local" / "state" / "hwsched" / "agent")

    def initialize_settings(self) -> None:
        passed = pass_default_signals()
        if passed:
            self.log.info("started ignoring %s: sessions get their default", ", ".join(passed))
        if not self.scheduler_url:
            self.log.critical("set --scheduler-url (or HWSCHED_URL): the node agent needs it")
            self.exit(2)
        server = self.serverapp
        assert server is not None, "an extension app is linked to its server"
        if not server.certfile and not is_loopback(server.ip) and not env.allow_insecure():
            self.log.critical(
                "refusing to serve plain HTTP on %s: set --ServerApp.certfile and "
                "--ServerApp.keyfile (see 'hwsched pki'), or %s=1 on a network you trust",
                server.ip or "every address",
                env.INSECURE_VARIABLE,
            )
            self.exit(2)
        try:
            self.node = NodeService(
                node_name=self.node_name,
                inventory=discover(self.simulate_gpus, self.node_name, self.simulate_if_no_gpu),
                runner=self.runner_class(parent=self),
                scheduler=SchedulerClient(self.scheduler_url, self.credential(), self.ca_file),
                kernels=ServerKernels(self),
                state_dir=Path(self.state_dir),
                sshfs_options=[*self.sshfs_options, *self.sshfs_extra_options],
                labels=list(self.labels),
                allow_root=self.allow_root,
                root_users=tuple(self.root_users),
                limits=SessionLimits(parent=self),
                cache=self.node_cache(),
                log=self.log,
                sharing=SharedGpus(parent=self),
            )
            self.settings["hwsched_node"] = self.node
            kernels: Any = server.kernel_manager  # kernels.NodeKernelManager
            kernels.on_cell_done = self.node.kernel_cell_done
            kernels.on_restart = self.node.kernel_restarted
            self.node.take_back_sessions()
        except Exception as exc:
            # jupyter_server would log this and serve on without the extension, half-loaded:
            # a node that cannot start says why in one line and exits
            self.log.critical("the node agent cannot start: %s", exc)
            raise SystemExit(1) from None

    def node_cache(self) -> NodeCache | None:
        """The cache of read-mostly trees, where sessions run on a share (as root: its views
        are overlay mounts); its copies survive restarts."""
        if not self.runner_class.roots_at_share or os.geteuid() != 0:
            return None
        cache = NodeCache(parent=self)
        if not cache.enabled:
            return None
        cache.open(Path(self.state_dir))
        return cache

    def credential(self) -> str | Credential:
        """What the node's calls to the scheduler carry: credentials it signs with its own
        certificate where it has one (the pool has identities), else the pool token."""
        server = self.serverapp
        if self.sign_with_certificate and server is not None and server.certfile:
            return signed(Signer(server.certfile, server.keyfile))
        return self.scheduler_token

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())
        server = self.serverapp
        assert server is not None, "an extension app is linked to its server"
        json_not_found(server.web_app, server.base_url)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(worker_threads(len(self.node.gpus)), "hwsched-agent")
        )
        limit_server(serverapp, self.server_limits())
        if not self.public_url:
            host = (
                serverapp.ip if serverapp.ip not in ("", "0.0.0.0", "::") else socket.gethostname()
            )
            scheme = "https" if serverapp.certfile else "http"
            self.public_url = f"{scheme}://{host}:{serverapp.port}"
        self.node.public_url = self.public_url
        local = serverapp.ip if serverapp.ip not in ("", "0.0.0.0", "::") else "127.0.0.1"
        await self._until_listening(local, serverapp.port)
        await self.node.finish_taking_back()
        await self.node.register(wait=True)
        self._heartbeat = PeriodicCallback(self.node.heartbeat, self.heartbeat_interval * 1000)
        self._heartbeat.start()
        self._share_check = PeriodicCallback(
            self.node.check_shares, self.share_check_interval * 1000
        )
        self._share_check.start()
        self._limit_check = PeriodicCallback(
            self.node.check_limits, self.limit_check_interval * 1000
        )
        self._limit_check.start()
        kind = "simulated" if self.node.inventory.simulated else "NVML"
        print(
            f"HWSCHED_AGENT_READY {self.public_url} node={self.node_name} "
            f"gpus={len(self.node.gpus)} ({kind})",
            flush=True,
        )

    async def _until_listening(self, host: str, port: int, timeout: float = 30.0) -> None:
        """jupyter_server binds its port in a loop callback after this hook may run; tell the
        scheduler (and print READY) only once clients can connect."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def stop_extension(self) -> None:
        if hasattr(self, "_heartbeat"):
            self._heartbeat.stop()
            self._share_check.stop()
            self._limit_check.stop()
        await self.node.stop()


def worker_threads(gpus: int) -> int:
    """Threads for the node's blocking work (the event loop's default executor). A session's
    start (mount, container) and end each hold one for seconds, and the heartbeat's figures and
    every call's address lookup (tornado resolves in that executor) wait for a free one.
    Python's default, cores + 4, let the sessions starting on a full two-core node hold every
    thread for longer than the node timeout: the scheduler took the node for dead and ended all
    its sessions. So: two per GPU (a start or end, and a command's exec, at once), and room
    for the periodic checks and the heartbeat besides."""
    return max(32, 2 * gpus + 16)


class ServerKernels:
    """The agent server's kernel manager, as the :class:`KernelHost` of its sessions."""

    def __init__(self, app: AgentApp) -> None:
        self.app = app

    @property
    def manager(self) -> Any:
        assert self.app.serverapp is not None, "an extension app is linked to its server"
        return self.app.serverapp.kernel_manager

    async def start_kernel(self, session: NodeSession) -> str:
        """Start the kernel and wait until it answers: a kernel that exits first fails the
        start with its own first lines, at once, instead of a restart loop."""
        kernel_id: str = await self.manager.start_kernel(
            kernel_name=CONTAINER_KERNEL, hwsched_session=session
        )
        km = self.manager.get_kernel(kernel_id)
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=self.app.kernel_start_timeout)
        except RuntimeError:
            code = await km.provisioner.poll() if km.provisioner else None
            said = session.kernel_log.summary()
            await self.shutdown_kernel(kernel_id)
            if code is None:
                raise KernelStartError(
                    f"the kernel did not answer within {self.app.kernel_start_timeout:g} s"
                    + (f"; it wrote: {said}" if said else "")
                ) from None
            raise KernelStartError(
                f"the kernel exited at start (exit code {code})"
                + (f": {said}" if said else ", writing nothing")
            ) from None
        finally:
            client.stop_channels()
        km.autorestart = True  # from now on a crash restarts it, as in local Jupyter
        km.start_restarter()
        return kernel_id

    async def shutdown_kernel(self, kernel_id: str) -> None:
        await self.manager.shutdown_kernel(kernel_id, now=True)

    async def adopt_kernel(self, session: NodeSession, process: ExecProcess) -> None:
        assert session.kernel_id is not None
        launch = {"hwsched_session": session, "hwsched_process": process}
        await self.manager.adopt(session.kernel_id, CONTAINER_KERNEL, launch)

    def kernel_process(self, kernel_id: str) -> ExecProcess | None:
        km = self.manager._kernels.get(kernel_id)
        provisioner = getattr(km, "provisioner", None)
        return getattr(provisioner, "proc", None)

    async def evaluate(self, kernel_id: str, code: str, expression: str = "None") -> Any:
        """Run ``code`` silently in a kernel (no output, no history), then the value of
        ``expression`` (a Python literal, read back)."""
        client = self.manager.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            reply = await client.execute_interactive(
                code,
                silent=True,
                store_history=False,
                user_expressions={"value": expression},
                timeout=self.app.kernel_start_timeout,
            )
        finally:
            client.stop_channels()
        content = reply["content"]
        value = content.get("user_expressions", {}).get("value", {})
        if content.get("status") != "ok" or value.get("status") != "ok":
            failed = value if content.get("status") == "ok" else content
            raise KernelStartError(
                f"the kept kernel failed: {failed.get('ename')}: {failed.get('evalue')}"
            )
        return ast.literal_eval(value["data"]["text/plain"])


def main(argv: list[str]) -> None:
    """``hwsched agent``."""
    # jupyter_server reads its token from JUPYTER_TOKEN; the pool shares one token
    if env.scheduler_token() and not os.environ.get("JUPYTER_TOKEN"):
        os.environ["JUPYTER_TOKEN"] = env.scheduler_token()
    AgentApp.launch_instance(argv)

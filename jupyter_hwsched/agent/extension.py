"""``hwsched agent``: the node agent, a jupyter_server application.

jupyter_server already serves the Kernel Gateway API (``/api/kernels``, the channels
websocket, interrupt, restart) over any kernel provisioner, so the agent is a server extension
whose kernels the container provisioner launches. Around that it keeps the node's part of the
protocol with the scheduler: registration with the GPU inventory, heartbeats that carry the
live sessions and bring back the ones to end, and the start and end of each session.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, List, Type, Unicode, default

from ..client.api import SchedulerAPI
from ..errors import (
    ConflictError,
    ForbiddenError,
    HwschedError,
    NotFoundError,
    SessionEnded,
    UnavailableError,
)
from .authorizer import secret_hash
from .docker_runner import DockerRunner
from .gpus import GpuInventory, discover
from .handlers import handlers
from .kernelspecs import CONTAINER_KERNEL
from .mount import DEFAULT_OPTIONS, mounts_under, unmount
from .runner import Runner
from .sessions import NodeSession, SessionSpec


class AgentApp(ExtensionApp):
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
    }

    node_name = Unicode(config=True, help="Name of this node in the pool (default: hostname).")
    scheduler_url = Unicode(config=True, help="The scheduler's URL (env HWSCHED_URL).")
    scheduler_token = Unicode(config=True, help="The scheduler's token (env HWSCHED_TOKEN).")
    public_url = Unicode(config=True, help="URL at which clients reach this agent.")
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
    sshfs_options = List(Unicode(), DEFAULT_OPTIONS, config=True, help="Extra sshfs -o options.")

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
        return os.environ.get("HWSCHED_URL", "http://127.0.0.1:8765")

    @default("scheduler_token")
    def _token_default(self) -> str:
        return os.environ.get("HWSCHED_TOKEN", "")

    @default("state_dir")
    def _state_default(self) -> str:
        if os.geteuid() == 0:
            return "/var/lib/hwsched/agent"
        return str(Path.home() / ".local" / "state" / "hwsched" / "agent")

    def initialize_settings(self) -> None:
        self.sessions: dict[str, NodeSession] = {}
        self._cpu_samples: dict[str, tuple[float, float]] = {}
        self.inventory: GpuInventory = discover(
            self.simulate_gpus, self.node_name, self.simulate_if_no_gpu
        )
        self.gpus = {g.index: g for g in self.inventory.gpus()}
        self.runner = self.runner_class(parent=self)
        self.scheduler = SchedulerAPI(self.scheduler_url, self.scheduler_token)
        self.settings["hwsched_agent"] = self
        self._remove_leftovers()

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())

    def _remove_leftovers(self) -> None:
        """At start no session is live: remove every container and mount of ours."""
        for session_id, container_id in self.runner.containers(self.node_name).items():
            self.log.warning("removing leftover container of session %s", session_id)
            self.runner.remove(container_id)
        state = Path(self.state_dir)
        for point in mounts_under(state / "mnt"):
            self.log.warning("unmounting leftover share %s", point)
            unmount(point)
        stuck = mounts_under(state / "mnt")
        if stuck:
            # never walk into a live mount: that is a developer's disk
            raise UnavailableError(f"cannot unmount leftover shares {stuck}; unmount them by hand")
        shutil.rmtree(state / "sessions", ignore_errors=True)
        for leftover in (state / "mnt").glob("*"):
            try:
                leftover.rmdir()  # empty mount points only
            except OSError as exc:
                self.log.warning("leaving %s: %s", leftover, exc)
        (state / "mnt").mkdir(parents=True, exist_ok=True, mode=0o700)
        (state / "sessions").mkdir(parents=True, exist_ok=True, mode=0o711)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if not self.public_url:
            host = (
                serverapp.ip if serverapp.ip not in ("", "0.0.0.0", "::") else socket.gethostname()
            )
            self.public_url = f"http://{host}:{serverapp.port}"
        local = serverapp.ip if serverapp.ip not in ("", "0.0.0.0", "::") else "127.0.0.1"
        await self._until_listening(local, serverapp.port)
        await self.register(wait=True)
        self._heartbeat = PeriodicCallback(self.heartbeat, self.heartbeat_interval * 1000)
        self._heartbeat.start()
        self._share_check = PeriodicCallback(self.check_shares, self.share_check_interval * 1000)
        self._share_check.start()
        kind = "simulated" if self.inventory.simulated else "NVML"
        print(
            f"HWSCHED_AGENT_READY {self.public_url} node={self.node_name} "
            f"gpus={len(self.gpus)} ({kind})",
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

    async def register(self, wait: bool = False) -> None:
        gpus = [g.to_json() for g in self.gpus.values()]
        while True:
            try:
                await self.scheduler.request(
                    "PUT",
                    f"/api/nodes/{self.node_name}",
                    {
                        "url": self.public_url,
                        "gpus": gpus,
                        "share": self.runner.roots_at_share,
                        "labels": list(self.labels),
                    },
                )
                return
            except UnavailableError as exc:
                if not wait:
                    raise
                self.log.warning("%s; retrying", exc)
                await asyncio.sleep(1.0)

    async def check_shares(self) -> None:
        """End, cleanly, every session whose share stopped answering."""
        loop = asyncio.get_running_loop()
        for session_id, session in list(self.sessions.items()):
            mount = session.mount
            if mount is None or session.container_id is None:
                continue  # still starting
            if not await loop.run_in_executor(None, mount.responsive):
                await self.end_session(
                    session_id, "the connection to the developer's share was lost"
                )

    def utilization(self) -> dict[str, float]:
        """Percent busy per GPU index: NVML's sample for real GPUs; for simulated GPUs, the CPU
        load of the session holding them (cores busy, spread over its GPUs)."""
        if not self.inventory.simulated:
            return {str(k): v for k, v in self.inventory.utilization().items()}
        now = time.monotonic()
        out: dict[str, float] = {}
        for session_id, session in self.sessions.items():
            used = self.runner.cpu_seconds(session.container_id) if session.container_id else None
            if used is None or not session.gpus:
                continue
            before = self._cpu_samples.get(session_id)
            self._cpu_samples[session_id] = (now, used)
            if before is None or now <= before[0]:
                continue
            load = (used - before[1]) / (now - before[0]) / len(session.gpus)
            for gpu in session.gpus:
                out[str(gpu.index)] = round(min(100.0, max(0.0, 100.0 * load)), 1)
        for gone in set(self._cpu_samples) - set(self.sessions):
            del self._cpu_samples[gone]
        return out

    def memory_used(self) -> dict[str, int]:
        """Bytes in use per GPU index: NVML's reading for real GPUs; for simulated GPUs, the
        memory of the session holding them (spread over its GPUs, capped at their size)."""
        if not self.inventory.simulated:
            return {str(k): v for k, v in self.inventory.memory_used().items()}
        out: dict[str, int] = {}
        for session in self.sessions.values():
            used = self.runner.memory_bytes(session.container_id) if session.container_id else None
            if used is None or not session.gpus:
                continue
            for gpu in session.gpus:
                out[str(gpu.index)] = min(gpu.memory, used // len(session.gpus))
        return out

    def stats(self) -> dict[str, Any]:
        return {"utilization": self.utilization(), "memory_used": self.memory_used()}

    async def heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        body = {
            "sessions": list(self.sessions),
            "stats": await loop.run_in_executor(None, self.stats),
        }
        try:
            reply = await self.scheduler.request(
                "POST", f"/api/nodes/{self.node_name}/heartbeat", body
            )
        except NotFoundError:
            await self.register()
            return
        except HwschedError as exc:
            self.log.warning("heartbeat failed: %s", exc)
            return
        reasons = reply.get("reasons") or {}
        for session_id in reply.get("end", []):
            reason = reasons.get(session_id) or "ended by the scheduler"
            await self.end_session(session_id, reason, tell_scheduler=False)

    async def placed_session(self, session_id: str, secret: str | None) -> dict[str, Any]:
        """The scheduler's record of a session about to start here, once the caller has shown
        its secret (``None``: the caller showed the cluster token)."""
        placed: dict[str, Any] = await self.scheduler.session(session_id)
        expected = placed.get("secret_sha256") or ""
        if secret is not None and not (
            expected and hmac.compare_digest(secret_hash(secret), expected)
        ):
            raise ForbiddenError(f"that credential is not session {session_id}'s")
        return placed

    async def start_session(
        self, session_id: str, spec: SessionSpec, placed: dict[str, Any]
    ) -> NodeSession:
        """Start a placed session (``placed``: from ``placed_session``)."""
        if session_id in self.sessions:
            raise ConflictError(f"session {session_id} is already running on this node")
        expected = placed.get("secret_sha256") or ""
        if placed["state"] != "placed" or placed["node"] != self.node_name:
            raise ConflictError(
                f"session {session_id} is {placed['state']} on {placed['node'] or 'no node'}, "
                f"not placed on {self.node_name}"
            )
        if not self.runner.roots_at_share and placed["host"] != socket.gethostname():
            raise ConflictError(
                f"node {self.node_name} runs work on its own filesystem (no container engine), "
                f"so it takes sessions only from its own host, not from {placed['host']}"
            )
        if spec.uid == 0 and not self.allow_root:
            raise ForbiddenError(
                "this node does not run work as root: run the client as your own user "
                "(or start the agent with --AgentApp.allow_root=True)"
            )
        session = NodeSession(
            id=session_id,
            secret_hash=expected,
            node=self.node_name,
            spec=spec,
            gpus=[self.gpus[i] for i in placed["gpu_ids"]],
            state_dir=Path(self.state_dir),
            runner=self.runner,
            sshfs_options=list(self.sshfs_options),
        )
        self.sessions[session_id] = session
        loop = asyncio.get_running_loop()
        session.starting = loop.create_future()
        try:
            await loop.run_in_executor(None, session.prepare)
            self._still_wanted(session)
            if spec.kind == "kernel":
                session.kernel_id = await self.kernel_manager.start_kernel(
                    kernel_name=CONTAINER_KERNEL, hwsched_session=session
                )
                self._still_wanted(session)
            await self.scheduler.request(
                "POST", f"/api/sessions/{session_id}/running", {"node": self.node_name}
            )
        except BaseException as exc:
            # this path undoes what it made, also when end_session came in meanwhile
            reason = session.end_reason or f"the node could not start the session: {exc}"
            self.sessions.pop(session_id, None)
            await self._teardown(session)
            try:
                await self.scheduler.end(session_id, reason)
            except HwschedError as report:
                self.log.warning("could not report the end of %s: %s", session_id, report)
            if isinstance(exc, HwschedError):
                raise
            raise UnavailableError(reason) from exc
        finally:
            session.starting.set_result(None)
        self.log.info("session %s running (%s) for uid %d", session_id, spec.kind, spec.uid)
        return session

    @staticmethod
    def _still_wanted(session: NodeSession) -> None:
        if session.end_reason is not None:
            raise SessionEnded(f"the session ended while it started: {session.end_reason}")

    async def _teardown(self, session: NodeSession) -> None:
        """Kernel, command, container, mount, files: once, whatever state the session is in."""
        if session.torn_down:
            return
        session.torn_down = True
        if session.kernel_id:
            try:
                await self.kernel_manager.shutdown_kernel(session.kernel_id, now=True)
            except Exception as exc:  # the container goes anyway
                self.log.warning("kernel of session %s: %s", session.id, exc)
        if session.command is not None:
            session.command.signal(signal.SIGKILL)
        await asyncio.get_running_loop().run_in_executor(None, session.close)

    async def end_session(self, session_id: str, reason: str, tell_scheduler: bool = True) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        session.end_reason = reason
        if session.starting is not None and not session.starting.done():
            await asyncio.shield(session.starting)  # the start path sees the reason, undoes
        await self._teardown(session)
        self.log.info("session %s ended: %s", session_id, reason)
        if tell_scheduler:
            try:
                await self.scheduler.end(session_id, reason)
            except HwschedError as exc:
                self.log.warning("could not report the end of %s: %s", session_id, exc)

    @property
    def kernel_manager(self) -> Any:
        assert self.serverapp is not None, "an extension app is linked to its server"
        return self.serverapp.kernel_manager

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.node_name,
            "simulated": self.inventory.simulated,
            "gpus": [g.to_json() for g in self.gpus.values()],
            "sessions": [s.describe() for s in self.sessions.values()],
        }

    async def stop_extension(self) -> None:
        if hasattr(self, "_heartbeat"):
            self._heartbeat.stop()
            self._share_check.stop()
        for session_id in list(self.sessions):
            await self.end_session(session_id, "the node agent stopped")
        self.inventory.close()

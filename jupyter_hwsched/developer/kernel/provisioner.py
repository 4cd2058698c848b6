"""``hwsched-remote``: the kernel provisioner of the "Remote GPU (shared env)" kernelspec.

Launching asks the scheduler for GPUs and waits through the queue for as long as it takes
(the start is the provisioner's own coroutine, so no client-side start timeout cuts it
short), opens the developer's share, has the node agent start the kernel in a container
rooted at it, then binds the connection file's ports locally with a :class:`KernelBridge`.
Restart happens in place: same allocation, container and mount, a new kernel process on the
node. Shutdown releases everything at once.

Config comes from the kernelspec (``metadata.kernel_provisioner.config``: ``gpus``,
``gpu_type``, ``gpu_mem``, ``timeout``, ``node``, ``priority``) and from traitlets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import typing as t
from dataclasses import replace
from datetime import datetime, timezone

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Any, Float, HasTraits

from jupyter_hwsched.developer.environment import caller_env
from jupyter_hwsched.developer.kernel import registry
from jupyter_hwsched.developer.kernel.bridge import KernelBridge
from jupyter_hwsched.developer.kernel.launcher import launcher_args
from jupyter_hwsched.developer.options import request_from_args
from jupyter_hwsched.developer.session import RemoteSession, describe_gpus, kernel_argv
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.errors import HwschedError
from jupyter_hwsched.protocol.records import SessionRecord
from jupyter_hwsched.protocol.request import HardwareRequest, make_request


class RemoteGpuProvisioner(LocalProvisioner):
    """A kernel on a pooled GPU node, in the developer's own environment."""

    # the kernelspec's metadata.kernel_provisioner.config arrives as these traits
    gpus = Any(1, config=True, help="GPUs for the kernel.")
    gpu_type = Any(None, allow_none=True, config=True, help="GPU model, or A100|H100.")
    gpu_mem = Any(None, allow_none=True, config=True, help="Minimum memory per GPU, e.g. 40G.")
    timeout = Any(None, allow_none=True, config=True, help="Seconds the session may run.")
    node = Any(None, allow_none=True, config=True, help="A node name or label.")
    priority = Any(0, config=True, help="Queue priority, -100..100.")
    mem = Any(None, allow_none=True, config=True, help="Memory for the session, e.g. 32G.")
    cpus = Any(None, allow_none=True, config=True, help="CPU cores for the session.")
    idle_timeout = Float(
        900.0,
        config=True,
        help="Seconds with no execution in flight after which the kernel is shut down and its "
        "GPUs released (0: never).",
    )
    idle_warning = Float(
        120.0, config=True, help="Seconds before the idle release that the notebook is warned."
    )
    idle_check_interval = Float(1.0, config=True, help="Seconds between idle checks.")

    remote: RemoteSession | None = None
    spawned = False  # the launcher runs as a process (a blocking kernel manager)
    bridge: KernelBridge | None = None
    #: the request of a "Run on GPU" run: its GPU count and type replace the kernelspec's
    asked: HardwareRequest | None = None
    _idle_task: asyncio.Future[None] | None = None

    def launcher_options(self) -> argparse.Namespace | None:
        """The request and interpreter the kernelspec's argv gives its launcher."""
        spec = self.kernel_spec
        return launcher_args(list(spec.argv)) if spec is not None else None

    def request(self) -> HardwareRequest:
        """The kernelspec's request (its argv, or for an older spec its provisioner config);
        a run's own GPU count and type take the place of its."""
        options = self.launcher_options()
        own = (
            request_from_args(options)
            if options is not None
            else make_request(
                gpus=self.gpus,
                gpu_type=self.gpu_type,
                gpu_mem=self.gpu_mem,
                timeout=self.timeout,
                node=self.node,
                priority=self.priority,
                mem=self.mem,
                cpus=self.cpus,
            )
        )
        if self.asked is None:
            return own
        asked = self.asked
        if asked.shared:  # the run asks for a share of a GPU rather than the spec's GPUs
            return replace(own, gpus=1, gpu_type=asked.gpu_type, gpu_mem=asked.gpu_mem, shared=True)
        return replace(own, gpus=asked.gpus, gpu_type=asked.gpu_type)

    def phase(self, phase: str, info: SessionRecord) -> None:
        """Progress, in the server log and for the server extension: queued with position,
        placed, started."""
        registry.record(str(self.kernel_id), phase, info)
        if phase == "queued":
            self.log.info(
                "Remote GPU kernel %s: queued, position %s: %s",
                self.kernel_id,
                info.position,
                info.waiting_for,
            )
        elif phase in ("placed", "ready"):
            self.log.info(
                "Remote GPU kernel %s: %s on %s, %s",
                self.kernel_id,
                phase,
                info.node,
                describe_gpus(info),
            )

    async def pre_launch(self, **kwargs: t.Any) -> dict[str, t.Any]:
        self._attach_state = kwargs.pop("hwsched_attach", None)
        # "Run on GPU": the run's own request, in place of the kernelspec's
        self.asked = kwargs.pop("hwsched_request", None) or self.asked
        result: dict[str, t.Any] = await super().pre_launch(**kwargs)
        return result

    def default_cwd(self) -> str:
        """A kernel started without a notebook path runs in the server's root directory
        (the server process's own directory says nothing about the notebooks)."""
        manager = getattr(self.parent, "parent", None)
        root = getattr(manager, "root_dir", None)
        return str(root) if root else os.getcwd()

    async def launch_kernel(self, cmd: list[str], **kwargs: t.Any) -> KernelConnectionInfo:
        if not isinstance(self.parent, AsyncKernelManager):
            # a blocking manager (jupyter console, scripts) turns its event loop only while
            # it calls in, which would starve a relay here: start the kernelspec's argv, the
            # launcher, as a process of its own, like a local kernel
            self.spawned = True
            result: KernelConnectionInfo = await super().launch_kernel(cmd, **kwargs)
            return result
        state = getattr(self, "_attach_state", None)
        if self.remote is None and state is not None:
            # a restarted server takes over a remote kernel that kept running
            self.remote = RemoteSession(HwschedClient(parent=self), self.request(), "kernel", [])
            await self.remote.attach(state)
            registry.record(str(self.kernel_id), "reattached", self.remote.record)
        if self.remote is None:
            env = kwargs.get("env") or dict(os.environ)
            registry.started_for(str(self.kernel_id), env.get("JPY_SESSION_NAME", ""))
            self.remote = RemoteSession(
                HwschedClient(parent=self),
                self.request(),
                "kernel",
                kernel_argv(options.python if (options := self.launcher_options()) else None),
                cwd=kwargs.get("cwd") or self.default_cwd(),
                env=caller_env(env),
                notebook=env.get("JPY_SESSION_NAME", ""),
            )
            try:
                await self.remote.acquire(self.phase)
            except BaseException:
                self.remote = None  # acquire released whatever it had made
                registry.forget(str(self.kernel_id))
                raise
            registry.save(str(self.kernel_id), self.remote.state())
        await self._attach()
        _listable(self.parent)
        return self.connection_info

    async def _attach(self) -> None:
        assert self.remote is not None and self.remote.kernel_id is not None
        placement = self.remote.record.placement
        assert placement is not None, "an acquired session is placed"
        self.bridge = KernelBridge(
            dict(self.connection_info), self._on_shutdown, ca_file=self.remote.settings.ca_file
        )
        await self.bridge.start(placement.agent_url, self.remote.kernel_id, self.remote.secret)
        ports = self.bridge.connection  # the ports it bound, which may differ from those picked
        info = self.connection_info
        info["shell_port"], info["iopub_port"] = ports["shell_port"], ports["iopub_port"]
        info["stdin_port"], info["control_port"] = ports["stdin_port"], ports["control_port"]
        info["hb_port"] = ports["hb_port"]
        self.pid = None
        if self.idle_timeout > 0 and self._idle_task is None:
            self._idle_task = asyncio.ensure_future(self._watch_idle())

    async def _watch_idle(self) -> None:
        warned = False
        while self.remote is not None:
            await asyncio.sleep(self.idle_check_interval)
            bridge = self.bridge
            if bridge is None or bridge.closed.is_set():
                continue
            idle = bridge.idle_for()
            if idle >= self.idle_timeout:
                await self._idle_release(bridge)
                return
            if not warned and idle >= self.idle_timeout - self.idle_warning:
                left = self.idle_timeout - idle
                bridge.notify(
                    f"[hwsched] This kernel has run nothing for a while: it will be shut down "
                    f"and its GPU given back to the pool in {left:.0f} s unless a cell runs."
                )
                warned = True
            elif idle < self.idle_timeout - self.idle_warning:
                warned = False

    async def _idle_release(self, bridge: KernelBridge) -> None:
        self.log.info("Remote GPU kernel %s: idle, releasing its GPU", self.kernel_id)
        bridge.notify(
            f"[hwsched] This kernel ran nothing for {self.idle_timeout / 60:g} min, so it was "
            "shut down and its GPU given back to the pool. Restart the kernel to get a GPU again.",
            state="dead",
        )
        parent = self.parent
        if parent is not None and hasattr(parent, "stop_restarter"):
            parent.stop_restarter()  # a released kernel must not come back by itself
        await bridge.stop()
        if self.remote is not None:
            await self.remote.release("idle: no execution for the idle timeout")
            registry.forget(str(self.kernel_id))

    async def _on_shutdown(self, msg: dict[str, t.Any]) -> None:
        """A client asked the kernel to shut down: restart in place, or let it go."""
        restart = bool((msg.get("content") or {}).get("restart"))
        assert self.bridge is not None
        self.bridge.reply("control", msg, "shutdown_reply", {"status": "ok", "restart": restart})
        if restart:
            await self._restart_remote()
        await self.bridge.stop()

    async def _restart_remote(self) -> None:
        assert self.remote is not None and self.remote.kernel_id is not None
        assert self.remote.agent is not None, "an acquired session has its agent client"
        await self.remote.agent.restart(self.remote.kernel_id)

    @property
    def has_process(self) -> bool:
        if self.spawned:
            return bool(super().has_process)
        return self.bridge is not None

    async def poll(self) -> int | None:
        if self.spawned:
            return await super().poll()
        if self.bridge is None or self.bridge.closed.is_set():
            return 0
        return None

    async def wait(self) -> int | None:
        if self.spawned:
            return await super().wait()
        if self.bridge is not None:
            await self.bridge.closed.wait()
        return 0

    async def send_signal(self, signum: int) -> None:
        """SIGINT interrupts the remote kernel (the fallback of message-mode interrupts)."""
        if self.spawned:
            return await super().send_signal(signum)
        if signum == signal.SIGINT and self.remote is not None and self.remote.agent:
            assert self.remote.kernel_id is not None
            await self.remote.agent.interrupt(self.remote.kernel_id)
        elif signum in (signal.SIGKILL, signal.SIGTERM):
            await self.kill()

    async def kill(self, restart: bool = False) -> None:
        if self.spawned:
            return await super().kill(restart=restart)
        if self.bridge is not None:
            await self.bridge.stop()
        if restart and self.remote is not None and not self.remote.releasing:
            try:
                await self._restart_remote()
            except HwschedError as exc:
                self.log.warning("restarting the remote kernel failed: %s", exc)

    async def terminate(self, restart: bool = False) -> None:
        if self.spawned:
            return await super().terminate(restart=restart)
        await self.kill(restart=restart)

    async def cleanup(self, restart: bool = False) -> None:
        if self.spawned:
            return await super().cleanup(restart=restart)
        if self.bridge is not None:
            await self.bridge.stop()
            self.bridge = None
        if not restart and self.remote is not None:
            if registry.KEEP_ON_EXIT["active"] and not self.remote.releasing:
                await self.remote.detach()  # the server restarts; the kernel stays
            else:
                await self.remote.release("the kernel was shut down")
                registry.forget(str(self.kernel_id))
            self.remote = None
        if not restart and self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None
        await super().cleanup(restart=restart)

    async def get_provisioner_info(self) -> dict[str, t.Any]:
        info: dict[str, t.Any] = await super().get_provisioner_info()
        if self.remote is not None:
            info["hwsched_session"] = self.remote.id
        return info


def _listable(km: t.Any) -> None:
    """jupyter_server lists a kernel (``GET /api/kernels``) from the moment its start returns,
    and sets the kernel's ``last_activity`` a turn of its event loop later: a listing in
    between failed with a 500 (seen while a restarted server took a remote kernel over, with
    the page polling). Set it here first; jupyter_server sets it again."""
    if not isinstance(km, HasTraits) or not km.has_trait("last_activity"):
        return  # not jupyter_server's (jupyter console, papermill): nothing lists it
    if not km.trait_has_value("last_activity"):  # reading it would raise a TraitError
        km.set_trait("last_activity", datetime.now(timezone.utc))
    if km.has_trait("execution_state") and getattr(km, "execution_state", None) is None:
        km.set_trait("execution_state", "starting")

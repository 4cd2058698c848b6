"""A remote session from the client's side: ask, wait in the queue, share, start, release.

``RemoteSession.acquire`` walks the phases and reports each through a callback; the lease is
renewed in the background while the session lives; ``release`` undoes everything the session
created (agent side, scheduler side, share) and is safe to call at any point and more than once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jupyter_hwsched.developer.environment import (
    cache_trees,
    caller_env,
    caller_host,
    caller_identity,
    shown_paths,
)
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.clients import AgentClient, ShareClient
from jupyter_hwsched.protocol.errors import HwschedError, SessionEnded
from jupyter_hwsched.protocol.records import SessionRecord, SessionSubmission, StartSpec
from jupyter_hwsched.protocol.request import HardwareRequest, format_memory

#: told each phase of a start ("queued", "placed", "sharing", "ready") with the session
ProgressCallback = Callable[[str, SessionRecord], None]


def kernel_argv(python: str | None = None) -> list[str]:
    """The caller's own Python as a kernel, with history kept off the share."""
    return [
        python or sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--HistoryManager.hist_file=:memory:",
    ]


def describe_gpus(session: SessionRecord) -> str:
    """``GPU 0 (A100-80GB, 80G, simulated)``: what a session holds, for a person."""
    if not session.gpus:
        return f"GPU(s) {session.gpu_ids}"
    parts = []
    for gpu in session.gpus:
        label = f"GPU {gpu.index} ({gpu.model}, {format_memory(gpu.memory)}"
        parts.append(label + (", simulated)" if gpu.simulated else ")"))
    return ", ".join(parts)


def phase_words(phase: str, info: SessionRecord) -> str:
    """How a start phase reads wherever it is shown: a cell's status line, a kernel's log."""
    if phase == "queued":
        return f"queued, position {info.position}: {info.waiting_for or ''}"
    where = f"{info.node}, {describe_gpus(info)}"
    if phase == "placed":
        return f"placed on {where}; mounting your environment"
    if phase == "sharing":
        return f"placed on {where}; starting the kernel"
    return f"running on {where}"


@dataclass
class Timings:
    submitted: float = 0.0
    placed: float = 0.0
    ready: float = 0.0
    ended: float = 0.0

    def waited(self) -> float:
        return max(0.0, (self.placed or time.time()) - self.submitted)

    def ran(self) -> float:
        return max(0.0, (self.ended or time.time()) - (self.ready or time.time()))


@dataclass
class RemoteSession:
    settings: HwschedClient
    request: HardwareRequest
    kind: str  # "kernel" or "command"
    argv: list[str]
    cwd: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(default_factory=caller_env)
    #: the notebook the work comes from (a kernel's JPY_SESSION_NAME), so that JupyterLab
    #: can show what each notebook holds
    notebook: str = field(default_factory=lambda: os.environ.get("JPY_SESSION_NAME", ""))
    id: str | None = None
    secret: str = ""  # the session's own credential with the node agent
    info: SessionRecord | None = None  # the scheduler's record, once placed
    kernel_id: str | None = None
    ended_reason: str | None = None
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self) -> None:
        #: whether ending the session keeps it warm (its start asked, and the share agent
        #: granted a lease; see agent/warm.py)
        self.warm = False
        self.scheduler = self.settings.scheduler()
        self.share: ShareClient | None = None
        self.agent: AgentClient | None = None
        self._renewer: asyncio.Task[None] | None = None
        #: set when a renewal finds the session ended (the node may not be able to say so:
        #: the link to it is down)
        self.ended = asyncio.Event()
        self._release_task: asyncio.Future[None] | None = None

    @property
    def record(self) -> SessionRecord:
        """The scheduler's record of the placed session (only once placed)."""
        assert self.info is not None, "the session is placed before its record is read"
        return self.info

    async def acquire(self, progress: ProgressCallback) -> SessionRecord:
        """Queue, wait for placement, open the share, start on the node. Releases on failure."""
        try:
            return await self._acquire(progress)
        except BaseException:
            self.warm = False  # what failed to start is not kept
            await asyncio.shield(self.release("the session could not start"))
            raise

    async def _acquire(self, progress: ProgressCallback) -> SessionRecord:
        # what of this machine's /tmp the run needs; refused here if it cannot be shown
        shown = shown_paths(self.argv, self.env, self.cwd)
        self.timings.submitted = time.time()
        me = caller_identity()
        info = await self.scheduler.submit(
            SessionSubmission(self.request, me.name, caller_host(), me.group, self.notebook)
        )
        self.id = info.id
        self.secret = info.secret or self.settings.token
        lease = max(1.0, info.lease_expires - info.created)
        self._renewer = asyncio.create_task(self._renew(lease / 3))
        last_shown = None
        while info.state == "queued":
            if (info.position, info.waiting_for) != last_shown:  # the place or the reason
                last_shown = (info.position, info.waiting_for)
                progress("queued", info)
            await asyncio.sleep(self.settings.poll_interval)
            info = await self.scheduler.session(self.id)
        if info.state == "ended" or info.placement is None:
            raise SessionEnded(f"the session ended before it started: {info.end_reason}")
        self.info = info
        self.timings.placed = time.time()
        progress("placed", info)
        credentials = None
        if info.placement.share_needed:
            if not self.settings.share_socket:
                raise HwschedError(
                    "no share agent configured: start the pool with 'hwsched up', or run "
                    "'hwsched share' and set HWSCHED_SHARE_SOCKET"
                )
            self.share = ShareClient(self.settings.share_socket)
            trees = cache_trees(self.argv, self.env, self.cwd)
            credentials = await self.share.open(self.id, trees, self.settings.keep_warm)
        progress("sharing", info)
        self.agent = AgentClient(info.placement.agent_url, self.secret, self.settings.ca_file)
        spec = StartSpec(
            credentials,
            me,
            self.cwd,
            self.env,
            self.kind,
            self.argv,
            shown,
            self.settings.keep_warm if credentials and credentials.lease else 0.0,
            tuple(self.settings.preload) if self.kind == "kernel" else (),
        )
        self.warm = bool(spec.keep_warm)
        self.kernel_id = await self.agent.start(self.id, spec)
        self.timings.ready = time.time()
        progress("ready", info)
        return info

    def state(self) -> dict[str, Any]:
        """What a later process needs to attach to this session again (saved as JSON)."""
        return {
            "id": self.id,
            "secret": self.secret,
            "info": self.info.to_json() if self.info else None,
            "kernel_id": self.kernel_id,
        }

    async def attach(self, state: dict[str, Any]) -> None:
        """Take over a live session saved by ``state()`` (a restarted Jupyter server)."""
        self.id, self.secret = state["id"], state["secret"]
        self.info, self.kernel_id = SessionRecord.from_json(state["info"]), state["kernel_id"]
        info = await self.scheduler.renew(str(self.id))  # raises SessionEnded if it is gone
        if info.placement is None:
            raise SessionEnded(f"session {self.id} is no longer placed")
        self.agent = AgentClient(info.placement.agent_url, self.secret, self.settings.ca_file)
        self.timings.submitted = self.timings.placed = self.timings.ready = time.time()
        lease = max(1.0, info.lease_expires - time.time())
        self._renewer = asyncio.create_task(self._renew(max(1.0, lease / 3)))

    async def detach(self) -> None:
        """Stop using the session without ending it: it stays with its lease running."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        for client in (self.agent, self.share, self.scheduler):
            if client is not None:
                client.close()

    async def _renew(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.scheduler.renew(str(self.id))
            except SessionEnded as exc:
                self.ended_reason = str(exc)
                self.ended.set()
                return
            except HwschedError:
                continue  # a blip; the next renewal may get through

    async def why_ended(self) -> str | None:
        """The scheduler's reason, where the session ended under the client's feet."""
        if self.id is None:
            return None
        try:
            info = await self.scheduler.session(self.id)
        except HwschedError:
            return self.ended_reason
        return str(info.end_reason) if info.state == "ended" else None

    async def release(self, reason: str = "released by the client") -> None:
        """End the session everywhere; what is already gone is skipped. Every call waits for
        the same one release, which a cancelled caller does not cut short."""
        if self._release_task is None:
            self._release_task = asyncio.ensure_future(self._release(reason))
        await asyncio.shield(self._release_task)

    @property
    def releasing(self) -> bool:
        return self._release_task is not None

    async def _release(self, reason: str) -> None:
        self.timings.ended = time.time()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self.id is not None:
            warm = False  # the share stays for a lease only if the node kept what it serves
            if self.agent is not None:
                with contextlib.suppress(HwschedError):
                    warm = await self.agent.stop(self.id, reason, warm=self.warm)
            with contextlib.suppress(HwschedError):
                await self.scheduler.end(self.id, reason)
            if self.share is not None:
                with contextlib.suppress(HwschedError):
                    await self.share.close_share(self.id, keep=warm)
        for client in (self.agent, self.share, self.scheduler):
            if client is not None:
                client.close()

"""Flow control for what the agent relays to its clients: bounded, lossless, per session.

Every byte the agent hands to a client's websocket stays in the agent's memory (tornado's
write buffer) until the client's socket takes it. A client that stops reading would otherwise
grow the agent without limit, so each stream has a bound on those unsent bytes, and past the
bound the *producer* is paused, never the data dropped:

``c.CommandRelay.max_unsent_bytes`` (default 8 MiB)
    A command's output not yet taken by its client. Past it, the thread that pumps the
    command's output stops reading it (``OutputWindow``): the pipe fills and the command
    blocks on its next write, until the client reads.

``c.NoDelayConnection.max_unsent_bytes`` (default 8 MiB)
    Kernel messages written to one channels websocket and not yet taken. Past it, the
    session's container is paused (``Runner.pause``: the cgroup freezer, or SIGSTOP for the
    host runner) until the client has read it down to half the bound. The kernel is paused
    rather than its ZMQ sockets left unread: IOPub is a PUB socket, which drops messages past
    its high-water mark.

``c.NoDelayConnection.max_replay_bytes`` (default 32 MiB)
    Kernel messages kept while the kernel has no client, for the client that reconnects
    (jupyter_server's replay buffer). Past it, the session's container is paused until a
    client reconnects; the replay then drains through that connection's own bound.

The agent holds at most the bound per stream plus what was already under way when the pause
took hold: one chunk of a command's output (64 KiB at most), or the kernel messages sent before
the freezer landed (ipykernel sends stream output in batches every 0.2 s).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from traitlets import Int
from traitlets.config import Configurable

if TYPE_CHECKING:
    from jupyter_hwsched.agent.runner import Runner
    from jupyter_hwsched.agent.service import NodeService
    from jupyter_hwsched.agent.sessions import NodeSession

MiB = 1024 * 1024


class CommandRelay(Configurable):
    """Settings of a command's output stream (read from the agent's config)."""

    max_unsent_bytes = Int(
        8 * MiB,
        config=True,
        help="Bytes of a command's output the agent holds for a client that has not read them; "
        "past this the command is paused (blocked on its write) until the client reads.",
    )


class OutputWindow:
    """Bytes of output handed to a websocket and not yet flushed to its socket, shared by the
    threads that pump a process's output and the event loop that writes it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unsent = 0
        self.peak = 0
        self.closed = False
        self._cond = threading.Condition()

    def reserve(self, size: int, give_up: Callable[[], bool]) -> None:
        """Wait (in a pump thread) until fewer than ``limit`` bytes are unsent, then count
        ``size`` more. Returns at once once the window is closed (the client went away) or
        ``give_up()`` says so (the session ended: its producer is gone)."""
        with self._cond:
            while self.unsent >= self.limit and not self.closed and not give_up():
                self._cond.wait(0.5)
            self.unsent += size
            self.peak = max(self.peak, self.unsent)

    def sent(self, size: int) -> None:
        """``size`` bytes reached the socket, or will never be written."""
        with self._cond:
            self.unsent -= size
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Gate:
    """Pauses one session's processes while anything holds the gate and resumes them once
    nothing does. The runner's calls block: they run one at a time in a worker thread, each
    towards the state wanted when it starts, until the state is the one wanted."""

    def __init__(self, runner: Runner, container_id: str) -> None:
        self.runner = runner
        self.container_id = container_id
        self.holders: set[str] = set()
        self.paused = False
        self.open = False  # while its kernel is stopped or started: never paused
        self._settling: asyncio.Future[None] | None = None

    @property
    def wanted(self) -> bool:
        """Whether the container should be paused now."""
        return bool(self.holders) and not self.open

    def hold(self, key: str) -> None:
        self.holders.add(key)
        self._settle_soon()

    def release(self, key: str) -> None:
        self.holders.discard(key)
        self._settle_soon()

    def _settle_soon(self) -> None:
        if (self._settling is None or self._settling.done()) and self.paused != self.wanted:
            self._settling = asyncio.ensure_future(self._settle())

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        while self.paused != self.wanted:
            pause = self.wanted
            call = self.runner.pause if pause else self.runner.resume
            try:
                await loop.run_in_executor(None, call, self.container_id)
            except Exception as exc:  # the container is gone: nothing is left to pause
                self.runner.log.warning(
                    "%s %s failed: %s", "pausing" if pause else "resuming", self.container_id, exc
                )
                break
            self.paused = pause
            self.runner.log.debug(
                "%s %s (held by %s)",
                "paused" if pause else "resumed",
                self.container_id,
                sorted(self.holders),
            )
        if not self.holders and not self.paused and _gates.get(self.container_id) is self:
            del _gates[self.container_id]


#: the gates of sessions that are, or are being, paused: container id -> gate
_gates: dict[str, Gate] = {}


def session_of_kernel(node: NodeService, kernel_id: str) -> NodeSession | None:
    for session in node.sessions.values():
        if session.kernel_id == kernel_id:
            return session
    return None


def gate_of(node: NodeService, session: NodeSession | None) -> Gate | None:
    """The gate of a live session's container (made on first use); None before the session
    has a container or after it ended. Gates of sessions that ended are dropped here."""
    live = {s.container_id for s in node.sessions.values() if s.container_id}
    for gone in set(_gates) - live:
        del _gates[gone]
    if session is None or session.container_id is None or session.container_id not in live:
        return None
    gate = _gates.get(session.container_id)
    if gate is None:
        gate = _gates[session.container_id] = Gate(session.runner, session.container_id)
    return gate


def hold(node: NodeService | None, session: NodeSession | None, key: str) -> None:
    """Pause ``session`` on behalf of ``key`` (a stream whose reader fell behind)."""
    gate = gate_of(node, session) if node is not None else None
    if gate is not None:
        gate.hold(key)


def release(node: NodeService | None, session: NodeSession | None, key: str) -> None:
    """``key`` no longer needs ``session`` paused; it resumes once nothing else does."""
    if session is not None and session.container_id in _gates:
        _gates[session.container_id].release(key)


async def running(session: NodeSession) -> None:
    """Resume ``session``'s container now and keep it running until :func:`may_pause`: a
    frozen process takes no signal (the cgroup v1 freezer holds even SIGKILL) and the engine
    starts nothing in a paused container, so a kernel is stopped and started unpaused."""
    container_id = session.container_id
    if container_id is None:
        return
    gate = _gates.get(container_id)
    if gate is not None:
        gate.open = True
        gate._settle_soon()
        while gate._settling is not None and not gate._settling.done():
            await asyncio.shield(gate._settling)
        if not gate.paused:
            return
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, session.runner.resume, container_id)
    except Exception as exc:  # gone already: nothing is paused
        session.runner.log.debug("resuming %s: %s", container_id, exc)
    if gate is not None:
        gate.paused = False


def may_pause(session: NodeSession) -> None:
    """Undo :func:`running`: the streams' holds pause the container again if they still
    need it."""
    gate = _gates.get(session.container_id or "")
    if gate is not None:
        gate.open = False
        gate._settle_soon()

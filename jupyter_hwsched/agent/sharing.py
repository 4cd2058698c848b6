"""Kernels that share a GPU (``--shared``): their cells take turns, and each keeps to its
memory.

The scheduler packs shared kernels onto a GPU by the memory each asked for. On the node,
each kernel's execute requests pass through the GPU's cell gate (cellgate.py): a cell that
must wait is held on the agent, and its notebook is told "waiting for the GPU: 1 cell
ahead" in that cell's output; it goes to the kernel when the gate admits it. A cell ends when
its kernel reports idle for it (kernels.py sees every kernel's iopub, with or without a
client). Between cells a kernel keeps its state and its GPU memory and computes nothing.

A kernel whose GPU memory grows past what it asked for is warned in its notebook, and
stopped ``memory_grace`` seconds later if it is still over, with the reason; only its share
is freed. On simulated GPUs the memory its container uses stands for its GPU memory, as the
heartbeats report it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from traitlets import Float
from traitlets.config import LoggingConfigurable

from jupyter_hwsched.agent.cellgate import ADMITTED, SLICED, WAITING, Cell, CellGate
from jupyter_hwsched.protocol.request import format_memory

if TYPE_CHECKING:
    from jupyter_hwsched.agent.sessions import NodeSession

PREFIX = "[hwsched] "


class Channel(Protocol):
    """A client connection of a kernel, as the gate needs it (websocket.py)."""

    def say(self, parent: dict[str, Any], text: str) -> None: ...

    def forward(self, message: Any) -> None: ...

    def abort(self, parent: dict[str, Any]) -> None: ...


@dataclass
class Held:
    """A cell's request held on the agent, and the connection it came on."""

    channel: Channel
    message: Any
    header: dict[str, Any]


class SharedGpus(LoggingConfigurable):
    """The node's shared GPUs: the cell gate, and each shared kernel's memory."""

    memory_grace = Float(
        30.0,
        min=0.0,
        config=True,
        help="Seconds a shared kernel may stay over the GPU memory it asked for, after its "
        "notebook is warned, before it is stopped.",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic, **kw: Any) -> None:
        super().__init__(**kw)
        self.clock = clock
        self.gate = CellGate(clock=clock, notify=self._told, parent=self)
        self.sessions: dict[str, NodeSession] = {}
        self.channels: dict[str, Channel] = {}  # a session's latest client connection
        self.last_cell: dict[str, dict[str, Any]] = {}  # its latest cell's request header
        self.over_since: dict[str, float] = {}
        #: ended sessions' final cell time, until a heartbeat has carried it
        self.unreported: dict[str, float] = {}

    # sessions

    def add(self, session: NodeSession) -> None:
        self.sessions[session.id] = session

    def remove(self, session_id: str) -> None:
        """The session ended: its cells leave the gate and the next ones run."""
        if self.sessions.pop(session_id, None) is None:
            return
        self._answer_waiting(session_id, "the session ended before the cell could run")
        self.unreported[session_id] = round(self.gate.charged(session_id), 3)
        self.gate.cell_seconds.pop(session_id, None)
        self.channels.pop(session_id, None)
        self.last_cell.pop(session_id, None)
        self.over_since.pop(session_id, None)

    def restarted(self, session_id: str) -> None:
        """Its kernel restarted: what it ran or waited for will never end by itself."""
        self._answer_waiting(session_id, "the kernel restarted before the cell could run")

    def _answer_waiting(self, session_id: str, why: str) -> None:
        self._answer(self.gate.forget(session_id), why)

    @staticmethod
    def _answer(cells: list[Cell], why: str) -> None:
        """Cells held here that will not run: each is told why and answered as aborted."""
        for cell in cells:
            held = cell.payload
            if isinstance(held, Held):
                held.channel.say(held.header, f"{PREFIX}{why}")
                held.channel.abort(held.header)

    # the kernels' messages

    def execute(
        self, session_id: str, channel: Channel, message: Any, header: dict[str, Any]
    ) -> bool:
        """An execute request of a shared kernel: True if it may go to the kernel now;
        else it is held, and forwarded when its turn comes."""
        session = self.sessions.get(session_id)
        if session is None or not session.gpus:
            return True
        self.channels[session_id] = channel
        self.last_cell[session_id] = header
        cell = Cell(session_id, session.gpus[0].index, str(header.get("msg_id", "")))
        if self.gate.submit(cell):
            return True
        cell.payload = Held(channel, message, header)
        return False

    def interrupted(self, session_id: str) -> None:
        """An interrupt of a kernel: its cells still waiting do not run."""
        self._answer(self.gate.drop_waiting(session_id), "interrupted while waiting for the GPU")

    def cell_done(self, session_id: str, msg_id: str) -> None:
        """A kernel went idle after an execute request: the cell is done."""
        if session_id in self.sessions:
            self.gate.finish(session_id, msg_id)
            self.log.debug(
                "cell %s of session %s done; its cells have run %.3f s",
                msg_id,
                session_id,
                self.gate.charged(session_id),
            )

    def _told(self, event: str, cell: Cell, detail: Any) -> None:
        held = cell.payload if isinstance(cell.payload, Held) else None
        channel = held.channel if held else self.channels.get(cell.session)
        header = held.header if held else self.last_cell.get(cell.session)
        if channel is None or header is None:
            return
        if event == WAITING:
            ahead = f"{detail} cell{'s' if detail != 1 else ''} ahead"
            channel.say(header, f"{PREFIX}waiting for the GPU: {ahead} (GPU {cell.gpu}, shared)")
        elif event == ADMITTED and held is not None:
            cell.payload = None
            channel.say(header, f"{PREFIX}the GPU is free after {detail:.1f} s: running")
            channel.forward(held.message)
        elif event == SLICED:
            slice_after = self.gate.slice_after
            if cell.sliced:
                text = (
                    f"time slicing: this cell runs beside another kernel's cell on GPU "
                    f"{cell.gpu}, which has run over {slice_after:g} s"
                )
            else:
                text = (
                    f"time slicing: this cell has run over {slice_after:g} s, so another "
                    f"kernel's cell now runs beside it on GPU {cell.gpu}"
                )
            if held is not None:  # admitted by slicing: it goes to its kernel now
                cell.payload = None
                channel.say(header, PREFIX + text)
                channel.forward(held.message)
            else:
                channel.say(header, PREFIX + text)

    # memory

    async def check_memory(
        self,
        used: Callable[[NodeSession], int | None],
        end: Callable[[str, str], Awaitable[Any]],
    ) -> None:
        """Warn each shared kernel over its memory; stop one that stays over."""
        now = self.clock()
        for session_id, session in list(self.sessions.items()):
            allowed = session.shared_mem
            current = used(session)
            if not allowed or current is None:
                continue
            if current <= allowed:
                self.over_since.pop(session_id, None)
                continue
            gpu = session.gpus[0].index if session.gpus else 0
            over = f"{format_memory(current)} of GPU memory, over the {format_memory(allowed)}"
            if session_id not in self.over_since:
                self.over_since[session_id] = now
                channel, header = self.channels.get(session_id), self.last_cell.get(session_id)
                if channel is not None and header is not None:
                    channel.say(
                        header,
                        f"{PREFIX}warning: this kernel uses {over} it asked for (--gpu-mem); "
                        f"free some within {self.memory_grace:g} s or it is stopped, to keep "
                        f"GPU {gpu}'s other kernels safe",
                    )
            elif now - self.over_since[session_id] >= self.memory_grace:
                await end(
                    session_id,
                    f"stopped: the kernel used {over} it asked for (--gpu-mem) for more than "
                    f"{self.memory_grace:g} s; its share of GPU {gpu} is free again. Ask for "
                    "more with --gpu-mem",
                )

    def cell_seconds(self) -> dict[str, float]:
        """Seconds each shared kernel's cells have run (the GPU time its user is charged),
        the sessions that ended since the last heartbeat included, with their final figure."""
        # copies: the heartbeat reads this in a worker thread while sessions come and go
        live = {sid: round(self.gate.charged(sid), 3) for sid in list(self.sessions)}
        return {**dict(self.unreported), **live}

    def reported(self, sent: dict[str, float]) -> None:
        """A heartbeat carried these figures: the ended sessions among them are done."""
        for sid in sent:
            if sid not in self.sessions:
                self.unreported.pop(sid, None)

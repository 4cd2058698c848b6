"""The compute gate of shared GPUs: which resident kernels' cells may run now.

Kernels that share a GPU (``--shared``) keep their state and GPU memory between cells, but
compute only while the gate admits one of their cells: by default one cell at a time per GPU
(``concurrent_cells``), the others waiting in arrival order. A cell that has run for
``slice_after`` seconds no longer keeps the next one waiting: the gate lets it run beside
(time slicing) and says so to both.

The gate is plain logic over an injectable clock: it knows cells by their kernel session and
message id, and tells what happened through ``notify(event, cell, detail)``; the node agent's
kernel websocket holds and forwards the messages (websocket.py), and the utilization
benchmark replays a day through the same class.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

#: what the gate tells: a cell waits (detail: cells ahead), is admitted (detail: seconds it
#: waited), or runs beside others by time slicing (detail: the cells it runs beside)
WAITING, ADMITTED, SLICED = "waiting", "admitted", "sliced"


@dataclass(eq=False)
class Cell:
    """One execute request of a kernel on a shared GPU."""

    session: str
    gpu: int
    key: str  # the request's message id
    arrived: float = 0.0
    started: float | None = None
    sliced: bool = False  # admitted by time slicing, beside a long cell
    payload: Any = field(default=None, repr=False)  # what the caller needs to forward it


Notify = Callable[[str, Cell, Any], None]


class CellGate(LoggingConfigurable):
    """Per GPU: the cells running and the cells waiting, and each session's cell time."""

    concurrent_cells = Int(
        1,
        min=1,
        config=True,
        help="Cells of kernels sharing a GPU that may compute at once.",
    )
    slice_after = Float(
        5.0,
        min=0.0,
        config=True,
        help="Seconds a cell may keep a shared GPU's other cells waiting; after that the "
        "next one runs beside it (time slicing), and both notebooks are told.",
    )

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, notify: Notify | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.clock = clock
        self.notify: Notify = notify or (lambda event, cell, detail: None)
        self.running: dict[int, list[Cell]] = {}
        self.waiting: dict[int, deque[Cell]] = {}
        #: seconds each session's cells have run (the GPU time it is charged)
        self.cell_seconds: dict[str, float] = {}

    def submit(self, cell: Cell) -> bool:
        """A cell arrives: admitted now (True), or queued behind others (False)."""
        cell.arrived = self.clock()
        running = self.running.setdefault(cell.gpu, [])
        queue = self.waiting.setdefault(cell.gpu, deque())
        if len(running) < self.concurrent_cells and not queue:
            self._start(cell, sliced=False)
            return True
        queue.append(cell)
        self.notify(WAITING, cell, len(running) + len(queue) - 1)
        return False

    def finish(self, session: str, key: str) -> None:
        """A cell is done (its reply left the kernel); the next ones may run."""
        for gpu, running in self.running.items():
            for cell in running:
                if cell.session == session and cell.key == key:
                    running.remove(cell)
                    self._charge(cell)
                    self._admit(gpu)
                    return
        self._drop(lambda c: c.session == session and c.key == key)

    def forget(self, session: str) -> list[Cell]:
        """A kernel is gone (ended, restarted): its cells leave the gate; the waiting ones
        are returned, for the caller to answer."""
        dropped = self._drop(lambda c: c.session == session)
        for gpu, running in self.running.items():
            for cell in [c for c in running if c.session == session]:
                running.remove(cell)
                self._charge(cell)
            self._admit(gpu)
        return dropped

    def drop_waiting(self, session: str) -> list[Cell]:
        """A kernel's waiting cells leave the gate (an interrupt); they are returned."""
        return self._drop(lambda c: c.session == session)

    def tick(self) -> None:
        """Time slicing: on a GPU whose every running cell has run ``slice_after`` seconds,
        the next waiting cell runs beside them."""
        now = self.clock()
        for gpu, queue in self.waiting.items():
            running = self.running.get(gpu, [])
            started = [c.started for c in running if c.started is not None]
            if queue and running and all(now - t >= self.slice_after for t in started):
                cell = queue.popleft()
                self._start(cell, sliced=True)
                self.notify(SLICED, cell, list(running[:-1]))
                for other in running[:-1]:
                    self.notify(SLICED, other, [cell])
                self._tell_positions(gpu)

    def ahead(self, cell: Cell) -> int:
        queue = self.waiting.get(cell.gpu, deque())
        place = list(queue).index(cell) if cell in queue else 0
        return len(self.running.get(cell.gpu, [])) + place

    def _start(self, cell: Cell, sliced: bool) -> None:
        cell.started, cell.sliced = self.clock(), sliced
        self.running.setdefault(cell.gpu, []).append(cell)
        self.notify(ADMITTED, cell, cell.started - cell.arrived)

    def _admit(self, gpu: int) -> None:
        running, queue = self.running.get(gpu, []), self.waiting.get(gpu, deque())
        admitted = False
        while queue and len(running) < self.concurrent_cells:
            self._start(queue.popleft(), sliced=False)
            admitted = True
        if admitted:
            self._tell_positions(gpu)

    def _tell_positions(self, gpu: int) -> None:
        for cell in self.waiting.get(gpu, deque()):
            self.notify(WAITING, cell, self.ahead(cell))

    def _charge(self, cell: Cell) -> None:
        if cell.started is not None:
            spent = max(0.0, self.clock() - cell.started)
            self.cell_seconds[cell.session] = self.cell_seconds.get(cell.session, 0.0) + spent

    def _drop(self, which: Callable[[Cell], bool]) -> list[Cell]:
        dropped = []
        for gpu, queue in self.waiting.items():
            keep = deque(c for c in queue if not which(c))
            dropped += [c for c in queue if which(c)]
            self.waiting[gpu] = keep
            if dropped:
                self._tell_positions(gpu)
        return dropped

    def charged(self, session: str) -> float:
        """Seconds the session's cells have run, the running one's so far included."""
        now = self.clock()
        running = sum(
            now - c.started
            for cells in self.running.values()
            for c in cells
            if c.session == session and c.started is not None
        )
        return self.cell_seconds.get(session, 0.0) + running

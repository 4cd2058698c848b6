"""What one session may use of the node: memory, processes, CPU, and its ``/tmp``.

The operator sets a default for each and, for memory and CPU, the most a user may ask for
(``--mem``, ``--cpus``); :meth:`SessionLimits.resolve` turns a request into the
:class:`Limits` a runner enforces, or refuses it with the bound it broke. A session that goes
over the memory or process limit is ended alone, and its user told which limit, in one line
(:func:`limit_reason`): the container's memory cgroup counts OOM kills, its pids cgroup counts
forks refused at the process limit.

A full ``/tmp`` (a tmpfs of the limit's size) ends nothing: the run's writes fail with ENOSPC,
as on any machine, and a run that handles it goes on. Only where the run then fails does the
full ``/tmp`` become the news (:func:`failure_reason`), seen by its free space.

``/tmp`` lives in memory and its pages count against the session's memory limit too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil
from traitlets import Float, Int, Unicode, default
from traitlets.config import Configurable

from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.request import HardwareRequest, format_memory, parse_memory


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes, swap included (no swap beyond it)
    cpus: float  # cores of CPU time
    pids: int  # processes and threads
    tmp: int  # bytes of /tmp


@dataclass(frozen=True)
class LimitCounters:
    """How often the session ran into its limits so far (from its cgroups)."""

    oom_kills: int = 0
    pids_refused: int = 0


class SessionLimits(Configurable):
    """Per-session limits on this node (``c.SessionLimits.memory = "32G"`` ...)."""

    memory = Unicode("8G", config=True, help="Memory of a session that asks for none (--mem).")
    max_memory = Unicode(
        config=True, help="Most memory a session may ask for (default: 90% of the node's)."
    )
    cpus = Float(4.0, config=True, help="CPU cores of a session that asks for none (--cpus).")
    max_cpus = Float(config=True, help="Most cores a session may ask for (default: all).")
    pids = Int(4096, config=True, help="Processes and threads one session may have at once.")
    tmp = Unicode(
        "2G", config=True, help="Size of a session's private /tmp (memory, within its --mem)."
    )

    @default("max_memory")
    def _max_memory_default(self) -> str:
        return str(int(psutil.virtual_memory().total * 0.9))

    @default("max_cpus")
    def _max_cpus_default(self) -> float:
        return float(os.cpu_count() or 1)

    def resolve(self, request: HardwareRequest) -> Limits:
        """The limits a session runs under: what it asked for, else the defaults. A request
        over a bound is refused with the bound."""
        most = _size(self.max_memory, "SessionLimits.max_memory")
        memory = request.mem or min(_size(self.memory, "SessionLimits.memory"), most)
        if memory > most:
            raise RequestError(
                f"--mem {format_memory(memory)} is more than a session may have on this node "
                f"({format_memory(most)}): ask for at most that"
            )
        cpus = request.cpus or min(self.cpus, self.max_cpus)
        if cpus > self.max_cpus:
            raise RequestError(
                f"--cpus {cpus:g} is more than a session may have on this node "
                f"({self.max_cpus:g}): ask for at most that"
            )
        tmp = min(_size(self.tmp, "SessionLimits.tmp"), memory)
        return Limits(memory=memory, cpus=cpus, pids=self.pids, tmp=tmp)


def _size(text: str, setting: str) -> int:
    try:
        value = parse_memory(text, setting)
    except RequestError as exc:
        raise ValueError(str(exc)) from None
    if value is None:
        raise ValueError(f"{setting} is empty: set a size such as 8G")
    return value


def limit_reason(limits: Limits, before: LimitCounters, now: LimitCounters) -> str:
    """One line saying which limit the session went over since ``before``, or ``""``: what
    ends a session (an OOM kill, a fork refused)."""
    if now.oom_kills > before.oom_kills:
        return (
            f"it went over its memory limit of {format_memory(limits.memory)}: ask for more "
            "with --mem, or use less"
        )
    if now.pids_refused > before.pids_refused:
        return f"it reached its limit of {limits.pids} processes and threads: start fewer"
    return ""


def failure_reason(limits: Limits, before: LimitCounters, now: LimitCounters, tmp: Path) -> str:
    """Why a run that failed failed, where a limit explains it: :func:`limit_reason`, else a
    full ``/tmp`` (its writes failed with ENOSPC), else ``""``."""
    reason = limit_reason(limits, before, now)
    if not reason and tmp_full(tmp):
        reason = (
            f"it filled its /tmp ({format_memory(limits.tmp)}): write large files under your "
            "home or project directory instead"
        )
    return reason


def tmp_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_blocks > 0 and st.f_bavail == 0


def read_counters(paths: list[tuple[str, str]]) -> LimitCounters:
    """Counters from cgroup files: ``(memory events file, pids events file)`` candidates,
    cgroup v2 (``memory.events``: ``oom_kill N``; ``pids.events``: ``max N``) or v1
    (``memory.oom_control``: ``oom_kill N``)."""
    oom = pids = 0
    for memory_file, pids_file in paths:
        found = False
        for name, key in ((memory_file, "oom_kill"), (pids_file, "max")):
            try:
                text = Path(name).read_text()
            except OSError:
                continue
            found = True
            for line in text.splitlines():
                field, _, value = line.partition(" ")
                if field == key and value.strip().isdigit():
                    if key == "oom_kill":
                        oom = max(oom, int(value))
                    else:
                        pids = max(pids, int(value))
        if found:
            break
    return LimitCounters(oom_kills=oom, pids_refused=pids)

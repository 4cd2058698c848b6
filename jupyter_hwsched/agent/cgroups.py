"""A session's own control groups, for a runner without a container engine to make them.

``hwsched/NODE/SESSION`` in each controller the session needs (cgroup v1: ``memory``,
``pids``, ``cpu``, ``cpuacct``, ``freezer``; cgroup v2: one directory with those enabled):
the session's limits (memory with no swap beyond it, processes, CPU time), what it uses (CPU
seconds and memory, which stand in for a simulated GPU's load), how often it ran into its
limits, freezing it whole, and killing everything in it. A process joins by writing its own
pid into ``procs_files()`` before it starts the work, so that nothing it forks escapes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from jupyter_hwsched.agent.limits import LimitCounters, Limits, read_counters
from jupyter_hwsched.protocol.errors import UnavailableError

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
PERIOD_US = 100_000


def is_v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


class SessionCgroup:
    def __init__(self, node: str, session_id: str) -> None:
        self.v2 = is_v2()
        self.rel = Path("hwsched") / node / session_id
        if self.v2:
            self.dirs = {c: ROOT / self.rel for c in V1_CONTROLLERS}
        else:
            self.dirs = {c: ROOT / c / self.rel for c in V1_CONTROLLERS}

    @classmethod
    def leftovers(cls, node: str) -> list[str]:
        """The sessions of ``node`` whose cgroups exist (an agent that stopped uncleanly)."""
        base = ROOT / ("" if is_v2() else "pids") / "hwsched" / node
        try:
            return sorted(p.name for p in base.iterdir() if p.is_dir())
        except OSError:
            return []

    def create(self, limits: Limits | None) -> None:
        try:
            if self.v2:
                self._enable_v2()
            for path in set(self.dirs.values()):
                path.mkdir(parents=True, exist_ok=True)
            if limits is not None:
                self._limit(limits)
        except OSError as exc:
            raise UnavailableError(f"cannot make the session's control groups: {exc}") from None

    def _enable_v2(self) -> None:
        """Let the session's directory use memory, pids and cpu (each level enables them
        for the one below)."""
        path = ROOT
        for part in self.rel.parts:
            (path / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            path = path / part
            path.mkdir(exist_ok=True)

    def _limit(self, limits: Limits) -> None:
        quota = max(1000, int(limits.cpus * PERIOD_US))
        if self.v2:
            d = self.dirs["memory"]
            (d / "memory.max").write_text(str(limits.memory))
            _write_if(d / "memory.swap.max", "0")
            (d / "pids.max").write_text(str(limits.pids))
            (d / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            return
        memory = self.dirs["memory"]
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory))
        _write_if(memory / "memory.memsw.limit_in_bytes", str(limits.memory))
        (self.dirs["pids"] / "pids.max").write_text(str(limits.pids))
        cpu = self.dirs["cpu"]
        (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))

    def views(self) -> dict[str, str]:
        """Where the session sees its own cgroups -> the directories on the node."""
        if self.v2:
            return {"/sys/fs/cgroup": str(self.dirs["memory"])}
        return {f"/sys/fs/cgroup/{c}": str(d) for c, d in self.dirs.items() if c != "freezer"}

    def procs_files(self) -> list[str]:
        """Where a process writes its pid to join every controller of the session."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def pids(self) -> list[int]:
        try:
            text = (self.dirs["pids"] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def cpu_seconds(self) -> float | None:
        try:
            if self.v2:
                for line in (self.dirs["cpu"] / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
                return None
            return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def memory_bytes(self) -> int | None:
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        try:
            return int((self.dirs["memory"] / name).read_text())
        except (OSError, ValueError):
            return None

    def counters(self) -> LimitCounters:
        memory, pids = self.dirs["memory"], self.dirs["pids"]
        events = "memory.events" if self.v2 else "memory.oom_control"
        return read_counters([(str(memory / events), str(pids / "pids.events"))])

    def freeze(self, frozen: bool) -> None:
        if self.v2:
            _write_if(self.dirs["freezer"] / "cgroup.freeze", "1" if frozen else "0")
        else:
            _write_if(self.dirs["freezer"] / "freezer.state", "FROZEN" if frozen else "THAWED")

    def kill_all(self, timeout: float = 10.0) -> bool:
        """SIGKILL everything in the session, frozen so that no fork escapes; whether it is
        empty after."""
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            self.freeze(True)
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.freeze(False)  # a frozen process dies once thawed
            time.sleep(0.05)
        return not self.pids()

    def remove(self) -> None:
        """Kill what is left, then remove the directories (and the node's, once empty)."""
        self.kill_all()
        for path in sorted(set(self.dirs.values())):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)  # the last processes are still being reaped
            for parent in (path.parent, path.parent.parent):
                try:
                    parent.rmdir()
                except OSError:
                    break


def _write_if(path: Path, value: str) -> None:
    """Write a control file that a kernel may lack (no swap accounting, an old freezer)."""
    try:
        path.write_text(value)
    except FileNotFoundError:
        pass

"""What a node agent needs from whatever isolates a session: the runner interface.

A runner starts a session's environment (``create``), processes in it as the developer
(``exec``, output pumped by a thread), and destroys it (``remove``). ``DockerRunner`` roots a
container at the mounted share; ``HostRunner`` runs on the node's own root, for a GPU
workstation that is also the developer's machine and has no container engine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from traitlets import Bool
from traitlets.config import LoggingConfigurable

from jupyter_hwsched.agent.limits import LimitCounters, Limits

SESSION_LABEL = "hwsched.session"
NODE_LABEL = "hwsched.node"
#: where the agent's per-session files (connection files) appear inside the container
AGENT_DIR = "/.hwsched"
RUN_DIR = f"{AGENT_DIR}/run"
INIT = f"{AGENT_DIR}/init"

#: top-level directories that stay the node's own, never bound from the share
NODE_OWN = frozenset({"proc", "sys", "dev", "run", "tmp", "lost+found", ".hwsched"})

OutputCallback = Callable[[str, bytes], None]
ExitCallback = Callable[[int], None]


@dataclass
class ContainerSpec:
    session_id: str
    node: str
    root: Path  # the mounted share
    scratch: Path  # node-local directory for the container's /tmp
    run_dir: Path  # node-local directory shown at /.hwsched/run
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    extra_binds: dict[str, str] = field(default_factory=dict)  # host path -> container path
    shown: dict[str, str] = field(default_factory=dict)  # the share's /tmp/NAME, writable
    #: the node's read-only views of cached trees -> the trees' paths
    cached: dict[str, str] = field(default_factory=dict)
    limits: Limits | None = None  # None: unlimited (a runner that cannot enforce them)


class ExecProcess:
    """A process started inside a container; its output is pumped by a thread."""

    def __init__(self, pid: int, exec_id: str) -> None:
        self.pid = pid
        self.exec_id = exec_id
        self.exit_code: int | None = None
        #: why the process's stream ended other than by its exit (its engine went away)
        self.broken = ""
        self.signalled = 0  # the last signal the agent sent it (its client's Ctrl-C, say)

    def signal(self, signum: int) -> None:
        """Signal the process if it still runs; pid 0 or 1 would hit the wrong processes."""
        self.signalled = signum
        if self.exit_code is None and self.pid > 1:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass


class SpooledExec(ExecProcess):
    """A command whose output a keeper process writes to its spool (agent/spool.py), so that
    both outlive the agent. Known by pid *and* start time: the agent that signals it may be
    a later one than the agent that started it, and the pid may by then be another's."""

    def __init__(
        self, pid: int, exec_id: str, spool: Path, keeper: Any, started: float | None = None
    ) -> None:
        super().__init__(pid, exec_id)
        self.spool = spool
        self.keeper = keeper  # a Popen, or recovery.AdoptedProcess: poll(), kill()
        self.started = started if started is not None else start_time(pid)

    def alive(self) -> bool:
        return self.pid > 1 and self.started is not None and start_time(self.pid) == self.started

    def signal(self, signum: int) -> None:
        self.signalled = signum
        if self.exit_code is None and self.alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def stop_keeper(self) -> None:
        """The session is over: its keeper is too (it ends with its exec's stream)."""
        if self.keeper.poll() is None:
            self.keeper.kill()
        with contextlib.suppress(Exception):
            self.keeper.wait(10)


def start_time(pid: int) -> float | None:
    """When process ``pid`` started (with its pid, what names one process for good)."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, ValueError):
        return None


class Runner(LoggingConfigurable):
    """Base of the session runners; each method is called by ``NodeSession``."""

    spool_commands = Bool(
        True,
        config=True,
        help="Write a command's output to a spool on the node through a keeper process of "
        "its own (agent/spool.py), so that an agent that restarts takes the command back and "
        "its client reads on (the Docker and bubblewrap runners); on the bubblewrap runner, a "
        "kernel runs under a keeper too, so that it outlives the agent. False: the output "
        "streams to the agent alone, and a command (and a bubblewrap kernel) ends with the "
        "agent.",
    )

    @property
    def keeps_kernels(self) -> bool:
        """Whether a kernel runs under a keeper (``exec_spooled``), as a command does: where
        it would otherwise die with the agent (bubblewrap's ``--die-with-parent``)."""
        return False

    #: True: the session's root is the developer's share, mounted on the node. False: the
    #: session runs on the node's own root (the node is the developer's machine).
    roots_at_share = True
    #: whether ``create`` enforces a ContainerSpec's limits (memory, processes, CPU)
    enforces_limits = False

    def visible_run_dir(self, run_dir: Path) -> str:
        """Where the session's run directory (connection files) appears to its processes."""
        return RUN_DIR

    def create(self, spec: ContainerSpec) -> str:
        """Start the session's environment, idle; return its id (blocking)."""
        raise NotImplementedError

    def exec(
        self,
        container_id: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        user: str,
        on_output: OutputCallback,
        on_exit: ExitCallback,
    ) -> ExecProcess:
        """Start ``argv`` as ``user`` ("uid:gid"); stream output to ``on_output`` from a thread."""
        raise NotImplementedError

    def remove(self, container_id: str) -> None:
        """Destroy the environment and everything running in it; gone already is fine."""
        raise NotImplementedError

    def cpu_seconds(self, container_id: str) -> float | None:
        """CPU time used so far by everything in the environment, if the runner can tell.
        It stands in for GPU load where the GPUs are simulated."""
        return None

    def owns(self, container_id: str, pid: int) -> bool:
        """Whether a process of the host (by pid) is one of this container's (for NVML's
        per-process GPU memory); runners that cannot tell say no."""
        return False

    def memory_bytes(self, container_id: str) -> int | None:
        """Memory in use by everything in the environment, if the runner can tell. It stands
        in for GPU memory use where the GPUs are simulated."""
        return None

    def containers(self, node: str) -> dict[str, str]:
        """Session id -> environment id for everything of this node's (for leftover removal)."""
        raise NotImplementedError

    def limit_counters(self, container_id: str) -> LimitCounters:
        """How often the environment ran into its memory and process limits so far."""
        return LimitCounters()

    def pause(self, container_id: str) -> None:
        """Stop everything in the environment from running (the producer of a stream whose
        reader fell behind); ``resume`` lets it go on where it was."""
        raise NotImplementedError

    def resume(self, container_id: str) -> None:
        """Undo ``pause``; an environment that is not paused, or gone, is fine."""
        raise NotImplementedError

    #: whether what the environment binds from the node is opened as the developer (so the
    #: shares' mounts and the session's directories must be reachable by their uid)
    binds_as_developer = False
    #: whether GPUs can be given to and taken from a running environment (warm leases)
    binds_devices = False

    def bind_devices(self, container_id: str, devices: list[str]) -> None:
        """Give the running environment these devices (``HOST:CONTAINER`` entries)."""
        raise NotImplementedError

    def unbind_devices(self, container_id: str, devices: list[str]) -> None:
        """Take the devices back; only once nothing in the environment runs but its init."""
        raise NotImplementedError

    def stop_processes(self, container_id: str) -> None:
        """Kill everything in the environment but what keeps it alive (blocking)."""
        raise NotImplementedError

    #: whether a session's environment and what runs in it outlive the agent (a restarted
    #: agent can take them back: recovery.py); False where they die with it (bubblewrap's
    #: --die-with-parent, the host runner's children)
    survives_agent = False

    def spooled(
        self,
        container_id: str,
        pid: int,
        exec_id: str,
        spool: Path,
        keeper: Any,
        argv: list[str],
        started: float,
    ) -> SpooledExec:
        """The handle of a spooled command an earlier agent started (recovery.py)."""
        return SpooledExec(pid, exec_id, spool, keeper, started)

    def take_back_environment(self, container_id: str, spec: ContainerSpec) -> None:
        """An environment an earlier agent made, known to this runner again (recovery.py),
        so that it can start more processes in it (a kernel's restart)."""

    def takes_back(self, kind: str) -> bool:
        """Whether a restarted agent can take back a session of this kind (``kernel`` or
        ``command``): its processes outlive the agent (recovery.py)."""
        return self.survives_agent

    def exec_spooled(
        self,
        container_id: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        user: str,
        spool: Path,
        limit: int,
    ) -> SpooledExec | None:
        """Start ``argv`` as ``exec`` does, its output written to the spool ``spool`` by a
        keeper process (at most ``limit`` bytes held) rather than pumped to the agent, so
        that a restarted agent can take the command back; ``None`` where this runner cannot
        (its processes die with the agent anyway)."""
        return None

    def running(self, container_id: str) -> bool:
        """Whether the environment still exists and runs (paused counts as running); a
        runner that cannot tell says yes."""
        return True

    def remove_session(self, session_id: str, node: str) -> None:
        """Remove whatever environment of this session exists, found by its labels."""
        found = self.containers(node).get(session_id)
        if found:
            self.remove(found)

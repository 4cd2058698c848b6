"""A restarted node agent takes its live sessions back instead of killing them.

While a session runs, the agent keeps a record of it beside its files
(``sessions/ID/session.json``, root's alone): the start spec, the GPUs, the container, the
share's ``sshfs`` process and the kernel's process, each process by pid *and* start time (a
pid alone may by then name another process). An agent that starts reads the records and
takes back every session whose parts all still live:

* its runner lets it outlive the agent (``Runner.takes_back``): Docker's containers belong
  to the engine; a bubblewrap sandbox (a command's or a kernel's) is the child of its keeper,
  and the runner is told the session's environment again (``take_back_environment``) so that
  a restart of the kernel can start a new sandbox; the host runner's processes are the
  agent's own; and its container still runs;
* its share is still mounted, by the same ``sshfs`` process;
* for a kernel, the same kernel process runs (under a bubblewrap kernel's keeper, which
  has spooled what it wrote meanwhile), and its connection file is there: the agent's
  kernel manager takes it back by its id (``NodeKernelManager.adopt``), and the developer's
  side, which reconnects for a while after a dropped connection, finds it at the same
  address.

* for a command, its output's keeper still runs or has written how the command ended (the
  Docker runner's commands write their output to a spool on the node through a keeper
  process of their own: spool.py, keeper.py); the client, which reconnects for a while
  after a dropped connection, reads on from the byte it had got to.

A session that is not taken back is torn down
with the other leftovers, and its end is reported with the reason. The scheduler then
reconciles: the agent's first heartbeat names the sessions it runs, and the scheduler ends
on the node whatever it ended meanwhile (a client that went away while the agent was down
still loses its session by its lease).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from jupyter_hwsched.agent import spool
from jupyter_hwsched.agent.cache import NodeCache
from jupyter_hwsched.agent.limits import LimitCounters, Limits
from jupyter_hwsched.agent.mount import SshfsMount, mounted
from jupyter_hwsched.agent.runner import (
    ContainerSpec,
    ExecProcess,
    Runner,
    SpooledExec,
    start_time,
)
from jupyter_hwsched.agent.sessions import NodeSession
from jupyter_hwsched.protocol.errors import HwschedError
from jupyter_hwsched.protocol.records import GpuRecord, StartSpec

RECORD = "session.json"
VERSION = 1


class AdoptedProcess:
    """A process an earlier agent started, known by pid and start time; what the agent uses
    of ``subprocess.Popen`` (``poll``, ``wait``, ``kill``). It is not the agent's child: its
    exit status is not known, and reads as 255 (as for an exec whose engine went away)."""

    def __init__(self, pid: int, started: float) -> None:
        self.pid = pid
        self.started = started
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                proc = psutil.Process(self.pid)
                gone = proc.create_time() != self.started or proc.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                gone = True
            if gone:
                self.returncode = 255
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.02)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)


class AdoptedExec(ExecProcess):
    """A kernel process an earlier agent started in a container."""

    def __init__(self, process: AdoptedProcess, exec_id: str) -> None:
        self.process = process
        super().__init__(process.pid, exec_id)

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()

    @exit_code.setter
    def exit_code(self, value: int | None) -> None:
        pass  # known from the process itself


def _process(pid: int | None) -> dict[str, Any] | None:
    started = start_time(pid) if pid else None
    return {"pid": pid, "started": started} if started is not None else None


def _spooled(command: ExecProcess | None) -> dict[str, Any] | None:
    """A process whose keeper spools its output: what a later agent needs to take it back."""
    if not isinstance(command, SpooledExec) or command.started is None:
        return None  # not started yet, or its output goes to this agent alone
    return {
        "pid": command.pid,
        "started": command.started,
        "exec_id": command.exec_id,
        "spool": str(command.spool),
        "keeper": _process(command.keeper.pid),
    }


def save(session: NodeSession, kernel: ExecProcess | None) -> None:
    """Write down a running session (root's alone; replaced whole, never half-written)."""
    sshfs = session.mount.process if session.mount is not None else None
    record = {
        "version": VERSION,
        "id": session.id,
        "secret_hash": session.secret_hash,
        "node": session.node,
        "spec": session.spec.to_json(),
        "gpus": [g.to_json() for g in session.gpus],
        "container_id": session.container_id,
        "sshfs": _process(sshfs.pid if sshfs is not None else None),
        "kernel_id": session.kernel_id,
        "kernel": _kernel(kernel),
        "command": _spooled(session.command),
        "environment": _environment(session.environment),
        "started": session.started,
        "home": session.home,
        "host": session.host,
        "shared_mem": session.shared_mem,
        "limits": asdict(session.limits) if session.limits else None,
        "counters": asdict(session.counters),
        "cached": (
            {"directory": str(session.cached.directory), "binds": session.cached.binds}
            if session.cached is not None
            else None
        ),
    }
    path = session.base / RECORD
    part = path.with_suffix(".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(part, path)


def _kernel(kernel: ExecProcess | None) -> dict[str, Any] | None:
    if kernel is None:
        return None
    return _spooled(kernel) or {**(_process(kernel.pid) or {}), "exec_id": kernel.exec_id}


def _environment(spec: ContainerSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    record = asdict(spec)
    for name in ("root", "scratch", "run_dir"):
        record[name] = str(record[name])
    return record


def _spec_of(record: dict[str, Any] | None) -> ContainerSpec | None:
    if not record:
        return None
    fields = dict(record)
    for name in ("root", "scratch", "run_dir"):
        fields[name] = Path(fields[name])
    fields["limits"] = Limits(**fields["limits"]) if fields.get("limits") else None
    return ContainerSpec(**fields)


def _kept(runner: Runner, container: str, record: dict[str, Any], argv: list[str]) -> SpooledExec:
    """The handle of a process an earlier agent started under a keeper."""
    keeper = record.get("keeper") or {}
    kept = AdoptedProcess(int(keeper.get("pid") or 0), float(keeper.get("started") or 0))
    return runner.spooled(
        container,
        int(record["pid"]),
        str(record["exec_id"]),
        Path(str(record["spool"])),
        kept,
        argv,
        float(record["started"]),
    )


def update_kernel(session: NodeSession, kernel: ExecProcess) -> None:
    """The session's kernel was started again (a restart): its record names the new one."""
    if (session.base / RECORD).exists():
        save(session, kernel)


def forget(session: NodeSession) -> None:
    """The session ends (or is kept warm, which a restarted agent does not take back)."""
    with contextlib.suppress(FileNotFoundError):
        (session.base / RECORD).unlink()


def records(state_dir: Path) -> list[dict[str, Any]]:
    """What a previous agent wrote down; unreadable records are left to the leftovers."""
    found = []
    for path in sorted((state_dir / "sessions").glob(f"*/{RECORD}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("version") == VERSION:
            found.append(record)
    return found


def take_back(
    record: dict[str, Any],
    *,
    node: str,
    runner: Runner,
    state_dir: Path,
    sshfs_options: list[str],
    cache: NodeCache | None,
) -> tuple[NodeSession, ExecProcess | None] | str:
    """The session and its kernel process, rebuilt from its record; or why it cannot be."""
    spec = StartSpec.from_json(record["spec"])
    if record.get("node") != node:
        return f"it ran on node {record.get('node')}, not {node}"
    if not runner.takes_back(spec.kind):
        return (
            f"the node agent restarted, and its runner ({type(runner).__name__}) stops a "
            f"{spec.kind}'s processes with the agent"
        )
    command = record.get("command") or {}
    if spec.kind == "command" and not command:
        return (
            "the node agent restarted: the command's output went to the agent that stopped, "
            "so the command cannot be taken back"
        )
    container = record.get("container_id") or ""
    if not container or not runner.running(container):
        return "the node agent restarted, and the session's container was gone"
    environment = _spec_of(record.get("environment"))
    if environment is not None:
        runner.take_back_environment(container, environment)
    # the agent that stopped may have paused it (a client that fell behind: relay.py); the
    # new one has no reader behind, and would never let it go on
    runner.resume(container)
    session = NodeSession(
        id=record["id"],
        secret_hash=record["secret_hash"],
        node=node,
        spec=spec,
        gpus=[GpuRecord.from_json(g) for g in record["gpus"]],
        state_dir=state_dir,
        runner=runner,
        sshfs_options=list(sshfs_options),
        container_id=container,
        kernel_id=record.get("kernel_id"),
        started=float(record["started"]),
        limits=Limits(**record["limits"]) if record.get("limits") else None,
        counters=LimitCounters(**record.get("counters", {})),
        cache=cache,
        host=record.get("host", ""),
        home=record.get("home", ""),
        shared_mem=record.get("shared_mem"),
        environment=environment,
    )
    if runner.roots_at_share:
        sshfs = record.get("sshfs") or {}
        process = AdoptedProcess(int(sshfs.get("pid") or 0), float(sshfs.get("started") or 0))
        if spec.share is None or not mounted(session.mountpoint) or process.poll() is not None:
            return "the node agent restarted, and the session's share was no longer mounted"
        session.mount = SshfsMount(
            spec.share, session.mountpoint, session.base / "keys", session.sshfs_options
        )
        session.mount.process = process  # type: ignore[assignment]
    cached = record.get("cached")
    if cached and cache is not None:
        try:
            session.cached = cache.take_back(
                session.host,
                spec.user.name,
                spec.user.uid,
                Path(cached["directory"]),
                dict(cached["binds"]),
            )
        except HwschedError as exc:
            return f"the node agent restarted, and the session's cached trees were not: {exc}"
    if spec.kind == "command":
        session.command = _kept(runner, container, command, spec.argv)
        if session.command.keeper.poll() is not None and spool.ended(session.command.spool) is None:
            return "the node agent restarted, and the keeper of the command's output had stopped"
        return session, None
    kernel = record.get("kernel") or {}
    connection = session.base / f"agent-kernel-{session.kernel_id}.json"
    stopped = "the node agent restarted, and the session's kernel had stopped"
    if not session.kernel_id or not connection.exists():
        return stopped
    if kernel.get("spool"):  # under a keeper, which has spooled what it wrote meanwhile
        kept = _kept(runner, container, kernel, ["the kernel"])
        if kept.keeper.poll() is not None or spool.ended(kept.spool) is not None:
            return stopped
        session.follow_kernel(kept)
        return session, kept
    process = AdoptedProcess(int(kernel.get("pid") or 0), float(kernel.get("started") or 0))
    if process.poll() is not None:
        return stopped
    return session, AdoptedExec(process, str(kernel.get("exec_id", "")))

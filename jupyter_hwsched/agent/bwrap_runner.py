"""Sessions in bubblewrap sandboxes, for GPU nodes without a container engine.

The same environment as the Docker runner's container: the root is the developer's mounted
share (each of its top-level directories bound onto an empty root, the node's own ``/dev``,
``/proc``, ``/tmp`` and ``/.hwsched`` beside them, and the cached trees' views over theirs), the
allocated GPUs' device nodes and no other, a private ``/tmp``, the developer's uid and gid, no
capabilities, and new PID, IPC, UTS and network namespaces (only a loopback). The session's
limits are its own control groups (cgroups.py): memory with no swap beyond it, processes,
CPU time; ``remove`` kills everything in them.

Each process of the session (a kernel, a restart of it, a command) is a sandbox of its own
over the same mounts, started by the node's own ``sh`` and ``setpriv`` (never a program of
the share, which is the developer's), with the node's environment (the session's reaches the
sandbox alone, as ``--setenv`` options read from a file): the shell joins the session's
cgroups, ``setpriv`` takes the developer's real uid, gid and groups and keeps root's
effective ids, and ``bwrap`` then works as a setuid-root bubblewrap does: it makes the mounts,
opening what it binds as the developer (so the agent's paths to a session's mounts are
searchable by all: see service.py), and runs the work as the developer with no capability.
No user namespace is needed. Work as root (for the operator's ``root_users``) runs with every
capability dropped.

A command's sandbox, and a kernel's, is the child of a keeper (keeper.py) rather than of the
agent, so that an agent that restarts takes them back (recovery.py); with
``Runner.spool_commands`` off they die with the agent.

Warm leases keep no sandbox (``binds_devices`` is false): a sandbox's devices are bound when
its process starts, so each session on such a node starts cold.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from traitlets import Unicode

from jupyter_hwsched.agent.cgroups import SessionCgroup
from jupyter_hwsched.agent.devices import split_device
from jupyter_hwsched.agent.keeper import start_keeper
from jupyter_hwsched.agent.limits import LimitCounters
from jupyter_hwsched.agent.process import start_pumped
from jupyter_hwsched.agent.runner import (
    AGENT_DIR,
    NODE_OWN,
    RUN_DIR,
    ContainerSpec,
    ExecProcess,
    ExitCallback,
    OutputCallback,
    Runner,
    SpooledExec,
)
from jupyter_hwsched.protocol.errors import UnavailableError

#: join the cgroups (the files are the arguments before "--"), then run the rest
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'
#: what the node's own programs run with
NODE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: merged /usr, as the Docker runner's base image has it
_LINKS = (("usr/bin", "/bin"), ("usr/lib", "/lib"), ("usr/lib64", "/lib64"), ("usr/sbin", "/sbin"))


class BwrapRunner(Runner):
    enforces_limits = True
    binds_as_developer = True  # a setuid-mode bwrap opens its sources as the real uid

    bwrap = Unicode("bwrap", config=True, help="The bubblewrap program.")

    def takes_back(self, kind: str) -> bool:
        # a command's sandbox, and a kernel's, is its keeper's child
        return self.spool_commands

    @property
    def keeps_kernels(self) -> bool:
        return bool(self.spool_commands)

    def take_back_environment(self, container_id: str, spec: ContainerSpec) -> None:
        self._specs[container_id] = spec
        self._cgroups.setdefault(container_id, SessionCgroup(spec.node, spec.session_id))
        self._procs.setdefault(container_id, [])

    network = Unicode(
        "none",
        config=True,
        help="'none' (the default): each sandbox has only a loopback. 'host': the node's own "
        "network, and is refused, as for the Docker runner.",
    )

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        if self.network != "none":
            raise UnavailableError(
                "BwrapRunner.network must be 'none': sessions may not share the node's network"
            )
        self.tools = {
            name: shutil.which(program, path=NODE_ENV["PATH"]) or ""
            for name, program in (("bwrap", self.bwrap), ("setpriv", "setpriv"), ("sh", "sh"))
        }
        missing = [name for name, path in self.tools.items() if not path]
        if missing:
            raise UnavailableError(
                f"the bubblewrap runner needs {', '.join(missing)}: install Debian's "
                "'bubblewrap' (and util-linux)"
            )
        if os.geteuid() != 0:
            raise UnavailableError("the bubblewrap runner mounts shares: run the agent as root")
        self._specs: dict[str, ContainerSpec] = {}
        self._cgroups: dict[str, SessionCgroup] = {}
        self._procs: dict[str, list[subprocess.Popen[bytes]]] = {}

    def create(self, spec: ContainerSpec) -> str:
        env_id = f"bwrap-{spec.node}-{spec.session_id}"
        cgroup = SessionCgroup(spec.node, spec.session_id)
        cgroup.create(spec.limits)
        self._specs[env_id], self._cgroups[env_id], self._procs[env_id] = spec, cgroup, []
        return env_id

    def sandbox_args(
        self, spec: ContainerSpec, uid: int, cwd: str, cgroup: SessionCgroup
    ) -> list[str]:
        """bwrap's arguments for one process of the session (before its command)."""
        args = [
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--unshare-cgroup-try",
            "--hostname",
            socket.gethostname(),  # the node's, as the Docker runner gives
        ]
        if uid == 0:
            args += ["--cap-drop", "ALL"]
        cached = set(spec.cached.values())
        for entry in sorted(os.listdir(spec.root)):
            path = spec.root / entry
            if entry in NODE_OWN or f"/{entry}" in cached or path.is_symlink():
                continue
            if path.is_dir():
                args += ["--bind", str(path), f"/{entry}"]
        for target, link in _LINKS:
            path = spec.root / link[1:]
            if path.is_symlink() or not path.is_dir():
                args += ["--symlink", target, link]
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/sys"]
        # its own cgroups where the node's are, as a container shows them: its limits
        for inside, host in cgroup.views().items():
            args += ["--ro-bind", host, inside]
        real = False
        for entry in spec.devices:
            host, inside = split_device(entry)
            args += ["--dev-bind", host, inside]
            real = real or host.startswith("/dev/nvidia")
        if real:  # the driver's view of the hardware; not the node's network (/sys/class)
            for part in ("/sys/bus", "/sys/devices", "/sys/module"):
                args += ["--ro-bind-try", part, part]
        args += ["--bind", str(spec.scratch), "/tmp", "--dir", AGENT_DIR]
        args += ["--bind", str(spec.run_dir), RUN_DIR]
        for host, inside in spec.extra_binds.items():
            args += ["--ro-bind", host, inside]
        for host, inside in spec.shown.items():
            args += ["--bind", host, inside]
        for host, inside in spec.cached.items():
            args += ["--ro-bind", host, inside]
        return [*args, "--chdir", cwd]

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
        command, args_fd = self._sandboxed(container_id, argv, env, cwd, user)
        try:
            proc, handle = start_pumped(
                command,
                f"{container_id}-pending",
                on_output,
                on_exit,
                env=NODE_ENV,
                cwd="/",
                pass_fds=(args_fd,),
            )
        finally:
            os.close(args_fd)
        handle.exec_id = f"{container_id}-{proc.pid}"
        self._procs[container_id].append(proc)
        return SandboxProcess(handle, argv, self.log, self._pids(container_id))

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
        """The sandbox as the child of a keeper (keeper.py): ``--die-with-parent`` then ties
        it to the keeper, and the command outlives the agent."""
        if not self.spool_commands:
            return None
        command, args_fd = self._sandboxed(container_id, argv, env, cwd, user)
        try:
            keeper = start_keeper(
                ["process", str(spool), str(limit), str(args_fd), "--", *command],
                pass_fds=(args_fd,),
                env=_keeper_env(),
            )
        finally:
            os.close(args_fd)
        deadline = time.monotonic() + 30
        while not (spool / "pid").exists():
            if keeper.poll() is not None or time.monotonic() > deadline:
                keeper.kill()
                keeper.wait()
                raise UnavailableError("the command's keeper did not start its sandbox")
            time.sleep(0.005)
        pid = int((spool / "pid").read_text())
        exec_id = f"{container_id}-{pid}"
        return SpooledSandbox(pid, exec_id, spool, keeper, argv, self.log, self._pids(container_id))

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
        pids = self._pids(container_id)
        return SpooledSandbox(pid, exec_id, spool, keeper, argv, self.log, pids, started)

    def _pids(self, container_id: str) -> Callable[[], list[int]]:
        """The processes of a session's sandbox, from its cgroup (once known here)."""

        def pids() -> list[int]:
            cgroup = self._cgroups.get(container_id)
            return cgroup.pids() if cgroup is not None else []

        return pids

    def _sandboxed(
        self, container_id: str, argv: list[str], env: dict[str, str], cwd: str, user: str
    ) -> tuple[list[str], int]:
        """The command line that runs ``argv`` in the session's sandbox, and the descriptor
        it reads the sandbox's options from (the caller passes it on, then closes it)."""
        spec = self._specs.get(container_id)
        if spec is None:
            raise UnavailableError(f"session environment {container_id} is gone")
        uid, gid = (int(x) for x in user.split(":"))
        groups = ",".join(str(g) for g in spec.groups if g != gid)
        # the sandbox's options and the session's environment reach bwrap through a file:
        # the node's own programs run with the node's environment, never the developer's
        # (an LD_PRELOAD of theirs must not load into a process that is still root)
        cgroup = self._cgroups[container_id]
        options = [*self.sandbox_args(spec, uid, cwd, cgroup), "--clearenv"]
        for name, value in env.items():
            options += ["--setenv", name, value]
        args_fd = _args_file(options)
        command = [
            self.tools["sh"], "-c", _JOIN, "sh", *cgroup.procs_files(), "--",
            # the developer's real ids, root's effective ones: bwrap makes the mounts as
            # a setuid-root bwrap would, then becomes the developer, with no capability
            self.tools["setpriv"], f"--ruid={uid}", f"--rgid={gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            "--", self.tools["bwrap"], "--args", str(args_fd), "--", *argv,
        ]  # fmt: skip
        return command, args_fd

    def remove(self, container_id: str) -> None:
        cgroup = self._cgroups.pop(container_id, None)
        if cgroup is not None:
            cgroup.remove()
        for proc in self._procs.pop(container_id, []):
            if proc.poll() is None:
                proc.kill()
        self._specs.pop(container_id, None)

    def cpu_seconds(self, container_id: str) -> float | None:
        cgroup = self._cgroups.get(container_id)
        return cgroup.cpu_seconds() if cgroup else None

    def owns(self, container_id: str, pid: int) -> bool:
        cgroup = self._cgroups.get(container_id)
        return cgroup is not None and pid in cgroup.pids()

    def memory_bytes(self, container_id: str) -> int | None:
        cgroup = self._cgroups.get(container_id)
        return cgroup.memory_bytes() if cgroup else None

    def limit_counters(self, container_id: str) -> LimitCounters:
        cgroup = self._cgroups.get(container_id)
        return cgroup.counters() if cgroup else LimitCounters()

    def pause(self, container_id: str) -> None:
        if container_id in self._cgroups:
            self._cgroups[container_id].freeze(True)

    def resume(self, container_id: str) -> None:
        if container_id in self._cgroups:
            self._cgroups[container_id].freeze(False)

    def containers(self, node: str) -> dict[str, str]:
        """Sessions whose cgroups exist: those of this agent, and an earlier one's leftovers
        (made known here, so that ``remove`` kills what runs in them)."""
        found = {}
        for session_id in SessionCgroup.leftovers(node):
            env_id = f"bwrap-{node}-{session_id}"
            self._cgroups.setdefault(env_id, SessionCgroup(node, session_id))
            found[session_id] = env_id
        return found


def _keeper_env() -> dict[str, str]:
    """The node's environment, and where the agent finds its own modules (a development
    checkout's PYTHONPATH): the keeper is the agent's program, and runs this package."""
    found = os.environ.get("PYTHONPATH")
    return {**NODE_ENV, "PYTHONPATH": found} if found else dict(NODE_ENV)


def _args_file(options: list[str]) -> int:
    """A descriptor of an unlinked file that holds ``options``, NUL-separated, at its start."""
    with tempfile.TemporaryFile() as out:
        out.write(b"".join(o.encode() + b"\0" for o in options))
        out.flush()
        fd = os.dup(out.fileno())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class SandboxProcess(ExecProcess):
    """A process in a sandbox, signalled as itself: bwrap is its parent, in between, and
    passes no signal on, so a signal goes to the process that runs the command."""

    def __init__(
        self,
        outer: ExecProcess,
        argv: list[str],
        log: logging.Logger,
        pids: Callable[[], list[int]],
    ) -> None:
        super().__init__(outer.pid, outer.exec_id)
        self.outer = outer
        self.argv = argv
        self.log = log
        self.pids = pids

    @property
    def exit_code(self) -> int | None:
        return self.outer.exit_code

    @exit_code.setter
    def exit_code(self, value: int | None) -> None:
        pass  # the outer process's, set by its reaper

    def signal(self, signum: int) -> None:
        self.signalled = signum
        if self.outer.exit_code is None:
            signal_sandboxed(self.pid, self.argv, signum, self.exec_id, self.log, self.pids)


def signal_sandboxed(
    sandbox: int,
    argv: list[str],
    signum: int,
    exec_id: str,
    log: logging.Logger,
    pids: Callable[[], list[int]],
) -> None:
    """Signal the process that runs ``argv`` in the sandbox of bwrap ``sandbox`` (bwrap passes
    no signal on): found below bwrap, else among the session cgroup's processes."""
    target = inner_process(sandbox) or _in_cgroup(pids())
    try:
        if target is not None:
            os.kill(target, signum)
        elif signum in (signal.SIGKILL, signal.SIGTERM):
            os.kill(sandbox, signum)  # the sandbox is not yet up: end its start
        else:
            log.warning(
                "%s: no process runs %s in the sandbox (%s): %s not delivered",
                exec_id,
                argv[:1],
                _tree(sandbox),
                signal.Signals(signum).name,
            )
    except ProcessLookupError:
        pass


def inner_process(sandbox: int) -> int | None:
    """The host pid of the process running the command, below bwrap (``sandbox``): the first
    descendant that is not bwrap (its reaper in the sandbox's PID namespace is). Not found
    by its command line, which need not be the one asked for: a launcher on the PATH (a
    pyenv shim) runs the command under its full path."""
    try:
        children = psutil.Process(sandbox).children(recursive=True)
    except psutil.Error:
        return None
    return _command_of(children)


def _in_cgroup(pids: list[int]) -> int | None:
    """The earliest process of the session's cgroup that is not bwrap (which joined it
    first, as its reaper did)."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found.append((proc.create_time(), pid, proc))
        except psutil.Error:
            continue
    return _command_of([proc for _, _, proc in sorted(found, key=lambda f: (f[0], f[1]))])


def _command_of(processes: list[psutil.Process]) -> int | None:
    for proc in processes:
        try:
            if proc.name() != "bwrap":
                return int(proc.pid)
        except psutil.Error:
            continue
    return None


def _tree(sandbox: int) -> str:
    """What runs below bwrap, for a message."""
    try:
        procs = psutil.Process(sandbox).children(recursive=True)
        return ", ".join(f"{p.pid} {p.cmdline()[:1]}" for p in procs) or "nothing below bwrap"
    except psutil.Error as exc:
        return f"bwrap {sandbox}: {exc}"


class SpooledSandbox(SpooledExec):
    """A command in a sandbox whose keeper spools its output: signalled as itself, found
    below its bwrap (whose pid, and start time, are the record's)."""

    def __init__(
        self,
        pid: int,
        exec_id: str,
        spool: Path,
        keeper: Any,
        argv: list[str],
        log: logging.Logger,
        pids: Callable[[], list[int]],
        started: float | None = None,
    ) -> None:
        super().__init__(pid, exec_id, spool, keeper, started)
        self.argv = argv
        self.log = log
        self.pids = pids

    def signal(self, signum: int) -> None:
        self.signalled = signum
        if self.exit_code is None and self.alive():
            signal_sandboxed(self.pid, self.argv, signum, self.exec_id, self.log, self.pids)

"""One session on the node: its mount, its container, and what runs inside.

``NodeSession.prepare`` mounts the share and starts the container; ``exec_kernel`` and
``exec_command`` start processes in it as the developer; ``close`` undoes everything, in the
reverse order, and may be called any number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jupyter_hwsched.agent.cache import NodeCache, SessionCache
from jupyter_hwsched.agent.gpus import driver_libraries
from jupyter_hwsched.agent.limits import LimitCounters, Limits, failure_reason, limit_reason
from jupyter_hwsched.agent.mount import SshfsMount, mounted, unmount
from jupyter_hwsched.agent.runner import (
    AGENT_DIR,
    NODE_OWN,
    ContainerSpec,
    ExecProcess,
    ExitCallback,
    OutputCallback,
    Runner,
    SpooledExec,
)
from jupyter_hwsched.agent.spool import SEGMENT_BYTES, SpoolReader, segments, trim
from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.records import GpuRecord, StartSpec

#: where the node's NVIDIA driver libraries appear in the container
DRIVER_DIR = f"{AGENT_DIR}/driver"

#: variables the agent always sets itself; a client's values for them are dropped
AGENT_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HOSTNAME",
    "PYTHONDONTWRITEBYTECODE",
)


class StartLog:
    """What a process wrote (stdout and stderr together), its first and last few KiB, kept to
    say why it failed to start. Bounded, whatever the process writes."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._head = bytearray()
        self._tail = bytearray()

    def add(self, data: bytes) -> None:
        room = self.keep - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            del self._tail[: max(0, len(self._tail) - self.keep)]

    def lines(self) -> list[str]:
        text = (self._head + (b"\n...\n" if self._tail else b"") + self._tail).decode(
            errors="replace"
        )
        return [line.rstrip() for line in text.splitlines() if line.strip()]

    def summary(self, most: int = 6) -> str:
        """One line: the lines before a Python traceback and the exception it ended with, or
        else the first lines; joined with " | ". "" if the process wrote nothing."""
        lines = self.lines()
        marker = "Traceback (most recent call last):"
        if marker in lines:
            before = lines[: lines.index(marker)]
            ending = [line.strip() for line in lines if line[:1] not in (" ", "\t")]
            lines = [*before[-(most - 1) :], ending[-1]] if ending else before
        return " | ".join(lines[:most])


def gpu_nodes(gpus: list[GpuRecord]) -> list[str]:
    """The device entries of these GPUs, one each: a real GPU's /dev/nvidiaN, or for a
    simulated GPU a stand-in of /dev/null's numbers at /dev/nvidiaINDEX (see devices.py), so
    that what a container may open is the same either way."""
    if gpus and gpus[0].simulated:
        return [f"/dev/null:/dev/nvidia{g.index}" for g in gpus]
    return [f"/dev/nvidia{g.index if g.minor is None else g.minor}" for g in gpus]


def gpu_devices(gpus: list[GpuRecord]) -> tuple[list[str], dict[str, str]]:
    """Device nodes of these GPUs, with the driver's own nodes and libraries for real ones."""
    devices = gpu_nodes(gpus)
    if not gpus or gpus[0].simulated:
        return devices, {}
    for extra in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"):
        if os.path.exists(extra):
            devices.append(extra)
    binds = {}
    for entry in driver_libraries():
        path, _, name = entry.partition(":")
        binds[os.path.realpath(path)] = f"{DRIVER_DIR}/{name}"
    return devices, binds


@dataclass
class NodeSession:
    id: str
    secret_hash: str  # of the secret its client holds; see authorizer.py
    node: str
    spec: StartSpec
    gpus: list[GpuRecord]
    state_dir: Path
    runner: Runner
    sshfs_options: list[str]
    container_id: str | None = None
    mount: SshfsMount | None = None
    kernel_id: str | None = None
    command: ExecProcess | None = None
    #: what the session's container was made from (recovery.py keeps it)
    environment: ContainerSpec | None = None
    #: the kernel's process, where it runs under a keeper of its own (Runner.keeps_kernels)
    kernel: SpooledExec | None = None
    started: float = field(default_factory=time.time)
    end_reason: str | None = None
    starting: asyncio.Future[None] | None = None  # done once the start path has finished
    torn_down: bool = False
    kernel_log: StartLog = field(default_factory=StartLog)  # the kernel's first lines
    limits: Limits | None = None  # None: the runner enforces none
    counters: LimitCounters = field(default_factory=LimitCounters)  # at the start
    cache: NodeCache | None = None  # the node's cache of read-mostly trees, if it keeps one
    host: str = ""  # the developer machine the scheduler verified (whose cache is used)
    cached: SessionCache | None = None  # what this session uses of the cache
    #: the session whose directories, mount and container these are: itself, or the first
    #: session of the warm lease it runs in (see warm.py)
    home: str = ""
    #: a resident kernel sharing its GPU: the GPU memory it asked for (see sharing.py)
    shared_mem: int | None = None
    #: which relay of the spooled output is current (relay_output)
    _relay: object = None
    #: the connection a command's output goes to (handlers.CommandHandler)
    client: Any = None

    @property
    def uid(self) -> int:
        return self.spec.user.uid

    @property
    def gid(self) -> int:
        return self.spec.user.gid

    @property
    def base(self) -> Path:
        return self.state_dir / "sessions" / (self.home or self.id)

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def mountpoint(self) -> Path:
        return self.state_dir / "mnt" / (self.home or self.id)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.spec.env.items() if k not in AGENT_ENV}
        simulated = any(g.simulated for g in self.gpus)
        visible = ",".join(str(g.index) if simulated else g.uuid for g in self.gpus)
        env.update(
            HOME=self.spec.user.home,
            USER=self.spec.user.name,
            LOGNAME=self.spec.user.name,
            CUDA_VISIBLE_DEVICES=visible,
            NVIDIA_VISIBLE_DEVICES=visible,
            HWSCHED_SESSION=self.id,
            HWSCHED_NODE=self.node,
            HWSCHED_GPUS=",".join(str(g.index) for g in self.gpus),
            # read the bytecode already on the share, never write any there. (A pycache
            # prefix would keep writes off too, but would also hide the existing .pyc files
            # and recompile every module at each start.)
            PYTHONDONTWRITEBYTECODE="1",
        )
        if simulated:
            env["HWSCHED_SIMULATED_GPUS"] = "1"
        elif self.runner.roots_at_share:
            # the node's driver libraries, bound by _gpu_devices, come first
            env["LD_LIBRARY_PATH"] = ":".join(
                p for p in (DRIVER_DIR, self.spec.env.get("LD_LIBRARY_PATH", "")) if p
            )
        return env

    def prepare(self) -> None:
        """Mount the share and start the container (blocking; run off the event loop)."""
        # the kernel binds its sockets here, as the developer; nobody else may enter
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chown(self.run_dir, self.uid, self.gid)
        scratch = self.scratch
        scratch.mkdir(exist_ok=True)
        scratch.chmod(0o1777)
        if self.limits is not None and os.geteuid() == 0:
            # a /tmp of the limit's size, in memory (charged to the session's memory limit)
            options = f"size={self.limits.tmp},mode=1777,nosuid,nodev"
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "hwsched-tmp", str(scratch)],
                check=True,
                capture_output=True,
            )
        root = Path("/")
        if self.runner.roots_at_share:
            if self.spec.share is None:
                raise RequestError(
                    "this node runs work in a container rooted at your share: "
                    "the request must carry the share's credentials"
                )
            self.mount = SshfsMount(
                self.spec.share, self.mountpoint, self.base / "keys", self.sshfs_options
            )
            self.mount.mount()
            root = self.mountpoint
            self._attach_cache()
        if not (root / self.spec.cwd.lstrip("/")).is_dir():
            raise RequestError(
                f"the current directory {self.spec.cwd} cannot be opened through the share "
                f"as {self.spec.user.name}: run from a directory that user can enter"
            )
        devices, binds = self._gpu_devices() if self.runner.roots_at_share else ([], {})
        shown = self._shown(root) if self.runner.roots_at_share else {}
        self.environment = ContainerSpec(
            session_id=self.id,
            node=self.node,
            root=root,
            scratch=scratch,
            run_dir=self.run_dir,
            uid=self.uid,
            gid=self.gid,
            groups=list(self.spec.user.groups),
            devices=devices,
            extra_binds=binds,
            shown=shown,
            cached=self.cached.binds if self.cached else {},
            limits=self.limits,
        )
        self.container_id = self.runner.create(self.environment)
        self.counters = self.runner.limit_counters(self.container_id)

    def _attach_cache(self) -> None:
        """Serve the manifest's trees from the node's cache, where it keeps one."""
        manifest = self.spec.share.cache if self.spec.share else None
        if self.cache is None or not self.cache.enabled or manifest is None:
            return
        trees = [t for t in manifest.trees if t.split("/")[1] not in NODE_OWN]
        try:
            self.cached = self.cache.attach(
                replace(manifest, trees=tuple(trees)),
                self.host,
                self.spec.user.name,
                self.uid,
                self.spec.user.home,
                self.mountpoint,
                self.id,
                self.base / "cached",
            )
        except OSError as exc:  # the work runs on, every file through the share
            self.runner.log.warning("session %s: the node's cache is unusable: %s", self.id, exc)

    @property
    def scratch(self) -> Path:
        """The node-local directory shown as the session's /tmp."""
        return self.base / "tmp"

    def over_limit(self) -> str:
        """One line naming the limit the session went over (one that ends it), or ``""``."""
        if self.limits is None or self.container_id is None:
            return ""
        now = self.runner.limit_counters(self.container_id)
        return limit_reason(self.limits, self.counters, now)

    def failure_reason(self) -> str:
        """Where the run failed: the limit that explains it (a full ``/tmp`` among them), or
        ``""``."""
        if self.limits is None or self.container_id is None:
            return ""
        now = self.runner.limit_counters(self.container_id)
        return failure_reason(self.limits, self.counters, now, self.scratch)

    def environment_lost(self, wait: float = 0.0) -> str:
        """One line if the session's container stopped under it (its engine restarted or
        stopped it), else ``""``; ``wait``: seconds to give a container being stopped."""
        if self.container_id is None:
            return ""
        deadline = time.monotonic() + wait
        while True:
            try:
                if not self.runner.running(self.container_id):
                    break
            except Exception as exc:  # the engine itself is away
                return f"the node's container engine stopped answering ({exc})"
            if time.monotonic() >= deadline:
                return ""
            time.sleep(0.1)
        return (
            "the session's container stopped: the node's container engine restarted or stopped it"
        )

    def _shown(self, root: Path) -> dict[str, str]:
        """The developer's /tmp/NAME paths the run needs, from the share, over the private
        /tmp; a link is refused, as for every directory bound from the share."""
        shown = {}
        for path in self.spec.shown:
            source = root / path.lstrip("/")
            link = source.is_symlink()
            if link or not source.exists():
                why = "a link" if link else f"not readable as {self.spec.user.name}"
                raise RequestError(
                    f"{path} cannot be shown on the node: it is {why} through the share; "
                    "move what the run needs out of /tmp"
                )
            shown[str(source)] = path
        return shown

    def gpu_nodes(self) -> list[str]:
        return gpu_nodes(self.gpus)

    def _gpu_devices(self) -> tuple[list[str], dict[str, str]]:
        return gpu_devices(self.gpus)

    def kernel_argv(self) -> list[str]:
        """The kernel's command: the client's, and a kept kernel's imports ahead (ipykernel's
        ``exec_lines``, run before the kernel answers)."""
        argv = list(self.spec.argv)
        if self.home and self.spec.preload:  # only a kept kernel imports ahead
            argv += [f"--IPKernelApp.exec_lines=import {name}" for name in self.spec.preload]
        return argv

    def exec_kernel(self, argv: list[str]) -> ExecProcess:
        assert self.container_id is not None
        self.kernel_log = StartLog()
        args = (self.container_id, argv, self.env(), self.spec.cwd, f"{self.uid}:{self.gid}")
        if self.runner.keeps_kernels:
            # a spool of its own per start (a restart's old kernel may still be ending)
            spool = self.base / f"kernel-output-{secrets.token_hex(4)}"
            kernel = self.runner.exec_spooled(*args, spool, KERNEL_SPOOL_BYTES)
            if kernel is not None:
                self.follow_kernel(kernel)
                return kernel
        return self.runner.exec(*args, self._kernel_output, lambda code: None)

    def _kernel_output(self, stream: str, data: bytes) -> None:
        self.kernel_log.add(data)
        self.runner.log.debug(
            "[%s kernel %s] %s", self.id, stream, data.decode(errors="replace").rstrip()
        )

    def follow_kernel(self, kernel: SpooledExec) -> None:
        """Read a kept kernel's output (its first lines say why a start failed) from its
        spool as its keeper writes it, dropping what was read, in a thread; its exit status
        once it ended, then its spool goes. Also for a kernel an earlier agent started: its
        output from what that agent had not read."""
        self.kernel = kernel
        found = segments(kernel.spool)
        reader = SpoolReader(kernel.spool, found[0] if found else 0)
        reader.POLL = 0.1  # a kernel's end need not be seen as soon as a command's

        def relay() -> None:
            dropped = [reader.offset]

            def read(offset: int) -> None:
                if offset - dropped[0] >= SEGMENT_BYTES:
                    trim(kernel.spool, offset)
                    dropped[0] = offset

            _relay_spool(kernel, reader, self._kernel_output, lambda: False, read)
            shutil.rmtree(kernel.spool, ignore_errors=True)

        threading.Thread(target=relay, name=f"kernel-output-{self.id}", daemon=True).start()

    @property
    def spool(self) -> Path:
        """Where the command's output is spooled (agent/spool.py), where its runner can."""
        return self.base / f"output-{self.id}"

    def exec_command(
        self,
        on_output: OutputCallback,
        on_exit: ExitCallback,
        spool_limit: int,
        unwanted: Callable[[], bool] = lambda: False,
    ) -> ExecProcess:
        """Start the command, its output to ``on_output`` from a thread: through its spool
        where the runner keeps one (a restarted agent can take it back; ``unwanted`` as
        for ``relay_output``), else directly."""
        assert self.container_id is not None
        exited = self._command_exited(on_exit)
        args = (self.container_id, self.spec.argv, self.env(), self.spec.cwd)
        user = f"{self.uid}:{self.gid}"
        spooled = self.runner.exec_spooled(*args, user, self.spool, spool_limit)
        if spooled is None:
            self.command = self.runner.exec(*args, user, on_output, exited)
        else:
            self.command = spooled
            self.relay_output(0, on_output, exited, unwanted)
        return self.command

    def relay_output(
        self,
        offset: int,
        on_output: OutputCallback,
        on_exit: ExitCallback,
        unwanted: Callable[[], bool] = lambda: False,
    ) -> None:
        """Hand the spooled output from byte ``offset`` on to ``on_output``, then its end to
        ``on_exit``, in a thread; a later call (a client that reconnected) takes over from
        the one before. What was handed on is dropped from the spool while ``unwanted()``
        (a client that does not acknowledge, or went away); else the client's
        acknowledgements drop it. ValueError: the output at ``offset`` is no longer
        spooled."""
        command = self.command
        assert isinstance(command, SpooledExec), "only a spooled command is relayed"
        reader = SpoolReader(command.spool, offset)
        token = self._relay = object()

        def stopped() -> bool:
            return self._relay is not token

        dropped = [offset]

        def handed_on(offset: int) -> None:
            if unwanted() and offset - dropped[0] >= SEGMENT_BYTES:
                trim(command.spool, offset)
                dropped[0] = offset

        def relay() -> None:
            if _relay_spool(command, reader, on_output, stopped, handed_on):
                assert command.exit_code is not None
                on_exit(command.exit_code)  # else taken over by a later connection

        threading.Thread(target=relay, name=f"relay-{self.id}", daemon=True).start()

    def _command_exited(self, on_exit: ExitCallback) -> ExitCallback:
        """``on_exit``, once what ended the command is known (the news, where it was not
        the command's own doing)."""

        def exited(code: int) -> None:
            if code != 0 and self.end_reason is None:
                # killed for going over a limit, or with its container: that, not the exit
                # status, is the news
                command = self.command
                broken = command.broken if command is not None else ""
                # SIGTERM or SIGKILL that nobody here sent: its engine may be stopping its
                # container, which it then says within moments
                foreign = code in (128 + 9, 128 + 15) and not (command and command.signalled)
                wait = 5.0 if foreign else 0.0
                reason = self.failure_reason() or broken or self.environment_lost(wait)
                if reason and self.end_reason is None:  # an end meanwhile says it better
                    self.end_reason = reason
            on_exit(code)

        return exited

    def close(self) -> None:
        """Destroy the container, unmount, remove the session's files (blocking). Each step
        runs even if one before it failed; the files go only once nothing is mounted."""
        try:
            if self.container_id:
                self.runner.remove(self.container_id)
                self.container_id = None
            else:
                self.runner.remove_session(self.home or self.id, self.node)  # made, then failed
        except Exception as exc:
            self.runner.log.error("session %s: removing its container failed: %s", self.id, exc)
        for kept in (self.command, self.kernel):
            if isinstance(kept, SpooledExec):
                kept.stop_keeper()
                shutil.rmtree(kept.spool, ignore_errors=True)
        shutil.rmtree(self.spool, ignore_errors=True)  # a warm lease's files stay: not this
        if self.cached is not None and self.cache is not None:
            try:
                detached = self.cache.detach(self.cached)
            except Exception as exc:  # what counts is whether a tree is still mounted
                self.runner.log.error("session %s: detaching its cache: %s", self.id, exc)
                detached = not any(mounted(target) for target in self.cached.binds)
            if not detached:
                self.runner.log.error("session %s: a cached tree is still mounted", self.id)
                return
        if self.cached is not None:
            self.runner.log.info("session %s cache: %s", self.id, self.cached.describe())
        if mounted(self.scratch):
            unmount(self.scratch)
            if mounted(self.scratch):
                self.runner.log.error("session %s: %s is still mounted", self.id, self.scratch)
                return
        if self.mount is not None:
            self.mount.unmount()
            if mounted(self.mountpoint):
                self.runner.log.error("session %s: %s is still mounted", self.id, self.mountpoint)
                return
            self.mount = None
        shutil.rmtree(self.base, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.spec.kind,
            "user": self.spec.user.name,
            "uid": self.uid,
            "gpus": [g.to_json() for g in self.gpus],
            "kernel_id": self.kernel_id,
            "container": self.container_id,
            "mountpoint": str(self.mountpoint),
            "cache": self.cached.describe() if self.cached else None,
            "started": self.started,
        }


#: what a kept kernel's keeper holds of its output while no agent reads it (the kernel then
#: blocks on its next write to stdout or stderr until one does)
KERNEL_SPOOL_BYTES = 4 * 2**20


def _relay_spool(
    process: SpooledExec,
    reader: SpoolReader,
    on_output: OutputCallback,
    stopped: Callable[[], bool],
    handed_on: Callable[[int], None],
) -> bool:
    """Hand the spool's output on as it comes (``handed_on(offset)`` after each piece), then
    set how the process ended on it; False where ``stopped()`` stopped it first."""
    frames = reader.frames(stopped)
    while True:
        try:
            stream, data = next(frames)
        except StopIteration as stop:
            how = stop.value
            break
        on_output(stream, data)
        handed_on(reader.offset)
    if how is None:
        return False
    if process.keeper.poll() is None:  # it exits once it has written the end
        with contextlib.suppress(Exception):
            process.keeper.wait(5)
    process.broken = str(how.get("broken") or "")
    code = how.get("code")
    process.exit_code = 255 if code is None else int(code)
    return True

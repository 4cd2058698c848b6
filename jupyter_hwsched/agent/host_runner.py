"""Sessions on the node's own root, for a GPU machine that is also the developer's machine.

Where no container engine exists (seen on GPU workstations and on the lent GPU machines these
tests run on), ``hwsched up`` can still hand out the machine's GPUs one session at a time: the
work runs as the developer's uid in its own process group, with only the allocated GPUs
visible, and ``remove`` kills the group. There is no share and no isolation of the filesystem,
so the agent accepts such sessions only from its own host, and starts with this runner only
where the operator has said that one developer uses the pool (``single_user``): plain
processes of two developers on one node could reach each other's files and processes.

Where the agent runs as root and ``unshare`` and ``setpriv`` exist, each process gets a network
namespace of its own (only a loopback), as a container would: its kernel's channels are unix
sockets, so it needs none.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
from traitlets import Bool

from jupyter_hwsched.agent.process import kill_group, start_pumped
from jupyter_hwsched.agent.runner import (
    ContainerSpec,
    ExecProcess,
    ExitCallback,
    OutputCallback,
    Runner,
)
from jupyter_hwsched.protocol.errors import UnavailableError

#: a new network namespace with its loopback up, then the developer's uid, then the work
_NO_NETWORK = 'ip link set lo up 2>/dev/null; exec "$@"'


class HostRunner(Runner):
    roots_at_share = False

    single_user = Bool(
        False,
        config=True,
        help="Say that one developer uses this pool. The host runner runs work as plain "
        "processes on the node, where one developer could reach another's; the agent refuses "
        "to start with it otherwise ('hwsched up' sets it).",
    )
    isolate_network = Bool(
        True,
        config=True,
        help="Give each process a network namespace of its own (only a loopback), where the "
        "agent runs as root and unshare and setpriv exist.",
    )

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        if not self.single_user:
            raise UnavailableError(
                "the host runner runs work as plain processes on this node, where developers "
                "could reach each other's files and processes: use the Docker runner for a "
                "pool that several developers share, or set --HostRunner.single_user=True if "
                "only one developer uses it"
            )
        self.unshare = (
            self.isolate_network
            and os.geteuid() == 0
            and bool(shutil.which("unshare") and shutil.which("setpriv"))
        )
        if self.isolate_network and not self.unshare:
            self.log.warning(
                "host runner: sessions share the node's network (needs root, unshare and setpriv)"
            )
        self._groups: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._specs: dict[str, ContainerSpec] = {}

    def visible_run_dir(self, run_dir: Path) -> str:
        return str(run_dir)

    def create(self, spec: ContainerSpec) -> str:
        env_id = f"host-{spec.session_id}"
        self._groups[env_id] = []
        self._specs[env_id] = spec
        return env_id

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
        spec = self._specs[container_id]
        uid, gid = (int(x) for x in user.split(":"))
        as_other = os.geteuid() == 0 and uid != 0
        if self.unshare:
            groups = ",".join(str(g) for g in spec.groups if g != gid) or None
            argv = [
                "unshare", "--net", "--", "sh", "-c", _NO_NETWORK, "sh",
                "setpriv", f"--reuid={uid}", f"--regid={gid}",
                f"--groups={groups}" if groups else "--clear-groups",
                "--", *argv,
            ]  # fmt: skip
            as_other = False  # setpriv switches, after the namespace is made
        proc, handle = start_pumped(
            argv,
            f"{container_id}-pending",
            on_output,
            on_exit,
            env=env,
            cwd=cwd,
            user=uid if as_other else None,
            group=gid if as_other else None,
            extra_groups=[g for g in spec.groups if g != gid] if as_other else None,
        )
        handle.exec_id = f"{container_id}-{proc.pid}"
        self._groups[container_id].append(proc)
        return handle

    def remove(self, container_id: str) -> None:
        for proc in self._groups.pop(container_id, []):
            if proc.poll() is None:
                kill_group(proc.pid)
        self._specs.pop(container_id, None)

    def cpu_seconds(self, container_id: str) -> float | None:
        total = 0.0
        for proc in self._groups.get(container_id, []):
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def memory_bytes(self, container_id: str) -> int | None:
        total = 0
        for proc in self._groups.get(container_id, []):
            try:
                root = psutil.Process(proc.pid)
                total += sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                continue
        return total

    def pause(self, container_id: str) -> None:
        self._signal_groups(container_id, signal.SIGSTOP)

    def resume(self, container_id: str) -> None:
        self._signal_groups(container_id, signal.SIGCONT)

    def _signal_groups(self, container_id: str, signum: int) -> None:
        for proc in self._groups.get(container_id, []):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def containers(self, node: str) -> dict[str, str]:
        return {}  # nothing of a host session outlives the agent's process groups

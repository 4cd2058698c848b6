"""Containers rooted at a mounted share, through the Docker Engine (docker SDK).

No image is pulled: the runner imports a tiny base image made from an empty tree (the
merged-/usr links and a ``/.hwsched`` directory for the agent's own files) and binds each
top-level directory of the mounted root into it. Docker refuses ``/`` as a bind target, and
binding per directory keeps ``/proc``, ``/dev``, ``/sys``, ``/run`` and ``/tmp`` the node's own.
Every container carries the labels ``hwsched.session`` and ``hwsched.node``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from traitlets import List, Unicode, default

from jupyter_hwsched.agent.devices import add_device, remove_device, split_device
from jupyter_hwsched.agent.keeper import exec_failure, start_keeper
from jupyter_hwsched.agent.limits import LimitCounters, read_counters
from jupyter_hwsched.agent.runner import (
    INIT,
    NODE_LABEL,
    NODE_OWN,
    RUN_DIR,
    SESSION_LABEL,
    ContainerSpec,
    ExecProcess,
    ExitCallback,
    OutputCallback,
    Runner,
    SpooledExec,
)
from jupyter_hwsched.protocol.errors import UnavailableError


def _base_image_tar(init_binary: str | None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        for name in (
            "usr",
            "usr/bin",
            "usr/lib",
            "usr/lib64",
            "usr/sbin",
            ".hwsched",
            ".hwsched/run",
            ".hwsched/driver",
        ):
            add_dir(name)
        for name in ("proc", "sys", "dev", "run", "tmp"):
            add_dir(name, 0o1777 if name == "tmp" else 0o755)
        for link, target in (
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("sbin", "usr/sbin"),
        ):
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
        if init_binary:
            data = Path(init_binary).read_bytes()
            info = tarfile.TarInfo(INIT.lstrip("/"))
            info.mode = 0o755
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _started(pid: int) -> int:
    """A process's start time in clock ticks since boot (0 once it is gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat_line.rsplit(")", 1)[1].split()[19])


class DockerRunner(Runner):
    """Runs session containers on the node's Docker Engine."""

    enforces_limits = True

    docker_host = Unicode(config=True, help="Docker Engine socket (env DOCKER_HOST).")
    base_image = Unicode("hwsched-base:1", config=True, help="Name of the imported base image.")
    network_mode = Unicode(
        "none",
        config=True,
        help="The containers' network. 'none' (the default): no network at all; the kernel's "
        "channels are unix sockets the agent reaches through the session's run directory. "
        "For work that needs egress, the name of a Docker network the operator made for it "
        "(a macvlan network on the node's LAN, or a bridge with NAT). 'host' shares the "
        "node's own network, its local services included, and is refused.",
    )
    init_binary = Unicode(
        config=True, help="Static init (tini) copied into the base image; empty for none."
    )
    keepalive = List(
        Unicode(),
        ["sleep", "infinity"],
        config=True,
        help="Command that keeps a session's container alive between kernels and commands.",
    )

    @default("docker_host")
    def _docker_host_default(self) -> str:
        return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")

    @default("init_binary")
    def _init_default(self) -> str:
        for name in ("docker-init", "tini-static", "tini"):
            path = shutil.which(name)
            if path:
                return os.path.realpath(path)
        return ""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if self.network_mode == "host":
            raise UnavailableError(
                "DockerRunner.network_mode 'host' would put every session on the node's own "
                "network, beside the agent and each other: leave it 'none', or name a Docker "
                "network made for egress"
            )
        import docker

        self.docker = docker
        try:
            self.client = docker.DockerClient(base_url=self.docker_host, timeout=120)
            self.client.ping()
        except docker.errors.DockerException as exc:
            raise UnavailableError(
                f"cannot reach the Docker Engine at {self.docker_host} ({exc}): "
                "start dockerd or set DOCKER_HOST"
            ) from None
        self.ensure_image()

    def ensure_image(self) -> None:
        try:
            self.client.images.get(self.base_image)
            return
        except self.docker.errors.ImageNotFound:
            pass
        repo, _, tag = self.base_image.partition(":")
        self.client.api.import_image_from_data(
            _base_image_tar(self.init_binary or None), repository=repo, tag=tag or "latest"
        )
        self.log.info("imported base image %s", self.base_image)

    def binds(self, spec: ContainerSpec) -> dict[str, dict[str, str]]:
        binds: dict[str, dict[str, str]] = {}
        cached = set(spec.cached.values())
        for entry in sorted(os.listdir(spec.root)):
            path = spec.root / entry
            if f"/{entry}" in cached:
                continue  # the cache's view of it takes its place
            if entry in NODE_OWN or path.is_symlink() or not path.is_dir():
                continue
            binds[str(path)] = {"bind": f"/{entry}", "mode": "rw"}
        binds[str(spec.scratch)] = {"bind": "/tmp", "mode": "rw"}
        binds[str(spec.run_dir)] = {"bind": RUN_DIR, "mode": "rw"}  # the kernel's sockets
        for host, inside in spec.extra_binds.items():
            binds[host] = {"bind": inside, "mode": "ro"}
        for host, inside in spec.shown.items():
            binds[host] = {"bind": inside, "mode": "rw"}  # over the private /tmp
        for host, inside in spec.cached.items():
            binds[host] = {"bind": inside, "mode": "ro"}
        return binds

    def create(self, spec: ContainerSpec) -> str:
        """Start the session's container, idle, as the developer; return its id."""
        command = list(self.keepalive)
        if self.init_binary:
            command = [INIT, "-s", "--", *command]
        limits: dict[str, Any] = {}
        if spec.limits is not None:
            limits = {
                "mem_limit": spec.limits.memory,
                "memswap_limit": spec.limits.memory,  # no swap beyond the limit
                "pids_limit": spec.limits.pids,
                "nano_cpus": int(spec.limits.cpus * 1e9),
            }
        try:
            container = self.client.containers.run(
                self.base_image,
                command,
                detach=True,
                name=f"hwsched-{spec.session_id}",
                labels={SESSION_LABEL: spec.session_id, NODE_LABEL: spec.node},
                user=f"{spec.uid}:{spec.gid}",
                group_add=[str(g) for g in spec.groups if g != spec.gid],
                network_mode=self.network_mode,
                volumes=self.binds(spec),
                devices=[":".join(split_device(d)) + ":rwm" for d in spec.devices],
                working_dir="/",
                hostname=socket.gethostname(),  # the node's, as on its own network
                environment={"HWSCHED_SESSION": spec.session_id},
                # the developer's own work needs no privilege beyond their uid
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                **limits,
            )
        except self.docker.errors.DockerException as exc:
            self.remove_session(spec.session_id, spec.node)  # created, then failed to start
            raise UnavailableError(
                f"the container engine could not start the session: {exc}"
            ) from None
        return str(container.id)

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
        """Start ``argv`` in the container; stream its output to ``on_output`` from a thread."""
        api = self.client.api
        exec_id = api.exec_create(
            container_id, argv, stdout=True, stderr=True, environment=env, workdir=cwd, user=user
        )["Id"]
        stream = api.exec_start(exec_id, stream=True, demux=True)
        proc = ExecProcess(self._exec_pid(exec_id), exec_id)

        def pump() -> None:
            try:
                for out, err in stream:
                    if out and out.startswith(b"OCI runtime exec failed"):
                        # the engine could not start it: say so as the process would
                        on_output("stderr", exec_failure(out, argv[0]))
                    elif out:
                        on_output("stdout", out)
                    if err:
                        on_output("stderr", err)
            except Exception as exc:  # the engine went away; the exit code says the rest
                self.log.warning("output stream of exec %s broke: %s", exec_id[:12], exc)
                proc.broken = f"the node's container engine broke the run's output stream ({exc})"
            try:
                for _ in range(20):  # the engine may mark the exec ended just after its stream
                    info = api.exec_inspect(exec_id)
                    if not info.get("Running"):
                        break
                    time.sleep(0.05)
                code = None if info.get("Running") else info.get("ExitCode")
            except Exception as exc:  # the engine is away
                code = None
                proc.broken = proc.broken or f"the node's container engine went away ({exc})"
            if code is None and not proc.broken:
                proc.broken = "the node's container engine ended the run's output stream early"
            proc.exit_code = 255 if code is None else int(code)
            on_exit(proc.exit_code)

        threading.Thread(target=pump, name=f"exec-{exec_id[:12]}", daemon=True).start()
        return proc

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
        socket_path = self.socket_path()
        if socket_path is None or not self.spool_commands:
            return None  # the keeper speaks to an engine on a unix socket only
        exec_id = self.client.api.exec_create(
            container_id, argv, stdout=True, stderr=True, environment=env, workdir=cwd, user=user
        )["Id"]
        keeper = start_keeper(["docker", socket_path, exec_id, str(spool), str(limit), argv[0]])
        try:
            pid = self._exec_pid(exec_id)
        except BaseException:
            keeper.kill()
            keeper.wait()
            raise
        return SpooledExec(pid, exec_id, spool, keeper)

    def socket_path(self) -> str | None:
        """The engine's unix socket, where it has one."""
        url = self.docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return url[len("unix://") :] if url.startswith("unix://") else None

    def _exec_pid(self, exec_id: str, timeout: float = 10.0) -> int:
        """The host pid of a started exec. The engine reports 0 until the process exists;
        a 0 must never reach ``os.kill``, where it means the agent's own process group."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.client.api.exec_inspect(exec_id)
            pid = int(info.get("Pid") or 0)
            if pid > 0 or (not info.get("Running") and info.get("ExitCode") is not None):
                return pid
            if time.monotonic() > deadline:
                raise UnavailableError("the container engine did not start the process")
            time.sleep(0.005)

    def cpu_seconds(self, container_id: str) -> float | None:
        """From the container's cgroup (v1 cpuacct, or v2 cpu.stat), without a slow stats call."""
        for path in (
            f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage",
            f"/sys/fs/cgroup/cpu,cpuacct/docker/{container_id}/cpuacct.usage",
        ):
            try:
                return int(Path(path).read_text()) / 1e9
            except (OSError, ValueError):
                continue
        for path in (
            f"/sys/fs/cgroup/docker/{container_id}/cpu.stat",
            f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat",
        ):
            try:
                for line in Path(path).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
            except (OSError, ValueError):
                continue
        return None

    def owns(self, container_id: str, pid: int) -> bool:
        """A container's processes are in its cgroup, whose path names the container: under
        cgroupfs ``/docker/ID``, under systemd ``docker-ID.scope``."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                return container_id in f.read()
        except OSError:
            return False

    def memory_bytes(self, container_id: str) -> int | None:
        """From the container's cgroup (v2 memory.current, or v1 memory.usage_in_bytes)."""
        for path in (
            f"/sys/fs/cgroup/docker/{container_id}/memory.current",
            f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.current",
            f"/sys/fs/cgroup/memory/docker/{container_id}/memory.usage_in_bytes",
        ):
            try:
                return int(Path(path).read_text())
            except (OSError, ValueError):
                continue
        return None

    def remove(self, container_id: str) -> None:
        """Destroy a container; one that is already gone is fine."""
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except self.docker.errors.NotFound:
            pass

    def limit_counters(self, container_id: str) -> LimitCounters:
        """From the container's cgroups: v2 (cgroupfs or systemd driver), else v1."""
        root = "/sys/fs/cgroup"
        return read_counters(
            [
                (
                    f"{root}/docker/{container_id}/memory.events",
                    f"{root}/docker/{container_id}/pids.events",
                ),
                (
                    f"{root}/system.slice/docker-{container_id}.scope/memory.events",
                    f"{root}/system.slice/docker-{container_id}.scope/pids.events",
                ),
                (
                    f"{root}/memory/docker/{container_id}/memory.oom_control",
                    f"{root}/pids/docker/{container_id}/pids.events",
                ),
            ]
        )

    def pause(self, container_id: str) -> None:
        """The engine's pause: the cgroup freezer, for every process of the container."""
        try:
            self.client.api.pause(container_id)
        except self.docker.errors.APIError as exc:
            if "already paused" not in str(exc):
                raise

    def resume(self, container_id: str) -> None:
        try:
            self.client.api.unpause(container_id)
        except self.docker.errors.APIError as exc:
            if exc.status_code not in (404, 409) and "not paused" not in str(exc):
                raise

    binds_devices = True
    survives_agent = True  # containers and their execs belong to the engine, not the agent

    def running(self, container_id: str) -> bool:
        try:
            state = self.client.api.inspect_container(container_id)["State"]
        except self.docker.errors.NotFound:
            return False
        return bool(state.get("Running"))  # a paused container is running too

    def _init_pid(self, container_id: str) -> int:
        pid = int(self.client.api.inspect_container(container_id)["State"]["Pid"])
        if pid <= 1:
            raise UnavailableError(f"container {container_id[:12]} is not running")
        return pid

    def bind_devices(self, container_id: str, devices: list[str]) -> None:
        pid = self._init_pid(container_id)
        for entry in devices:
            add_device(pid, entry)

    def unbind_devices(self, container_id: str, devices: list[str]) -> None:
        pid = self._init_pid(container_id)
        for entry in devices:
            remove_device(pid, entry)

    def stop_processes(self, container_id: str) -> None:
        """Freeze the container, kill all but its init and the keepalive (init's oldest
        child), thaw it; again until nothing else is left, as a fork may have raced."""
        init = self._init_pid(container_id)
        for _ in range(20):
            self.pause(container_id)
            try:
                victims = self._others(container_id, init)
                for pid in victims:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            finally:
                self.resume(container_id)
            if not victims:
                return
            time.sleep(0.05)
        raise UnavailableError(f"processes in container {container_id[:12]} would not stop")

    def _others(self, container_id: str, init: int) -> list[int]:
        """Host pids of the container's processes but its init and the keepalive."""
        top = self.client.api.top(container_id, ps_args="-eo pid,ppid")
        rows = [(int(r[0]), int(r[1])) for r in top.get("Processes") or []]
        children = sorted((_started(pid), pid) for pid, ppid in rows if ppid == init)
        keep = {init, children[0][1]} if children else {init}
        return [pid for pid, _ in rows if pid not in keep]

    def containers(self, node: str) -> dict[str, str]:
        """Session id -> container id for every container of ours on this node."""
        found = self.client.api.containers(all=True, filters={"label": f"{NODE_LABEL}={node}"})
        return {c["Labels"].get(SESSION_LABEL, ""): c["Id"] for c in found}

"""A real pool for end-to-end tests and benchmarks: scheduler, node agent, share agent.

Each part runs exactly as in production (``python -m jupyter_hwsched.cli.hwsched ...``) with
short leases and heartbeats so that reclaiming a killed client is quick. The helpers here
look at the machine itself (Docker, /proc/mounts, processes) to tell what was left behind; a
check that cannot look (no Docker where the pool runs containers) fails rather than passing.

Not part of the package: the tests, the benchmarks and ``scripts/gpu/check.py`` import it
from this folder.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from jupyter_hwsched.agent.gpus import parse_simulated
from jupyter_hwsched.protocol.pki import init_ca, issue
from jupyter_hwsched.scheduler.slurm.local import LocalNode, LocalSlurm

DEV_USER = "hwdev"
#: the developer machine a pool with identities calls this machine
MACHINE = "devbox-a"
LEASE = 4.0


#: the agent's arguments for each runner that roots work at the share
RUNNER_ARGS: dict[str, tuple[str, ...]] = {
    "docker": (),
    "bwrap": ("--AgentApp.runner_class=jupyter_hwsched.agent.bwrap_runner.BwrapRunner",),
}


#: the pools the client-facing tests run on: each runner that roots work at the share, and
#: placement by a real Slurm (with the Docker runner)
POOL_KINDS: dict[str, dict[str, Any]] = {
    "docker": {},
    "bwrap": {"agent_args": RUNNER_ARGS["bwrap"]},
    "slurm": {"placement": "slurm"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_alone(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``hwsched agent ARGS`` with no scheduler behind it, run to its end: for an agent that
    must refuse to start."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_hwsched.cli.hwsched",
            "agent",
            "--ip=127.0.0.1",
            f"--port={free_port()}",
            "--scheduler-url=http://127.0.0.1:1",
            f"--state-dir={state}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy. The timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def call_json(
    url: str,
    method: str,
    path: str,
    token: str,
    body: Any = None,
    timeout: float = 300,
    ca: str | None = None,
) -> Any:
    """One JSON request with a token (a scheduler's, a Jupyter server's); None if no body.
    ``ca``: the pool CA, for an https URL."""
    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=ca) if ca else None
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def assert_nothing_left(
    leftovers: Callable[[], dict[str, Any]], timeout: float, what: str, detail: str = ""
) -> None:
    """Wait until ``leftovers()`` finds nothing; else fail with what it last found."""
    last: dict[str, Any] = {}

    def clean() -> bool:
        nonlocal last
        last = leftovers()
        return not last

    try:
        wait_for(clean, timeout, f"{what} to be clean")
    except AssertionError:
        raise AssertionError(f"left behind: {last}{detail}") from None


class Service:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        if argv[:1] != ["env"]:
            # as a daemon started in the background (a shell's '&', a CI harness) or under
            # nohup has them: what a service starts must not inherit these ignored
            argv = ["env", "--ignore-signal=INT", "--ignore-signal=HUP", *argv]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_line(self, marker: str, timeout: float = 90.0) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith(marker):
                    return line
            return None

        return str(wait_for(found, timeout, f"{self.name} to start"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Pool:
    """Handles on a running one-node pool, and checks for leftovers."""

    _count = 0

    def __init__(
        self,
        workdir: Path,
        simulate: str = "2xA100-80GB",
        agent_args: tuple[str, ...] = (),
        node: str | None = None,
        before_agent: Callable[[Pool], None] | None = None,
        node_timeout: float = 10.0,
        lease: float = LEASE,
        identities: bool = False,
        placement: str = "builtin",
        scheduler_args: tuple[str, ...] = (),
        db: Path | None = None,
    ) -> None:
        """``identities``: TLS with a pool CA made for the pool, and callers with identities:
        the share agent vouches for this machine's users (as machine ``MACHINE``), the node
        signs for itself, and the pool token is the operator's; clients run without it.
        ``placement="slurm"``: sessions are placed by a private Slurm started for the pool
        (with accounting), whose one node is the pool's node. ``db``: the scheduler's state
        elsewhere than in the pool's directory."""
        Pool._count += 1
        self.workdir = workdir
        self.agent_args = agent_args
        self.token = secrets.token_hex(16)
        self.node = node or f"test-node-{os.getpid()}-{Pool._count}"
        self.node_names: set[str] = set()  # of every agent this pool started
        self.port = free_port()
        self.agent_port = free_port()
        self.identities = identities
        self.url = f"{'https' if identities else 'http'}://127.0.0.1:{self.port}"
        # state outside /tmp: sshd's StrictModes refuses key files under world-writable dirs
        self.state = Path(f"/var/lib/hwsched-test/{os.getpid()}-{Pool._count}")
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True, mode=0o711)
        self.share_socket = str(self.state / "share.sock")
        self.pki = self.state / "pki"
        self.ca = str(init_ca(self.pki).cert) if identities else ""
        self.revoked = self.state / "revoked"
        self.env = dict(
            os.environ,
            HWSCHED_URL=self.url,
            HWSCHED_TOKEN=self.token,
            HWSCHED_SHARE_SOCKET=self.share_socket,
            HWSCHED_CA=self.ca,
            PYTHONUNBUFFERED="1",
        )
        #: what clients run with: without the pool token where callers have identities
        self.client_env = (
            {k: v for k, v in self.env.items() if k != "HWSCHED_TOKEN"} if identities else self.env
        )
        me = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched"]
        self.slurm: LocalSlurm | None = None
        if placement == "slurm":
            self.slurm = start_local_slurm(self.state / "slurm", self.node, simulate)
            scheduler_args = (
                "--Scheduler.backend=slurm",
                f"--SlurmBackend.slurm_conf={self.slurm.conf}",
                *scheduler_args,
            )
        self.services = [
            Service(
                "scheduler",
                [
                    *me,
                    "scheduler",
                    f"--port={self.port}",
                    f"--db={db or self.state / 'sched.sqlite'}",
                    f"--lease={lease}",
                    f"--node-timeout={node_timeout}",
                    "--SchedulerApp.tick_interval=0.25",
                    *scheduler_args,
                    *self.tls_args("scheduler", "scheduler", "SchedulerApp"),
                    *(
                        [f"--ca-file={self.ca}", f"--SchedulerApp.revoked_file={self.revoked}"]
                        if identities
                        else []
                    ),
                ],
                self.env,
                workdir / "scheduler.log",
            )
        ]
        self.services[0].wait_line("HWSCHED_SCHEDULER_READY")
        if before_agent is not None:
            before_agent(self)
        self.services.append(
            self.agent_service(self.node, self.agent_port, simulate, agent_args, "agent")
        )
        self.services[1].wait_line("HWSCHED_AGENT_READY")
        self.services.append(
            Service(
                "share",
                [
                    *me,
                    "share",
                    f"--socket={self.share_socket}",
                    f"--scheduler-url={self.url}",
                    f"--state-dir={self.state / 'share'}",
                    "--ShareAgentApp.check_interval=0.5",
                    *self.machine_args(MACHINE),
                ],
                self.env,
                workdir / "share.log",
            )
        )
        self.services[2].wait_line("HWSCHED_SHARE_READY")

    def agent_service(
        self, node: str, port: int, simulate: str, args: tuple[str, ...], name: str
    ) -> Service:
        self.node_names.add(node)
        return Service(
            name,
            [
                sys.executable,
                "-m",
                "jupyter_hwsched.cli.hwsched",
                "agent",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--node-name={node}",
                f"--scheduler-url={self.url}",
                f"--simulate-gpus={simulate}",  # empty: the real GPUs, from NVML
                f"--state-dir={self.state / name}",
                "--AgentApp.heartbeat_interval=0.5",
                "--AgentApp.share_check_interval=1",
                "--AgentApp.allow_root=True",  # most tests run their clients as root
                f"--ServerApp.root_dir={self.state}",
                *self.tls_args(node, "node", "ServerApp"),
                *([f"--AgentApp.ca_file={self.ca}"] if self.identities else []),
                *args,
            ],
            self.env,
            self.workdir / f"{name}.log",
        )

    def tls_args(self, name: str, role: str, app: str) -> list[str]:
        """A certificate of the pool's CA for a service on 127.0.0.1 (with identities)."""
        if not self.identities:
            return []
        made = issue(self.pki, name, role, self.pki / "issued", ("127.0.0.1",))
        return [f"--{app}.certfile={made.cert}", f"--{app}.keyfile={made.key}"]

    def machine_args(self, machine: str) -> list[str]:
        """A share agent's machine certificate (with identities)."""
        if not self.identities:
            return []
        made = issue(self.pki, machine, "machine", self.pki / "machines")
        return [
            f"--ShareAgentApp.machine_cert={made.cert}",
            f"--ShareAgentApp.machine_key={made.key}",
        ]

    def add_agent(self, node: str, simulate: str, *args: str) -> Service:
        """Another node in the same pool; it is stopped with the pool."""
        service = self.agent_service(node, free_port(), simulate, args, f"agent-{node}")
        self.services.insert(1, service)
        service.wait_line("HWSCHED_AGENT_READY")
        return service

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        if self.slurm is not None:
            self.slurm.stop()
        self._remove_what_agents_left()
        shutil.rmtree(self.state, ignore_errors=True)

    def log_tails(self, lines: int = 40) -> str:
        """The last lines each of the pool's services logged: what a failure report shows."""
        parts = []
        for service in self.services:
            try:
                text = service.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                text = [f"(its log could not be read: {exc})"]
            parts.append(f"--- {service.name} ({service.log.name}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def _remove_what_agents_left(self) -> None:
        """What an agent killed by a test left (its containers, mounts, sshfs and sshd), when
        the test failed before another agent removed it: no test run leaks."""
        for node in self.node_names if shutil.which("docker") else ():
            found = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=hwsched.node={node}"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if found:
                subprocess.run(["docker", "rm", "-f", *found], capture_output=True)
        for point in sorted(self.mounts(), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            program = os.path.basename(cmd[0]) if cmd else ""
            if program.startswith(("sshd", "sshfs")) and str(self.state) in " ".join(cmd):
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    # talking to the scheduler directly

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A call to the scheduler with the pool token (the operator's, with identities)."""
        return call_json(self.url, method, path, self.token, body, ca=self.ca or None)

    def pool(self) -> dict[str, Any]:
        return dict(self.api("GET", "/api/pool"))

    def held_gpus(self) -> list[int]:
        nodes = [n for n in self.pool()["nodes"] if n["name"] == self.node]
        return [g["index"] for n in nodes for g in n["gpus"] if g["holder"]]

    # what a run may leave behind

    @property
    def runs_containers(self) -> bool:
        """Whether the pool's node runs sessions in containers (not with the host runner)."""
        return not any("HostRunner" in arg for arg in self.agent_args)

    def containers(self) -> list[str]:
        if not self.runs_containers:
            return []  # the host runner makes no containers; its processes are checked instead
        if any("BwrapRunner" in arg for arg in self.agent_args):
            # a sandbox's session is its cgroups (its processes are checked as well)
            from jupyter_hwsched.agent.cgroups import SessionCgroup

            return [f"cgroup of {s}" for s in SessionCgroup.leftovers(self.node)]
        if not shutil.which("docker"):
            raise AssertionError(
                "cannot check for leftover containers: the docker command is missing"
            )
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=hwsched.node={self.node}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split()

    def mounts(self) -> list[str]:
        prefix = str(self.state) + "/"
        with open("/proc/self/mounts") as f:
            return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]

    def shares(self) -> list[Any]:
        conn = UnixHTTPConnection(self.share_socket)
        try:
            conn.request("GET", "/shares")
            return list(json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    def session_processes(self) -> list[str]:
        """sshd and sshfs processes of this pool, the keepers of its commands' output, and
        kernels started in its containers."""
        found = []
        for proc in psutil.process_iter(["cmdline", "environ"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                environ = proc.environ() if "ipykernel" in cmd else {}
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            program = os.path.basename((proc.info["cmdline"] or [""])[0])
            keeper = "jupyter_hwsched.agent.keeper" in cmd
            ours = str(self.state) in cmd and (keeper or program.startswith(("sshd", "sshfs")))
            if ours or environ.get("HWSCHED_NODE") == self.node:
                found.append(cmd)
        return found

    def share_servers(self) -> list[psutil.Process]:
        """The per-session sshd listeners of this pool's share agent."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            # sshd rewrites its title: "sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ..."
            if "sshd" in cmd and "[listener]" in cmd and str(self.state) in cmd:
                found.append(proc)
        return found

    def slurm_jobs(self) -> list[str]:
        """The Slurm jobs that still hold (or wait for) an allocation, as squeue shows them."""
        if self.slurm is None:
            return []
        out = self.slurm.commands.run(
            ["squeue", "--noheader", "--format=%i %T %j"]  # active jobs only: squeue's default
        )
        return out.strip().splitlines()

    def leftovers(self) -> dict[str, Any]:
        left = {
            "held_gpus": self.held_gpus(),
            "containers": self.containers(),
            "mounts": self.mounts(),
            "shares": self.shares(),
            "processes": self.session_processes(),
            "slurm_jobs": self.slurm_jobs(),
        }
        return {k: v for k, v in left.items() if v}

    def assert_clean(self, timeout: float = 30.0) -> None:
        """Everything of every session is gone (waits out the asynchronous parts)."""
        assert_nothing_left(self.leftovers, timeout, "the pool")

    def client_cmd(self, argv: list[str], user: str | None = None) -> list[str]:
        # runuser without --login keeps the environment (HWSCHED_*), resets HOME and USER
        return ["runuser", "-u", user, "--", *argv] if user else argv

    def hwrun(
        self,
        args: list[str],
        user: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        argv = self.client_cmd([str(Path(sys.executable).parent / "hwrun"), *args], user)
        return subprocess.run(
            argv,
            env={**self.client_env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen_hwrun(
        self,
        args: list[str],
        user: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        argv = self.client_cmd([str(Path(sys.executable).parent / "hwrun"), *args], user)
        # its own process group, like a job in a terminal, so that Ctrl-C can be sent to it
        return subprocess.Popen(
            argv,
            env={**self.client_env, **(env or {})},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )


def start_local_slurm(directory: Path, node: str, simulate: str) -> LocalSlurm:
    """A private Slurm (with accounting) whose one node is ``node`` with these GPUs."""
    local = LocalSlurm(directory, [LocalNode(node, parse_simulated(simulate, node))], True)
    local.start()
    return local


def ctrl_c(proc: subprocess.Popen[str]) -> None:
    """What pressing Ctrl-C in a terminal does: SIGINT to the foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)


def read_rest(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The rest of a process's stdout and stderr, once it has ended, read through the pipes'
    own file objects: ``communicate()`` reads their descriptors and would skip what an
    earlier ``readline()`` had already buffered. Past ``timeout`` seconds the process is
    killed and ``subprocess.TimeoutExpired`` carries what had come."""
    got: dict[str, str] = {"stdout": "", "stderr": ""}

    def drain(name: str) -> None:
        stream = getattr(proc, name)
        if stream is not None:
            got[name] = stream.read()
            stream.close()

    readers = [threading.Thread(target=drain, args=(name,), daemon=True) for name in got]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for reader in readers:
            reader.join(10)
        raise subprocess.TimeoutExpired(proc.args, timeout, got["stdout"], got["stderr"]) from None
    for reader in readers:
        reader.join()
    return got["stdout"], got["stderr"]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("share", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


# load: many concurrent hwrun sessions, each streaming numbered lines, while status is polled

#: the agent's arguments for the host runner (sessions as plain processes on this machine)
HOST_RUNNER_ARGS = (
    "--AgentApp.runner_class=jupyter_hwsched.agent.host_runner.HostRunner",
    "--HostRunner.single_user=True",
)

#: what each session of a load runs (``python -c``): it signs in at the barrier folder, waits
#: until ``sessions`` have (none when the pool cannot run them all at once) or the load is
#: called off (a file ``abort``: a session failed first), then prints 1..``lines``, one line
#: per write, flushed
_NUMBERED_LINES = """\
import os, sys, time
folder, sessions, lines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if sessions:
    open(os.path.join(folder, "in-" + os.urandom(8).hex()), "w").close()
    deadline = time.monotonic() + 600
    while True:
        names = os.listdir(folder)
        if "abort" in names:
            sys.exit("called off: another session failed before all had started")
        if len(names) >= sessions:
            break
        if time.monotonic() > deadline:
            sys.exit("the other sessions never started")
        time.sleep(0.05)
for i in range(1, lines + 1):
    print(i, flush=True)
"""


def numbering_problem(output: str, lines: int) -> str | None:
    """What is wrong with ``output``, which should be the lines 1..``lines`` in order, each
    ended by a newline: the first line lost, duplicated or out of order, or a cut end. None
    when it is exactly right."""
    got = output.split("\n")
    if got[-1] != "":
        return f"the output ends inside a line: {got[-1][-40:]!r}"
    got.pop()
    for expected, line in enumerate(got, 1):
        if line == str(expected):
            continue
        if not line.isdigit():
            return f"line {expected} is {line[:40]!r}, not a number"
        if int(line) < expected:
            return f"line {expected} is {line}: duplicated or out of order"
        return f"line {expected} is {line}: line(s) {expected}..{int(line) - 1} lost or reordered"
    if len(got) != lines:
        return f"{len(got)} lines, not {lines}: the last {lines - len(got)} lost"
    return None


class StatusPoller:
    """A client that polls the scheduler's status (``GET /api/pool``, what ``hwsched status``
    shows) in a thread on one keep-alive connection, timing each call."""

    def __init__(self, pool: Pool, gap: float = 0.05) -> None:
        self.pool = pool
        self.gap = gap
        self.calls: list[tuple[float, float]] = []  # (start, seconds) of each good call
        self.failures: list[str] = []
        self.peak_held = 0  # the most GPUs held at once, as status showed them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _connect(self) -> http.client.HTTPConnection:
        host, port = self.pool.url.split("//")[1].rsplit(":", 1)
        return http.client.HTTPConnection(host, int(port), timeout=60)

    def _run(self) -> None:
        conn = self._connect()
        headers = {"Authorization": f"token {self.pool.token}"}
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    conn.request("GET", "/api/pool", headers=headers)
                    response = conn.getresponse()
                    body = response.read()
                    took = time.perf_counter() - start
                    if response.status != 200:
                        raise ValueError(f"HTTP {response.status}: {body[:200]!r}")
                    status = json.loads(body)
                    held = sum(1 for n in status["nodes"] for g in n["gpus"] if g["holder"])
                except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = self._connect()
                else:
                    self.calls.append((start, took))
                    self.peak_held = max(self.peak_held, held)
                self._stop.wait(self.gap)
        finally:
            conn.close()

    def seconds_between(self, start: float, end: float) -> list[float]:
        """The times of the good calls that started between two ``perf_counter`` readings."""
        return [took for began, took in self.calls if start <= began <= end]


@dataclass
class LoadRun:
    """What a load run saw: per session its output, stderr, exit code and when its first and
    last output arrived (``perf_counter``); the run's start and end."""

    lines: int
    outputs: list[str]
    errors: list[str]
    codes: list[int]
    first_output: list[float]
    last_output: list[float]
    start: float
    end: float

    def problems(self) -> list[str]:
        """Each session whose exit code or output is not exactly what it printed."""
        found = []
        runs = zip(self.outputs, self.errors, self.codes, strict=True)
        for i, (out, err, code) in enumerate(runs):
            problem = numbering_problem(out, self.lines)
            if code != 0 or problem:
                found.append(f"session {i}: exit {code}, {problem or 'output right'}; {err[-300:]}")
        return found


def run_load(
    pool: Pool, sessions: int, lines: int, folder: Path, together: bool, timeout: float = 900
) -> LoadRun:
    """``sessions`` concurrent ``hwrun --gpu 1`` commands, each printing 1..``lines``; with
    ``together`` each waits until all have started (the pool must hold them all at once).
    ``folder``: an empty folder for the barrier, which every command's argv names."""
    argv = [
        "-q", "--gpu", "1", "--", sys.executable, "-c", _NUMBERED_LINES,
        str(folder), str(sessions if together else 0), str(lines),
    ]  # fmt: skip
    start = time.perf_counter()
    procs = [pool.popen_hwrun(argv, cwd=str(folder)) for _ in range(sessions)]
    outputs = [bytearray() for _ in procs]
    errors = [bytearray() for _ in procs]
    first = [0.0] * sessions
    last = [0.0] * sessions
    selector = selectors.DefaultSelector()
    for i, proc in enumerate(procs):
        assert proc.stdout is not None and proc.stderr is not None
        selector.register(proc.stdout.fileno(), selectors.EVENT_READ, (i, outputs[i]))
        selector.register(proc.stderr.fileno(), selectors.EVENT_READ, (i, errors[i]))
    deadline = time.monotonic() + timeout
    abort, checked = folder / "abort", 0.0
    try:
        while selector.get_map():
            if time.monotonic() > deadline:
                raise AssertionError(f"the load did not end within {timeout:.0f} s")
            if together and time.monotonic() > checked + 0.5 and not abort.exists():
                checked = time.monotonic()
                if any(p.poll() for p in procs):
                    abort.touch()  # one failed: the others would wait at the barrier for nothing
            for key, _ in selector.select(1.0):
                i, sink = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                if sink is outputs[i]:
                    now = time.perf_counter()
                    first[i] = first[i] or now
                    last[i] = now
                sink += chunk
        codes = [proc.wait(max(1.0, deadline - time.monotonic())) for proc in procs]
    finally:
        selector.close()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    return LoadRun(
        lines,
        [bytes(o).decode(errors="replace") for o in outputs],
        [bytes(e).decode(errors="replace") for e in errors],
        codes,
        first,
        last,
        start,
        time.perf_counter(),
    )


def load_leftovers(pool: Pool, marker: str) -> dict[str, Any]:
    """What a load left on any node of the pool: held GPUs, live or queued sessions at the
    scheduler, sessions at each node's agent, and processes whose command line names
    ``marker``."""
    status = pool.pool()
    held = {
        n["name"]: [g["index"] for g in n["gpus"] if g["holder"]]
        for n in status["nodes"]
        if any(g["holder"] for g in n["gpus"])
    }
    at_agents = {}
    for node in status["nodes"]:
        listed = call_json(node["url"], "GET", "/hwsched/sessions", pool.token, timeout=30)
        if listed:
            at_agents[node["name"]] = [s.get("id") for s in listed]
    processes = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if marker in cmd and proc.pid != os.getpid():
            processes.append(f"{proc.pid}: {cmd[:200]}")
    left = {
        "held_gpus": held,
        "queue": [q.get("id") for q in status["queue"]],
        "live_sessions": [s["id"] for s in pool.api("GET", "/api/sessions")],
        "agent_sessions": at_agents,
        "processes": processes,
    }
    return {k: v for k, v in left.items() if v}

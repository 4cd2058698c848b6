"""A pool spread over test hosts: every part on its own host, over TLS, with identities.

The hosts come from :class:`hosts.Network` (network, UTS and mount namespaces, addresses on a
private /24): ``dev1`` and ``dev2`` are developer machines, ``sched`` runs the scheduler and
``node1`` is a GPU node with simulated GPUs. Every service binds its own host's address, never
loopback, and every link is TLS with certificates of the pool's own CA:

- ``sched``: ``hwsched scheduler`` with a certificate for its address and the CA
  (``--ca-file``), so callers have identities; the pool token is the operator's.
- ``node1``: a Docker Engine of its own, started inside the host with its own socket, data
  and exec roots (``--iptables=false --bridge=none``, as ``scripts/dockerd.sh``), and the node
  agent, which signs its calls to the scheduler with its ``node`` certificate.
- ``dev1``, ``dev2``: a root share agent each, with a ``machine`` certificate named after the
  host, so that it vouches for that host's users. Clients in these hosts carry no token: the
  share agent signs their credentials.

What a developer host exports is its ``/``, as that host sees it. The container on the node
is rooted there, so the developer's python, ``/usr``, ``/etc`` and ``/opt`` are the real ones
(the test hosts share the machine's filesystem), while each host's private tree shows at
:data:`hosts.EXPORT` (``/srv/hwsched-export``) in that host alone: work directories live
there, so what a run writes on ``dev1`` is in ``dev1``'s tree and nowhere in ``dev2``'s. In
the developer hosts :data:`hosts.STATE` is covered by an empty tmpfs too, so that no host
reaches another's private tree through the machine's paths. There is no FUSE loop: the node
mounts the share in its own mount namespace, which the developer hosts do not see.

Services log to files in the work directory. Stopping checks that nothing is left, stops the
Docker Engine last, removes the network and the pool's directories. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import psutil
from harness import LEASE, Service, UnixHTTPConnection, assert_nothing_left, wait_for
from hosts import EXPORT, NETNS_DIR, PREFIX, STATE, Host, Network
from netns import in_netns

from jupyter_hwsched.protocol.pki import init_ca, issue

#: Where the pools keep their state (outside /tmp: sshd's StrictModes), one directory each.
POOLS = Path("/var/lib/hwsched-test")
#: This checkout: the services and clients run its code whatever the virtualenv has installed
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HWRUN = str(VENV_BIN / "hwrun")
HWSCHED = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched"]
DEVELOPERS = ("dev1", "dev2")
SCHEDULER, NODE = "sched", "node1"
#: a second GPU node's host: it holds a node certificate of its own and runs no agent, the
#: vantage point of a node (or an impostor) that the sessions on node1 are none of its business
OTHER_NODE = "node2"
HOST_NAMES = [*DEVELOPERS, SCHEDULER, NODE, OTHER_NODE]
PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _service_env(**extra: str) -> dict[str, str]:
    """The machine's environment without any pool settings of its own, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HWSCHED_", "DOCKER_", "JUPYTER_")) and k not in ("PATH", "PYTHONPATH")
    }
    return {**env, "PATH": PATH, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def _unused_port(taken: set[int]) -> int:
    """A port outside the kernel's ephemeral range that nothing on the machine's own loopback
    uses now, so that finding it answered there later would mean something of ours listens."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError("no free port in 20000-29999")


#: what a node agent logs when its extension failed: it then serves on without it, never ready
_AGENT_FAILED = re.compile(r"jupyter_hwsched\.agent \| extension failed (loading|starting)")


def _wait_ready(service: Service, marker: str, timeout: float) -> str:
    """``service.wait_line(marker)``, but failing at once where the node agent's extension
    failed (the server does not exit then)."""

    def ready() -> str | None:
        text = service.log.read_text(errors="replace")
        if _AGENT_FAILED.search(text):
            raise RuntimeError(f"{service.name} failed:\n{text[-3000:]}")
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{text[-3000:]}")
        found = [line for line in text.splitlines() if line.startswith(marker)]
        return found[0] if found else None

    return str(wait_for(ready, timeout, f"{service.name} to start"))


class HostsPool:
    """Scheduler, node agent (with its own dockerd) and two share agents on separate hosts.

    ``with HostsPool(workdir) as pool:`` starts everything (or :meth:`start`) and stops and
    removes everything on leaving (or :meth:`stop`).
    """

    def __init__(
        self,
        workdir: Path,
        simulate: str = "2xA100-80GB",
        lease: float = LEASE,
        node_timeout: float = 10.0,
    ) -> None:
        self.workdir = workdir
        self.simulate = simulate
        self.lease = lease
        self.node_timeout = node_timeout
        self.token = os.urandom(16).hex()  # the operator's
        self.net: Network | None = None
        self.dir = POOLS / "hosts-pool-unstarted"
        self.services: dict[str, Service] = {}
        self.dockerd: Service | None = None
        taken: set[int] = set()
        self.scheduler_port = _unused_port(taken)
        self.agent_port = _unused_port(taken)
        self.started_in = 0.0  # seconds start() took
        self.certificates: dict[str, Any] = {}  # role's name -> its issued certificate

    # ---- the hosts and where things are

    def host(self, name: str) -> Host:
        assert self.net is not None, "the pool is not started"
        return self.net.host(name)

    @property
    def addresses(self) -> dict[str, str]:
        assert self.net is not None, "the pool is not started"
        return self.net.addresses

    @property
    def scheduler_url(self) -> str:
        return f"https://{self.host(SCHEDULER).address}:{self.scheduler_port}"

    @property
    def agent_url(self) -> str:
        return f"https://{self.host(NODE).address}:{self.agent_port}"

    @property
    def ca(self) -> Path:
        return self.dir / "pki" / "ca.pem"

    def share_socket(self, host: str) -> str:
        return str(self.dir / host / "share.sock")

    @property
    def docker_host(self) -> str:
        return f"unix://{self.dir / NODE / 'docker.sock'}"

    @property
    def agent_state(self) -> Path:
        return self.dir / NODE / "agent"

    def client_env(self, host: str, **extra: str) -> dict[str, str]:
        """What a client in developer host ``host`` runs with: no token, its machine's share
        agent for credentials and shares."""
        return _service_env(
            HWSCHED_URL=self.scheduler_url,
            HWSCHED_CA=str(self.ca),
            HWSCHED_SHARE_SOCKET=self.share_socket(host),
            **extra,
        )

    # ---- starting

    def __enter__(self) -> HostsPool:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> HostsPool:
        began = time.monotonic()
        try:
            self._start()
        except BaseException as exc:
            tails = self.log_tails()
            with contextlib.suppress(Exception):
                self.stop()
            if isinstance(exc, Exception):
                raise RuntimeError(f"the hosts pool did not start: {exc}\n{tails}") from exc
            raise
        self.started_in = time.monotonic() - began
        return self

    def _start(self) -> None:
        self.net = Network(HOST_NAMES)
        self.dir = POOLS / f"hosts-pool-{self.net.id}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o711, parents=True)
        for name in HOST_NAMES:
            (self.dir / name).mkdir(mode=0o711)
        for name in DEVELOPERS:
            # no developer host reaches the private trees of the others by the machine's path
            self.host(name).run(
                ["mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "hwsched-mask", STATE]
            )
        self._check_code()
        tls = self.certificates = self._certificates()
        self.dockerd = self._start_dockerd()
        sched = self.host(SCHEDULER)
        self.services["scheduler"] = Service(
            "scheduler",
            sched.cmd(
                [
                    *HWSCHED,
                    "scheduler",
                    f"--ip={sched.address}",
                    f"--port={self.scheduler_port}",
                    f"--certfile={tls['scheduler'].cert}",
                    f"--keyfile={tls['scheduler'].key}",
                    f"--ca-file={self.ca}",
                    f"--db={self.dir / SCHEDULER / 'sched.sqlite'}",
                    f"--lease={self.lease}",
                    f"--node-timeout={self.node_timeout}",
                    "--SchedulerApp.tick_interval=0.25",
                ]
            ),
            _service_env(HWSCHED_TOKEN=self.token),
            self.workdir / "scheduler.log",
        )
        for name in DEVELOPERS:  # they need no scheduler to start
            self.services[f"share-{name}"] = self._share_service(name, tls[name])
        line = self.services["scheduler"].wait_line("HWSCHED_SCHEDULER_READY")
        if line.split()[1] != self.scheduler_url:
            raise RuntimeError(f"the scheduler says {line!r}, not {self.scheduler_url}")
        wait_for(self._docker_up, 60, "node1's dockerd to answer")
        self.services["agent"] = self._agent_service(tls[NODE])
        line = _wait_ready(self.services["agent"], "HWSCHED_AGENT_READY", 120)
        if line.split()[1] != self.agent_url:
            raise RuntimeError(f"the agent says {line!r}, not {self.agent_url}")
        for name in DEVELOPERS:
            self.services[f"share-{name}"].wait_line("HWSCHED_SHARE_READY")

    def _check_code(self) -> None:
        """The hosts import this checkout's package (not a copy installed in the venv)."""
        where = (
            self.host(NODE)
            .run(
                [sys.executable, "-c", "import jupyter_hwsched; print(jupyter_hwsched.__file__)"],
                env=_service_env(),
            )
            .stdout.strip()
        )
        if not Path(where).is_relative_to(REPO):
            raise RuntimeError(f"the hosts would run {where}, not the code of {REPO}")

    def _certificates(self) -> dict[str, Any]:
        """The pool CA, and a certificate for each host in its role."""
        pki = self.dir / "pki"
        init_ca(pki)
        pki.chmod(0o755)  # the CA's certificate is for everyone; its key stays 0600
        issued = pki / "issued"
        sched, node = self.host(SCHEDULER), self.host(NODE)
        made = {
            "scheduler": issue(pki, SCHEDULER, "scheduler", issued, (sched.address,)),
            NODE: issue(pki, NODE, "node", issued, (node.address,)),
            OTHER_NODE: issue(pki, OTHER_NODE, "node", issued, (self.host(OTHER_NODE).address,)),
        }
        for name in DEVELOPERS:
            made[name] = issue(pki, name, "machine", issued / name)
        return made

    def _start_dockerd(self) -> Service:
        """node1's own Docker Engine, started inside node1, everything of it under the pool's
        directory."""
        home = self.dir / NODE / "docker"
        home.mkdir(mode=0o711)
        return Service(
            "dockerd",
            self.host(NODE).cmd(
                [
                    "dockerd",
                    "--host",
                    self.docker_host,
                    "--data-root",
                    home / "data",
                    "--exec-root",
                    home / "exec",
                    "--pidfile",
                    home / "docker.pid",
                    "--iptables=false",
                    "--bridge=none",
                ]
            ),
            _service_env(),
            self.workdir / "dockerd.log",
        )

    def _agent_service(self, cert: Any, *extra: str) -> Service:  # extra: a test's settings
        node = self.host(NODE)
        (self.dir / NODE / "runtime").mkdir(mode=0o700, exist_ok=True)
        return Service(
            "agent",
            node.cmd(
                [
                    *HWSCHED,
                    "agent",
                    f"--ip={node.address}",
                    f"--port={self.agent_port}",
                    f"--node-name={NODE}",
                    f"--scheduler-url={self.scheduler_url}",
                    f"--ServerApp.certfile={cert.cert}",
                    f"--ServerApp.keyfile={cert.key}",
                    f"--AgentApp.ca_file={self.ca}",
                    f"--simulate-gpus={self.simulate}",
                    f"--state-dir={self.agent_state}",
                    "--AgentApp.allow_root=True",  # test 1 runs as root on dev1
                    "--AgentApp.heartbeat_interval=0.5",
                    "--AgentApp.share_check_interval=1",
                    f"--ServerApp.root_dir={self.dir / NODE}",
                    *extra,
                ]
            ),
            _service_env(
                DOCKER_HOST=self.docker_host,
                HWSCHED_TOKEN=self.token,  # the agent's own admin token
                HWSCHED_CA=str(self.ca),
                JUPYTER_RUNTIME_DIR=str(self.dir / NODE / "runtime"),
            ),
            self.workdir / "agent.log",
        )

    def _share_service(self, name: str, cert: Any) -> Service:
        host = self.host(name)
        return Service(
            f"share-{name}",
            host.cmd(
                [
                    *HWSCHED,
                    "share",
                    f"--socket={self.share_socket(name)}",
                    f"--scheduler-url={self.scheduler_url}",
                    f"--state-dir={self.dir / name / 'share'}",
                    f"--listen-ip={host.address}",
                    "--root=/",
                    f"--ShareAgentApp.machine_cert={cert.cert}",
                    f"--ShareAgentApp.machine_key={cert.key}",
                    f"--ShareAgentApp.ca_file={self.ca}",
                    "--ShareAgentApp.check_interval=0.5",
                ]
            ),
            _service_env(HWSCHED_CA=str(self.ca)),
            self.workdir / f"share-{name}.log",
        )

    # ---- stopping

    def stop(self) -> None:
        """Stop everything, dockerd last, and remove what the pool made; raises with what was
        left behind, after removing it as far as it can."""
        problems: list[str] = []
        for name in reversed(list(self.services)):
            self.services[name].stop()
        if self.dockerd is not None:
            if self.dockerd.proc.poll() is None:
                with contextlib.suppress(Exception):
                    left = self.containers()
                    if left:
                        problems.append(f"containers left in node1's dockerd: {left}")
                        self._docker("rm", "-f", *left)
            self.dockerd.stop()
        if self.net is not None:
            mounts = self.node_mounts()
            if mounts:
                problems.append(f"mounts left in node1: {mounts}")
            ours = self.processes(everything=True)
            if ours:
                problems.append(f"processes left: {ours}")
            try:
                self.net.close()
            except RuntimeError as exc:
                problems.append(str(exc))
            for ns in os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []:
                if ns.startswith(f"{PREFIX}{self.net.id}-"):
                    problems.append(f"network namespace {ns} left")
        with open("/proc/self/mounts") as f:
            for line in f:
                point = line.split()[1]
                if point.startswith(f"{self.dir}/") or point == str(self.dir):
                    problems.append(f"mount {point} left on the machine")
        if self.dir.name != "hosts-pool-unstarted":
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.dir.exists():
                problems.append(f"{self.dir} could not be removed")
        self.services.clear()
        self.dockerd = None
        if problems:
            raise RuntimeError("the hosts pool left things behind: " + "; ".join(problems))

    # ---- clients

    def hwrun(
        self,
        host: str,
        args: list[str],
        user: str | None = None,
        cwd: str | PurePosixPath = EXPORT,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``hwrun ARGS`` in developer host ``host``, in ``cwd`` as that host sees it; as root,
        or as ``user`` (``runuser`` keeps the environment, resets HOME and USER)."""
        argv = [HWRUN, *args]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        return self.host(host).run(
            argv,
            cwd=str(cwd),
            env={**self.client_env(host), **(env or {})},
            check=False,
            timeout=timeout,
        )

    def workdir_in(self, host: str, name: str, owner: str | None = None) -> PurePosixPath:
        """A new directory ``name`` in ``host``'s private tree (owned by ``owner``, else
        root); returns where the host sees it."""
        h = self.host(host)
        path = h.root / name
        path.mkdir(mode=0o755)
        if owner:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return h.inside(path)

    # ---- the scheduler, as the operator or with any credential

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        credential: str | None = None,
        via: str = DEVELOPERS[0],
        timeout: float = 30,
    ) -> Any:
        """One HTTPS call to the scheduler from host ``via``, verified against the pool CA,
        with ``credential`` (default: the operator's token). An error status raises
        ``urllib.error.HTTPError`` with the body read into its ``reason``."""
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(
            self.scheduler_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"token {self.token if credential is None else credential}",
                "Content-Type": "application/json",
            },
        )

        def call() -> Any:
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
                    raw = answer.read()
            except urllib.error.HTTPError as exc:
                with exc:
                    detail = exc.read().decode(errors="replace")
                raise urllib.error.HTTPError(
                    exc.url, exc.code, f"{exc.reason}: {detail}", exc.headers, None
                ) from None
            return json.loads(raw) if raw else None

        return in_netns(self.host(via), call)

    def pool(self) -> dict[str, Any]:
        return dict(self.api("GET", "/api/pool"))

    def holders(self) -> list[tuple[str, int, str]]:
        """(node, GPU index, holder) of every held GPU."""
        return [
            (node["name"], gpu["index"], gpu["holder"])
            for node in self.pool()["nodes"]
            for gpu in node["gpus"]
            if gpu["holder"]
        ]

    # ---- what a run may leave behind

    def _docker(self, *args: str) -> str:
        done = subprocess.run(
            ["docker", "--host", self.docker_host, *args],
            env=_service_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def _docker_up(self) -> bool:
        if self.dockerd is not None and self.dockerd.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited:\n{self.dockerd.log.read_text()[-3000:]}")
        try:
            return bool(self._docker("version", "--format", "{{.Server.Version}}").strip())
        except RuntimeError:
            return False

    def containers(self) -> list[str]:
        """Every container of node1's dockerd (it runs nothing but the pool's work)."""
        return self._docker("ps", "-aq").split()

    def node_mounts(self) -> list[str]:
        """FUSE mounts, and mounts under the agent's state directory, in node1's mount
        namespace."""
        found = []
        with open(f"/proc/{self.host(NODE).pid}/mounts") as f:
            for line in f:
                _, point, kind = line.split()[:3]
                if kind.startswith("fuse") or point.startswith(f"{self.agent_state}/"):
                    found.append(point)
        return found

    def shares(self, host: str) -> list[Any]:
        """The open shares of ``host``'s share agent."""
        conn = UnixHTTPConnection(self.share_socket(host))
        try:
            conn.request("GET", "/shares")
            return list(json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    def processes(self, everything: bool = False) -> list[str]:
        """The sessions' sshd (on the developer hosts) and sshfs (on the node) processes,
        found by the pool's directory in their command lines; with ``everything``, any
        process that names it (the services themselves, dockerd, containerd)."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(self.dir) in cmd and (everything or "sshd" in cmd or "sshfs" in cmd):
                found.append(f"{proc.info['pid']}: {cmd}")
        return found

    def leftovers(self) -> dict[str, Any]:
        left = {
            "held_gpus": self.holders(),
            "containers": self.containers(),
            "node_mounts": self.node_mounts(),
            "shares": [s for h in DEVELOPERS for s in self.shares(h)],
            "processes": self.processes(),
        }
        return {k: v for k, v in left.items() if v}

    def assert_clean(self, timeout: float = 30.0) -> None:
        """Nothing of any session is left (waits out the asynchronous parts)."""
        assert_nothing_left(self.leftovers, timeout, "the hosts pool", f"\n{self.log_tails()}")

    # ---- diagnostics

    def log_tails(self, chars: int = 2500) -> str:
        """The end of every service's log, for a failure message."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            text = path.read_text(errors="replace")
            text = re.sub(r"\n{3,}", "\n\n", text[-chars:])
            parts.append(f"----- {path.name} -----\n{text}")
        return "\n".join(parts)

    def explain(self, done: subprocess.CompletedProcess[str]) -> str:
        """A command's output and the services' logs."""
        return (
            f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}\n"
            + self.log_tails()
        )

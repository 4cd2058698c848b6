"""Several "hosts" on this one machine, for end-to-end tests that must not run over loopback.

A :class:`Network` of hosts named ``dev1``, ``node1``, ... gives each host

- its own network namespace ``hwt-<id>-<name>``, in which ``eth0`` is one end of a veth pair
  with the address ``10.231.<k>.<i>/24`` (``i`` = 1, 2, ... in the order the names were given)
  and ``lo`` is up. There is no default route: a host reaches the other hosts of its network
  and nothing else. The other ends of the pairs are ports of one bridge, ``br0``, that lives in
  a namespace of its own (``hwt-<id>-sw``), so nothing is added to the machine's own network
  namespace, and no address outside the network's /24 is used. ``k`` is claimed per network
  under a lock (:data:`STATE` ``/.subnets/<k>.lock``), so that networks can coexist, in one
  test session or several; claiming one first clears what networks of killed sessions left
  behind (:func:`sweep`).
- its own UTS namespace (``hostname`` says the host's name) and mount namespace, held by an
  "anchor" process (``sleep infinity``) that :meth:`Host.cmd` enters with ``nsenter``. In that
  mount namespace (made with ``--propagation private``: nothing mounted there shows outside,
  nothing mounted outside afterwards shows there):

  - ``/etc/hosts`` is a file of the host's own that names every host of the network;
  - ``/srv`` is an empty tmpfs and :data:`EXPORT` (``/srv/hwsched-export``) is a bind mount
    of :attr:`Host.root`, the host's private tree (``STATE/<id>/<name>/root`` seen from the
    machine): what a test writes there from outside shows in that host only, at
    ``EXPORT``. A developer machine's share exports ``/``, so another host that mounts it
    sees that developer's tree, not the other developer's, under ``srv/hwsched-export``.
    ``/srv`` was chosen over ``/home``: hiding ``/home`` would hide the developer account's
    home, and ``/srv`` is empty on Debian, so covering it hides nothing;
  - ``/run/netns`` is an empty tmpfs, and the copies of the machine's ``nsfs`` and FUSE
    mounts that the namespace was made with are detached, so that a host pins neither
    another namespace nor an sshfs connection of the machine.

  Everything else is the machine's: the filesystem (``/tmp`` included), ``/sys`` with its
  cgroup mounts (which a dockerd started in a host needs; ``ip netns exec`` would remount
  ``/sys``), the process and IPC namespaces, users. A host is a separate machine on the
  network and by name, not a sandbox.

Use it from a fixture::

    @pytest.fixture(scope="module")
    def net() -> Iterator[Network]:
        with Network(["dev1", "dev2", "sched", "node1"]) as net:
            yield net

    def test_something(net: Network) -> None:
        sched = net.host("sched")
        with sched.popen(["hwsched", "scheduler", f"--ip={sched.address}"]) as proc: ...

:meth:`Network.close` (also on ``__exit__``, and when the constructor fails halfway) kills
every process in the network's namespaces (and their descendants), deletes the namespaces
and the per-host directories; it is safe to call twice. Needs root, ``ip``, ``nsenter`` and
``unshare`` (util-linux).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

#: Where the networks keep their per-host directories: ``STATE/<id>/<name>/``.
STATE = Path("/var/lib/hwsched-test/hosts")
#: Where a host sees its private tree, :attr:`Host.root`.
EXPORT = PurePosixPath("/srv/hwsched-export")
NETNS_DIR = Path("/run/netns")
PREFIX = "hwt-"

_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")
_LOCKS = STATE / ".subnets"
_NS_KINDS = ("net", "mnt", "uts")

# Run by the anchor, in the host's new UTS and mount namespaces; $1 is the host's name and $2
# its directory. It prints "ready PID" once the host is set up, then sleeps until killed.
_ANCHOR_SCRIPT = r"""
set -eu
hostname "$1"
mount --bind "$2/hosts" /etc/hosts
awk '{ split($0, halves, " - "); split(halves[2], fs, " ");
       if (fs[1] == "nsfs" || fs[1] == "fuse" || fs[1] == "fuseblk" || fs[1] ~ /^fuse\./)
           print $5 }' /proc/self/mountinfo | sort -r | while IFS= read -r mountpoint; do
    umount -l "$mountpoint" 2>/dev/null || true
done
if [ -d /run/netns ]; then mount -t tmpfs -o mode=0755 hwsched-netns /run/netns; fi
mount -t tmpfs -o mode=0755 hwsched-srv /srv
mkdir /srv/hwsched-export
mount --bind "$2/root" /srv/hwsched-export
echo "ready $$"
exec sleep infinity </dev/null >/dev/null 2>&1
"""


# Run in each new network namespace, before its interfaces but lo are made.
_NO_IPV6 = """
[ -d /proc/sys/net/ipv6 ] || exit 0
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
"""


class HostCommandError(subprocess.CalledProcessError):
    """A command run in a host failed; the message says where and what it wrote."""

    def __init__(self, host: str, proc: subprocess.CompletedProcess[Any]) -> None:
        super().__init__(proc.returncode, proc.args, proc.stdout, proc.stderr)
        self.host = host

    def __str__(self) -> str:
        return f"on {self.host}: {super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@dataclass(frozen=True)
class Host:
    """One host of a :class:`Network`: its own network, UTS and mount namespaces."""

    name: str
    #: The host's IPv4 address on the test network (on its ``eth0``).
    address: str
    #: The name of its network namespace (``ip netns``).
    netns: str
    #: Its directory on the machine: ``hosts`` (its /etc/hosts) and ``root``.
    dir: Path
    #: The anchor process that holds its namespaces.
    pid: int

    @property
    def root(self) -> Path:
        """The host's private tree, seen from the machine; the host sees it at ``EXPORT``."""
        return self.dir / "root"

    @property
    def export(self) -> PurePosixPath:
        """Where the host sees :attr:`root`."""
        return EXPORT

    def inside(self, path: str | os.PathLike[str]) -> PurePosixPath:
        """Where the host sees ``path``, a path under :attr:`root`."""
        return EXPORT / Path(path).relative_to(self.root)

    def cmd(self, argv: Sequence[str | os.PathLike[str]], cwd: str | None = None) -> list[str]:
        """The argv that runs ``argv`` in this host, in ``cwd`` as the host sees it (default
        ``/``: entering a mount namespace leaves the working directory at its root)."""
        wd = [f"--wdns={cwd}"] if cwd is not None else []
        return [
            "nsenter",
            "-t",
            str(self.pid),
            "--net",
            "--uts",
            "--mount",
            *wd,
            "--",
            *(os.fspath(arg) for arg in argv),
        ]

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        timeout: float = 60,
        cwd: str | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this host; text, output captured unless ``stdout``/``stderr`` are
        given, and :class:`HostCommandError` (with the output) if it fails and ``check``."""
        kw.setdefault("text", True)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.run(self.cmd(argv, cwd), timeout=timeout, check=False, **kw)
        if check and proc.returncode:
            raise HostCommandError(self.name, proc)
        return proc

    def popen(
        self, argv: Sequence[str | os.PathLike[str]], *, cwd: str | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host (text by default); the caller waits for it and closes
        its pipes (``with host.popen(...) as proc``)."""
        kw.setdefault("text", True)
        return subprocess.Popen(self.cmd(argv, cwd), **kw)


class Network:
    """Hosts by name, each with an address on one /24 of its own; see the module's docstring.

    Creating one creates everything; :meth:`close` (or leaving ``with``) removes it all.
    """

    def __init__(self, names: Iterable[str], *, timeout: float = 30) -> None:
        self.names = list(names)
        for name in self.names:
            if not _NAME.fullmatch(name) or name == "sw":
                raise ValueError(f"{name!r} is not a host name here (a-z, 0-9, '-'; not 'sw')")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"host names repeat: {self.names}")
        if not 1 <= len(self.names) <= 253:
            raise ValueError("a network has 1 to 253 hosts")
        self.id = secrets.token_hex(3)
        self.dir = STATE / self.id
        self.switch = f"{PREFIX}{self.id}-sw"
        self.subnet: ipaddress.IPv4Network  # 10.231.k.0/24, once k is claimed
        self._hosts: dict[str, Host] = {}
        self._lock: int | None = None
        self._anchors: list[subprocess.Popen[bytes]] = []
        self._ns_ids: set[str] = set()
        self._closed = False
        try:
            self._create(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    # ---- what tests use

    def host(self, name: str) -> Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in this network: {list(self._hosts)}") from None

    def __iter__(self) -> Iterator[Host]:
        return iter(list(self._hosts.values()))

    def __len__(self) -> int:
        return len(self._hosts)

    @property
    def addresses(self) -> dict[str, str]:
        """Each host's address, by name."""
        return {host.name: host.address for host in self._hosts.values()}

    @property
    def namespaces(self) -> list[str]:
        """The names of this network's network namespaces (the hosts' and the switch's)."""
        return [self.switch, *(f"{PREFIX}{self.id}-{name}" for name in self.names)]

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Network {self.id} {getattr(self, 'subnet', None)} {self.addresses}>"

    # ---- creating

    def _create(self, timeout: float) -> None:
        k, self._lock = _claim_subnet(self.id)
        self.subnet = ipaddress.IPv4Network(f"10.231.{k}.0/24")
        addresses = {name: str(self.subnet[i]) for i, name in enumerate(self.names, 1)}
        hosts_file = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        hosts_file += "".join(f"{addresses[name]}\t{name}\n" for name in self.names)
        for name in self.names:
            (self.dir / name / "root").mkdir(mode=0o755, parents=True)
            (self.dir / name / "hosts").write_text(hosts_file)

        _ip("-batch", "-", input="".join(f"netns add {ns}\n" for ns in self.namespaces))
        self._ns_ids.update(_netns_id(ns) for ns in self.namespaces)
        # IPv4 only: no IPv6 on the interfaces made from here on (lo keeps ::1), so no
        # link-local addresses and no router solicitations on the switch
        for ns in self.namespaces:
            _run(["nsenter", f"--net={NETNS_DIR / ns}", "sh", "-c", _NO_IPV6])
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        for i, name in enumerate(self.names, 1):
            ns = f"{PREFIX}{self.id}-{name}"
            port = f"p{i}-{name}"[:15]
            _ip(
                "-n",
                ns,
                "-batch",
                "-",
                input=f"link add eth0 type veth peer name {port} netns {self.switch}\n"
                f"addr add {addresses[name]}/24 dev eth0\n"
                "link set dev eth0 up\n"
                "link set dev lo up\n",
            )
            _ip("-n", self.switch, "link", "set", "dev", port, "master", "br0", "up")
        _ip("-n", self.switch, "link", "set", "dev", "br0", "up")

        for name in self.names:  # all at once, then wait for each
            self._anchors.append(
                subprocess.Popen(
                    [
                        "nsenter",
                        f"--net={NETNS_DIR / f'{PREFIX}{self.id}-{name}'}",
                        "unshare",
                        "--uts",
                        "--mount",
                        "--propagation",
                        "private",
                        "--fork",
                        "--kill-child",  # the anchor dies with unshare
                        "--",
                        "sh",
                        "-c",
                        _ANCHOR_SCRIPT,
                        "anchor",
                        name,
                        str(self.dir / name),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        for name, anchor in zip(self.names, self._anchors, strict=True):
            pid = _wait_ready(name, anchor, timeout)
            for kind in _NS_KINDS:
                self._ns_ids.add(os.readlink(f"/proc/{pid}/ns/{kind}"))
            self._hosts[name] = Host(
                name=name,
                address=addresses[name],
                netns=f"{PREFIX}{self.id}-{name}",
                dir=self.dir / name,
                pid=pid,
            )

    # ---- removing

    def close(self) -> None:
        """Kill every process in the network's namespaces, delete them and the per-host
        directories, release the subnet. Safe to call twice; raises if something stayed."""
        if self._closed:
            return
        # The anchors first, so that unshare reaps them and exits: killed along with unshare,
        # an anchor would linger as a zombie until init got round to it.
        for anchor in self._anchors:
            for child in _children(anchor.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        for anchor in self._anchors:
            with contextlib.suppress(subprocess.TimeoutExpired):
                anchor.wait(timeout=10)
        problems = _purge(self.id, self._ns_ids)
        for anchor in self._anchors:
            try:
                anchor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"anchor {anchor.pid} did not exit")
            if anchor.stdout:
                anchor.stdout.close()
        self._anchors.clear()
        if self._lock is not None:
            if not problems:  # else leave our id there: who claims the subnet next retries
                os.ftruncate(self._lock, 0)
            os.close(self._lock)  # releases the lock
            self._lock = None
        self._closed = True
        if problems:
            raise RuntimeError(f"network {self.id} left things behind: " + "; ".join(problems))


def _run(argv: list[str], input: str | None = None) -> None:
    proc = subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()} (input: {input!r})")


def _ip(*args: str, input: str | None = None) -> None:
    _run(["ip", *args], input=input)


def _namespaces(prefix: str) -> list[str]:
    """The names ``ip netns list`` shows that start with ``prefix``."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _netns_id(ns: str) -> str:
    """The namespace ``ip netns`` calls ``ns``, as /proc/PID/ns/net names it."""
    return f"net:[{os.stat(NETNS_DIR / ns).st_ino}]"


def _wait_ready(name: str, anchor: subprocess.Popen[bytes], timeout: float) -> int:
    """The pid of the anchor once it says it is ready; raises with its output if it fails.
    Reads the pipe unbuffered: after "ready" the pipe stays open (unshare holds it)."""
    assert anchor.stdout is not None
    fd = anchor.stdout.fileno()
    deadline = time.monotonic() + timeout
    output = b""
    while True:
        ready = re.search(rb"^ready (\d+)$", output, re.MULTILINE)
        if ready:
            pid = int(ready[1])
            if _stat(pid)[1] != anchor.pid:  # the child that unshare forked
                raise RuntimeError(f"host {name}: {pid} is not unshare's child")
            anchor.stdout.close()
            return pid
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"host {name}: anchor not ready in {timeout}s: {output!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            with contextlib.suppress(subprocess.TimeoutExpired):
                anchor.wait(timeout=5)
            raise RuntimeError(
                f"host {name}: anchor exited ({anchor.returncode}): {output.decode()}"
            )
        output += chunk


def sweep() -> None:
    """Remove what networks of killed sessions left behind: namespaces, processes, directories
    of networks that no live process holds the subnet lock of. Creating a network sweeps."""
    _LOCKS.mkdir(mode=0o755, parents=True, exist_ok=True)
    guard = os.open(_LOCKS / "claim", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        _sweep()
    finally:
        os.close(guard)


def _sweep() -> None:
    """:func:`sweep`, the claim lock held: no network is between claiming and naming itself."""
    live: set[str] = set()
    problems: list[str] = []
    for lock in sorted(_LOCKS.glob("*.lock")):
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        try:
            netid = os.pread(fd, 64, 0).decode().strip()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.add(netid)
                continue
            # a network that was not closed: its process died holding the lock
            if netid and not _purge(netid, set()):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    ids = {d.name for d in STATE.iterdir() if re.fullmatch(r"[0-9a-f]+", d.name)}
    for ns in _namespaces(PREFIX):
        if found := re.fullmatch(rf"{PREFIX}([0-9a-f]+)-.+", ns):
            ids.add(found[1])
    for netid in sorted(ids - live):
        problems += [f"network {netid}: {problem}" for problem in _purge(netid, set())]
    if problems:
        raise RuntimeError("cannot clear what earlier networks left: " + "; ".join(problems))


def _claim_subnet(netid: str) -> tuple[int, int]:
    """Lock the lowest free ``k`` (network ``10.231.k.0/24``) for ``netid``: (k, the lock's fd).
    The lock goes with the fd, and so with the process if it dies. Sweeps first."""
    _LOCKS.mkdir(mode=0o755, parents=True, exist_ok=True)
    guard = os.open(_LOCKS / "claim", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        _sweep()
        for k in range(1, 255):
            fd = os.open(_LOCKS / f"{k}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, netid.encode(), 0)
            return k, fd
        raise RuntimeError("no free 10.231.k.0/24 left")
    finally:
        os.close(guard)


def _stat(pid: int) -> tuple[str, int]:
    """(state, ppid) of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    """The children of a process (of its threads), from /proc."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    except OSError:  # gone meanwhile
        pass
    return found


def _processes() -> dict[int, tuple[int, set[str]]]:
    """Each live process: its parent and the namespaces it is in (net, mnt, uts)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            state, ppid = _stat(pid)
            if state in "ZX":
                continue
            found[pid] = (ppid, {os.readlink(f"/proc/{pid}/ns/{kind}") for kind in _NS_KINDS})
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def _kill_inside(ns_ids: set[str], timeout: float = 10) -> list[str]:
    """SIGKILL every process in one of ``ns_ids``, and their descendants, until none is left."""
    own = {os.readlink(f"/proc/self/ns/{kind}") for kind in _NS_KINDS}
    ns_ids = ns_ids - own  # never the machine's own namespaces, whatever happened
    protected = {1, os.getpid()}
    pid = os.getpid()
    while pid > 1:
        pid = _stat(pid)[1]
        protected.add(pid)
    deadline = time.monotonic() + timeout
    while True:
        procs = _processes()
        targets = {pid for pid, (_, ns) in procs.items() if ns & ns_ids}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(targets)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in targets:
                    targets.add(child)
                    todo.append(child)
        targets -= protected
        if not targets:
            return []
        if time.monotonic() > deadline:
            return [f"processes {sorted(targets)} outlived SIGKILL"]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _purge(netid: str, ns_ids: set[str]) -> list[str]:
    """Remove what network ``netid`` has on the machine: its processes (those in its network
    namespaces or in ``ns_ids``, and their descendants), namespaces and directory. Returns
    what could not be removed."""
    prefix = f"{PREFIX}{netid}-"
    namespaces = _namespaces(prefix)
    ns_ids = set(ns_ids)
    for ns in namespaces:
        with contextlib.suppress(OSError):
            ns_ids.add(_netns_id(ns))
    problems = _kill_inside(ns_ids)
    if namespaces:
        proc = subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns del {ns}\n" for ns in namespaces),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        left = _namespaces(prefix)
        if left:
            problems.append(f"namespaces {left} remain: {proc.stderr.strip()}")
    try:
        shutil.rmtree(STATE / netid)
    except FileNotFoundError:
        pass
    except OSError as e:
        problems.append(f"{STATE / netid}: {e}")
    return problems

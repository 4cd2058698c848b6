"""The hosts harness (tests/hosts.py): separate hostnames, /etc/hosts, addresses, loopbacks and
private trees per host, and nothing left on the machine once a network is closed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hosts
import pytest
from hosts import EXPORT, STATE, Host, Network

NAMES = ["dev1", "dev2", "sched", "node1", "node2"]

SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(socket.gethostname().encode())
    conn.close()
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as conn:
    print(conn.recv(100).decode())
"""


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def _root_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return sorted(line.split()[0] for line in out.stdout.splitlines())


def _cgroup_mounts(mountinfo: str) -> list[str]:
    """The mount points of cgroup filesystems in a /proc/PID/mountinfo."""
    return sorted(
        line.split()[4]
        for line in mountinfo.splitlines()
        if line.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")
    )


def _others(netns: list[str]) -> list[str]:
    """Namespaces not made by this harness (which may clear what a killed run left)."""
    return [ns for ns in netns if not ns.startswith("hwt-")]


def _ns_ids(pid: int) -> set[str]:
    return {os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("net", "mnt", "uts")}


def _pids_in(ns_ids: set[str]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _ns_ids(int(entry)) & ns_ids:
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def root_before() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "etc_hosts": Path("/etc/hosts").read_bytes(),
        "links": _root_links(),
        "srv": sorted(os.listdir("/srv")),
    }


@pytest.fixture(scope="module")
def net(root_before: dict[str, Any]) -> Iterator[Network]:
    with Network(NAMES) as network:
        yield network


@contextmanager
def serve(host: Host, bind: str) -> Iterator[int]:
    """A TCP server in ``host`` bound to ``bind``, answering with its hostname; yields its port."""
    with host.popen(
        [sys.executable, "-c", SERVER, bind], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip().isdigit(), f"server in {host.name} did not start: {line!r}"
            yield int(line)
        finally:
            proc.kill()
            proc.wait()


def connect(host: Host, target: str, port: int) -> subprocess.CompletedProcess[str]:
    return host.run([sys.executable, "-c", CLIENT, target, str(port)], check=False)


def test_each_host_has_its_own_name_and_hosts_file(
    net: Network, root_before: dict[str, Any]
) -> None:
    assert [host.name for host in net] == NAMES
    assert len(set(net.addresses.values())) == len(NAMES)
    for host in net:
        assert host.run(["hostname"]).stdout.strip() == host.name
        etc_hosts = host.run(["cat", "/etc/hosts"]).stdout
        for name, address in net.addresses.items():
            assert f"{address}\t{name}\n" in etc_hosts
            assert host.run(["getent", "hosts", name]).stdout.split()[0] == address
        eth0 = host.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"inet {host.address}/24 " in eth0
        # nothing but eth0 and lo, and no way off the test network
        links = host.run(["ip", "-o", "link"]).stdout
        assert sorted(re.findall(r"^\d+: ([^:@]+)", links, re.MULTILINE)) == ["eth0", "lo"]
        addrs = re.findall(
            r"^\d+: (\S+)\s+(inet6?) (\S+)", host.run(["ip", "-o", "addr"]).stdout, re.M
        )
        assert sorted(addrs) == [
            ("eth0", "inet", f"{host.address}/24"),
            ("lo", "inet", "127.0.0.1/8"),
            ("lo", "inet6", "::1/128"),
        ]
        routes = host.run(["ip", "-4", "route"]).stdout.strip()
        # the machine's cgroup mounts, which a dockerd in the host needs, are all there
        assert _cgroup_mounts(host.run(["cat", "/proc/self/mountinfo"]).stdout) == (
            _cgroup_mounts(Path("/proc/self/mountinfo").read_text())
        )
        assert host.run(["ip", "netns", "list"]).stdout == ""
        assert routes == f"{net.subnet} dev eth0 proto kernel scope link src {host.address}"
    assert socket.gethostname() == root_before["hostname"]
    assert Path("/etc/hosts").read_bytes() == root_before["etc_hosts"]
    assert _root_links() == root_before["links"]
    switch = ["ip", "-n", net.switch, "-o", "addr"]
    assert subprocess.run(switch, capture_output=True, text=True, check=True).stdout == ""
    root_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert str(net.subnet.network_address)[:-1] not in root_addrs


def test_tcp_between_hosts_not_from_the_machine(net: Network) -> None:
    dev1, sched = net.host("dev1"), net.host("sched")
    with serve(dev1, dev1.address) as port:
        for target in ("dev1", dev1.address):
            reply = connect(sched, target, port)
            assert reply.returncode == 0, reply.stderr
            assert reply.stdout.strip() == "dev1"
        with pytest.raises(OSError), socket.create_connection((dev1.address, port), timeout=1):
            pass
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=5),
        ):
            pass
        listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
        assert f"{dev1.address}:{port}" not in listening
        assert f"{dev1.address}:{port}" in dev1.run(["ss", "-Hltn"]).stdout


def test_loopback_is_per_host(net: Network) -> None:
    dev1, node1 = net.host("dev1"), net.host("node1")
    with serve(dev1, "127.0.0.1") as port:
        mine = connect(dev1, "127.0.0.1", port)
        assert mine.returncode == 0, mine.stderr
        assert mine.stdout.strip() == "dev1"
        other = connect(node1, "127.0.0.1", port)
        assert other.returncode != 0
        assert "ConnectionRefusedError" in other.stderr
        assert "ConnectionRefusedError" in connect(node1, dev1.address, port).stderr
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=5),
        ):
            pass


def test_private_trees(net: Network, root_before: dict[str, Any]) -> None:
    dev1, dev2 = net.host("dev1"), net.host("dev2")
    assert dev1.root != dev2.root
    (dev1.root / "work").mkdir()
    (dev1.root / "work" / "marker.txt").write_text("only on dev1\n")
    inside = dev1.inside(dev1.root / "work" / "marker.txt")
    assert inside == EXPORT / "work" / "marker.txt"
    assert dev1.run(["cat", str(inside)]).stdout == "only on dev1\n"
    assert dev1.run(["cat", "marker.txt"], cwd=str(EXPORT / "work")).stdout == "only on dev1\n"
    assert dev2.run(["test", "-e", str(inside)], check=False).returncode == 1
    assert dev2.run(["ls", "-A", str(EXPORT)]).stdout == ""
    # and the other way: what a host writes there shows in its tree only
    dev2.run(["sh", "-c", f"echo from dev2 > {EXPORT}/note"])
    assert (dev2.root / "note").read_text() == "from dev2\n"
    assert not (dev1.root / "note").exists()
    assert sorted(os.listdir("/srv")) == root_before["srv"]
    with pytest.raises(subprocess.CalledProcessError, match="on dev2"):
        dev2.run(["cat", str(inside)])


def test_two_networks_coexist(net: Network) -> None:
    with Network(["other"]) as second:
        assert second.subnet != net.subnet
        assert second.id != net.id
        other = second.host("other")
        assert other.run(["hostname"]).stdout.strip() == "other"
        assert "dev1" not in other.run(["cat", "/etc/hosts"]).stdout
        with serve(net.host("dev1"), net.host("dev1").address) as port:
            reply = connect(other, net.host("dev1").address, port)
            assert reply.returncode != 0
            assert "unreachable" in reply.stderr


def test_close_removes_everything(net: Network, root_before: dict[str, Any]) -> None:
    netns_before = _root_netns()
    network = Network(["a", "b"])
    host = network.host("a")
    ns_ids = set().union(*(_ns_ids(h.pid) for h in network))
    anchors = [h.pid for h in network]
    assert all(f"hwt-{network.id}-{name}" in _root_netns() for name in ("a", "b", "sw"))
    # a process left running in a host, with a child of its own
    with host.popen(["sh", "-c", "sleep 1000 & echo $!; wait"], stdout=subprocess.PIPE) as stray:
        try:
            assert stray.stdout is not None
            child = int(stray.stdout.readline())
            assert set(_pids_in(ns_ids)) >= {*anchors, stray.pid, child}
            network.close()
            assert stray.wait(timeout=10) == -9
        finally:
            stray.kill()
    assert not [ns for ns in _root_netns() if ns.startswith(f"hwt-{network.id}-")]
    assert _others(_root_netns()) == _others(netns_before)
    assert set(net.namespaces) <= set(_root_netns())
    assert _pids_in(ns_ids) == []
    assert not [pid for pid in anchors if Path(f"/proc/{pid}").exists()]
    assert not (STATE / network.id).exists()
    assert not host.root.exists()
    assert _root_links() == root_before["links"]
    network.close()
    with network:
        pass


@pytest.mark.parametrize("fail_at", ["veth", "anchor"])
def test_failed_creation_leaves_nothing(monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    netns_before = _root_netns()
    seen: dict[str, Any] = {}
    real_ip, real_wait_ready = hosts._ip, hosts._wait_ready

    def ip(*args: str, input: str | None = None) -> None:
        found = re.search(r"hwt-([0-9a-f]+)-", " ".join(args) + (input or ""))
        assert found
        seen.setdefault("id", found[1])
        if fail_at == "veth" and "type veth" in (input or ""):
            seen["ns_id"] = hosts._netns_id(f"hwt-{seen['id']}-sw")
            raise RuntimeError("injected")
        real_ip(*args, input=input)

    def wait_ready(name: str, anchor: subprocess.Popen[bytes], timeout: float) -> int:
        seen["ns_id"] = hosts._netns_id(f"hwt-{seen['id']}-{name}")
        seen["anchor"] = anchor
        real_wait_ready(name, anchor, timeout)  # it is up: mounts made, sleeping
        raise RuntimeError("injected")

    monkeypatch.setattr(hosts, "_ip", ip)
    monkeypatch.setattr(hosts, "_wait_ready", wait_ready)
    with pytest.raises(RuntimeError, match="injected"):
        Network(["a", "b"])
    assert not [ns for ns in _root_netns() if ns.startswith(f"hwt-{seen['id']}-")]
    assert _others(_root_netns()) == _others(netns_before)
    assert not (STATE / seen["id"]).exists()
    assert _pids_in({seen["ns_id"]}) == []
    if fail_at == "anchor":
        assert seen["anchor"].returncode is not None


def test_sweep_clears_what_a_killed_session_left() -> None:
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from hosts import Network\n"
        "network = Network(['lost'])\n"
        "print(network.id, network.host('lost').pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            netid, anchor = proc.stdout.readline().split()
            ns_ids = _ns_ids(int(anchor))
        finally:
            proc.kill()
            proc.wait()
    # killed without closing: all of it is still there
    assert f"hwt-{netid}-lost" in _root_netns()
    assert (STATE / netid / "lost" / "root").is_dir()
    assert _pids_in(ns_ids)
    hosts.sweep()
    assert not [ns for ns in _root_netns() if ns.startswith(f"hwt-{netid}-")]
    assert not (STATE / netid).exists()
    assert _pids_in(ns_ids) == []

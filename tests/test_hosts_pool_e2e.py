"""End to end over separate hosts: hwrun on developer hosts, the scheduler and a GPU node each
on a host of its own, every link TLS with the pool CA, clients identified by their machine.

The pool is :class:`pool_hosts.HostsPool` (see there for how the hosts and the developer
hosts' exported roots are made). Clients run inside ``dev1`` with no token: the share agent of
their machine signs their credentials, and the work runs on ``node1`` as the account it
verified.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from capture import Capture
from harness import DEV_USER, UnixHTTPConnection
from netns import tcp_listeners
from pool_hosts import DEVELOPERS, NODE, OTHER_NODE, SCHEDULER, HostsPool

from jupyter_hwsched.protocol.identity import Signer
from jupyter_hwsched.protocol.records import Identity

pytestmark = pytest.mark.e2e

GPU_PROBE = "import socket, os; print(socket.gethostname(), os.environ['CUDA_VISIBLE_DEVICES'])"


@pytest.fixture(scope="module")
def hosts_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsPool]:
    with HostsPool(tmp_path_factory.mktemp("hosts-pool")) as pool:
        print(f"hosts pool started in {pool.started_in:.1f}s: {pool.addresses}")
        yield pool


@pytest.fixture
def clean(hosts_pool: HostsPool) -> Iterator[HostsPool]:
    """The pool, checked clean before and after the test."""
    hosts_pool.assert_clean()
    yield hosts_pool
    hosts_pool.assert_clean(timeout=60)


def test_a_run_from_dev1_as_root_lands_on_node1_and_leaves_nothing(clean: HostsPool) -> None:
    work = clean.workdir_in("dev1", "root-work")
    began = time.monotonic()
    done = clean.hwrun("dev1", ["--gpu", "1", "--", "python", "-c", GPU_PROBE], cwd=work)
    took = time.monotonic() - began
    assert done.returncode == 0, clean.explain(done)
    host, gpus = done.stdout.split()
    assert host == NODE, clean.explain(done)
    assert gpus in ("0", "1"), clean.explain(done)
    print(f"hwrun on node1 from dev1 took {took:.1f}s")
    # the GPU goes back, the container and the mount go away (waited for: the agent tears
    # down after the client has its exit status)
    clean.assert_clean()
    assert clean.holders() == []
    assert clean.containers() == []
    assert clean.node_mounts() == []


def test_a_run_as_hwdev_runs_as_the_verified_account(clean: HostsPool) -> None:
    work = clean.workdir_in("dev1", "hwdev-work", owner=DEV_USER)
    done = clean.hwrun(
        "dev1",
        ["--gpu", "1", "--", "sh", "-c", "id -u; id -un; hostname; touch by-hwdev"],
        user=DEV_USER,
        cwd=work,
    )
    assert done.returncode == 0, clean.explain(done)
    assert done.stdout.split() == ["4321", DEV_USER, NODE], clean.explain(done)
    assert (clean.host("dev1").root / "hwdev-work" / "by-hwdev").stat().st_uid == 4321
    # the scheduler recorded the session as hwdev of dev1, as dev1's share agent vouched
    sessions = clean.api("GET", "/api/sessions?all=1")
    mine = [(s["host"], s["state"]) for s in sessions if s["user"] == DEV_USER]
    assert mine == [("dev1", "ended")], sessions


def test_what_a_run_writes_is_on_dev1_and_not_on_dev2(clean: HostsPool) -> None:
    dev1, dev2 = clean.host("dev1"), clean.host("dev2")
    work = clean.workdir_in("dev1", "written-work")
    done = clean.hwrun(
        "dev1", ["--gpu", "1", "--", "sh", "-c", "echo written on $(hostname) > out.txt"], cwd=work
    )
    assert done.returncode == 0, clean.explain(done)
    target = str(work / "out.txt")
    assert dev1.run(["cat", target]).stdout == f"written on {NODE}\n"
    assert dev2.run(["test", "-e", target], check=False).returncode == 1
    # nor by the machine's path of the tree: no developer host sees the private trees there
    raw = str(dev1.root / "written-work" / "out.txt")
    assert dev1.run(["test", "-e", raw], check=False).returncode == 1
    assert dev2.run(["test", "-e", raw], check=False).returncode == 1
    assert not (dev2.root / "written-work").exists()


def test_nothing_listens_on_loopback(hosts_pool: HostsPool) -> None:
    for port in (hosts_pool.scheduler_port, hosts_pool.agent_port):
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=5),
        ):
            pass
    # in every host, each listening TCP socket is on the host's own address
    listening = {}
    for name in (*DEVELOPERS, SCHEDULER, NODE):
        host = hosts_pool.host(name)
        listening[name] = tcp_listeners(host.pid)
        assert all(address == host.address for address, _ in listening[name]), listening
    sched, node = hosts_pool.host(SCHEDULER), hosts_pool.host(NODE)
    assert listening[SCHEDULER] == [(sched.address, hosts_pool.scheduler_port)]
    assert listening[NODE] == [(node.address, hosts_pool.agent_port)]
    assert hosts_pool.scheduler_url.startswith(f"https://{sched.address}:")
    assert hosts_pool.agent_url.startswith(f"https://{node.address}:")


CELL = """
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.extension_manager.load_extension("jupyter_hwsched")
result = shell.run_cell({cell!r})
raise SystemExit(0 if result.success else 1)
"""


def test_a_capture_on_the_wire_shows_nothing_in_the_clear(clean: HostsPool) -> None:
    """What an eavesdropper on dev1's, the scheduler's and node1's cables sees of a %%hwrun
    cell: neither the code, nor its output, nor a credential, a session secret or a key."""
    tag = uuid.uuid4().hex[:12]
    code_marker, output = f"CODE-{tag}", f"OUTPUT-{tag}"
    cell = f"%%hwrun --gpu 1\nprint('OUTPUT-' + {tag!r})  # {code_marker}\n"
    work = clean.workdir_in("dev1", f"capture-{tag}")
    dev1, node1 = clean.host("dev1"), clean.host(NODE)
    control = f"CONTROL-{tag}".encode()
    with Capture(clean.net, ["dev1", SCHEDULER, NODE]) as wire:
        # a clear-text datagram from dev1 to node1: shows the capture would see clear text
        dev1.run(
            [
                "python3",
                "-c",
                "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                f".sendto(sys.argv[1].encode(), ({node1.address!r}, 9))",
                control.decode(),
            ]
        )
        done = dev1.run(
            [sys.executable, "-c", CELL.format(cell=cell)],
            cwd=str(work),
            env=clean.client_env("dev1"),
            check=False,
            timeout=180,
        )
    assert done.returncode == 0, clean.explain(done)
    assert output in done.stdout, clean.explain(done)
    assert wire.seen(control), "the capture saw nothing: it cannot vouch for anything"
    assert wire.size > 100_000  # the run's traffic: TLS, and the share's SSH
    secrets = {
        "the cell's code": code_marker.encode(),
        "the cell's output": output.encode(),
        "the operator token": clean.token.encode(),
        "a credential (JWT)": b"eyJhbGciOiJFUzI1NiIs",
        "a token header": b"Authorization: token",
        "the share's private key": b"OPENSSH PRIVATE KEY",
    }
    leaked = [what for what, data in secrets.items() if wire.seen(data)]
    assert leaked == [], f"in the clear on the wire: {leaked}"


def test_the_share_admits_the_placed_node_only_and_nodes_speak_for_themselves(
    clean: HostsPool,
) -> None:
    """Root on dev1 asks for a session and opens its share (as a client does); then node2,
    another node's host, tries the share with the very key, and node1's name."""
    certs = clean.certificates
    root_dev1 = Signer(certs["dev1"].cert, certs["dev1"].key).for_user(
        Identity("root", 0, 0, "root", "/root")
    )
    asked = {"request": {"gpus": 1}, "user": "root", "host": "dev1"}
    session = clean.api("POST", "/api/sessions", asked, credential=root_dev1)
    try:
        assert session["state"] == "placed" and session["node"] == NODE
        grant = share_of(clean.share_socket("dev1"), session["id"])
        assert grant["host"] == clean.host("dev1").address
        key = clean.dir / "grant-key"
        key.write_text(grant["private_key"])
        key.chmod(0o600)
        known = clean.dir / "grant-known"
        known.write_text(f"share {grant['host_key']}\n")
        sftp = [
            "sftp",
            "-b",
            "-",
            "-i",
            str(key),
            "-P",
            str(grant["port"]),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "HostKeyAlias=share",
            "-o",
            "BatchMode=yes",
            f"{grant['user']}@{grant['host']}",
        ]
        elsewhere = clean.host(OTHER_NODE).run(sftp, input="ls /\n", check=False)
        assert elsewhere.returncode != 0 and "Permission denied" in elsewhere.stderr
        placed = clean.host(NODE).run(sftp, input="ls /\n", check=False)
        assert placed.returncode == 0, placed.stderr
        assert "/usr" in placed.stdout
        # node2's own credential registers, beats and reports nothing as node1
        node2 = Signer(certs[OTHER_NODE].cert, certs[OTHER_NODE].key).for_self()
        for method, path, body in (
            ("PUT", f"/api/nodes/{NODE}", {"url": "https://x:1", "gpus": [], "protocol": 1}),
            ("POST", f"/api/nodes/{NODE}/heartbeat", {"sessions": []}),
            ("POST", f"/api/sessions/{session['id']}/running", {"node": NODE}),
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                clean.api(method, path, body, credential=node2, via=OTHER_NODE)
            assert refused.value.code == 403, (path, refused.value.reason)
            assert f"node {OTHER_NODE} may not" in str(refused.value.reason)
        assert clean.api("GET", f"/api/sessions/{session['id']}")["state"] == "placed"
    finally:
        clean.api("DELETE", f"/api/sessions/{session['id']}", credential=root_dev1)


def share_of(socket_path: str, session_id: str) -> dict[str, Any]:
    """What the share agent hands the client of a session: the share's grant."""
    conn = UnixHTTPConnection(socket_path)
    try:
        conn.request("POST", "/shares", json.dumps({"session_id": session_id}))
        answer = conn.getresponse()
        body: dict[str, Any] = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 201, body
    return body

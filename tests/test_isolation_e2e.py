"""Sessions that cannot touch each other or the node, tried from inside one, on test hosts.

The pool is :class:`pool_hosts.HostsPool`: the scheduler, the node (its own dockerd and agent)
and two developer machines each on a host of their own. A session's container has no network
(``network_mode=none``); its kernel's channels are unix sockets in its own run directory. From
inside a session, while a co-tenant from another developer machine runs on the same node:
nothing of the node's network or of the co-tenant shows or answers. Egress is an operator's
opt-in: a Docker network made for it (here macvlan on the node's link), tested toward another
test host.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness import wait_for
from pool_hosts import HWRUN, NODE, SCHEDULER, HostsPool, _wait_ready

from jupyter_hwsched.agent.cache.store import store_name

pytestmark = pytest.mark.e2e

MARKER = "4242.5"  # the co-tenant sleeps this long: the argument names its process

PROBE = """
import json, os, socket, sys
targets = json.loads(sys.argv[1])
seen = {"reached": [], "refused": []}
for host, port in targets:
    try:
        socket.create_connection((host, port), timeout=3).close()
        seen["reached"].append([host, port])
    except OSError:
        seen["refused"].append([host, port])
tables = {}
for table in ("tcp", "tcp6", "udp", "unix"):
    try:
        tables[table] = len(open(f"/proc/net/{table}").read().splitlines()[1:])
    except OSError:
        tables[table] = -1
seen["sockets"] = tables
seen["interfaces"] = sorted(os.listdir("/sys/class/net"))
commands = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        commands.append(open(f"/proc/{pid}/cmdline").read().replace("\\0", " "))
    except OSError:
        pass
seen["processes"] = commands
seen["run_dir"] = sorted(os.listdir("/.hwsched/run"))
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsPool]:
    with HostsPool(tmp_path_factory.mktemp("isolation")) as hosts_pool:
        yield hosts_pool


def _probe(pool: HostsPool, targets: list[tuple[str, int]]) -> dict[str, object]:
    work = pool.workdir_in("dev1", f"probe-{len(targets)}")
    done = pool.hwrun(
        "dev1", ["-q", "--", sys.executable, "-c", PROBE, json.dumps(targets)], cwd=work
    )
    assert done.returncode == 0, pool.explain(done)
    return dict(json.loads(done.stdout))


def test_from_inside_a_session_nothing_of_the_node_or_a_cotenant_shows(pool: HostsPool) -> None:
    pool.assert_clean()
    node, sched = pool.host(NODE).address, pool.host(SCHEDULER).address
    cotenant = pool.host("dev2").popen(
        ["hwrun", "-q", "--", "sleep", MARKER],
        env=pool.client_env("dev2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: len(pool.holders()) == 1, 60, "the co-tenant to hold its GPU")
        seen = _probe(
            pool,
            [
                (sched, pool.scheduler_port),
                (node, pool.agent_port),
                ("127.0.0.1", pool.agent_port),
                ("127.0.0.1", 22),
            ],
        )
        # the co-tenant was there all along
        assert cotenant.poll() is None, cotenant.communicate()
    finally:
        cotenant.terminate()
        cotenant.communicate(timeout=60)
    assert seen["reached"] == [], seen
    assert seen["interfaces"] == ["lo"], seen
    assert seen["sockets"] == {"tcp": 0, "tcp6": 0, "udp": 0, "unix": 0}, seen
    processes = seen["processes"]
    assert isinstance(processes, list)
    assert not [p for p in processes if MARKER in p], processes
    # its own init, the container's keepalive and the probe itself: nothing else at all
    own = [p for p in processes if p.startswith(("/.hwsched/init ", "sleep infinity"))]
    assert len(own) == 2 and len(processes) == 3, processes
    assert seen["run_dir"] == [], seen
    pool.assert_clean(timeout=60)


def test_a_kernel_listens_on_no_port(pool: HostsPool) -> None:
    """The Remote GPU kernel's five channels are unix sockets in its own run directory: while
    it runs, no TCP port of the node's is open for it (on the node's network it had five)."""
    before = _node_listeners(pool)
    work = pool.workdir_in("dev1", "kernel-ports")
    kernel = pool.host("dev1").popen(
        [sys.executable, "-c", KERNEL],
        cwd=str(work),
        env=pool.client_env("dev1"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert kernel.stdin is not None and kernel.stdout is not None
    try:
        files = kernel.stdout.readline().strip()
        while_running = _node_listeners(pool)
    finally:
        out, err = kernel.communicate(input="done", timeout=120)
    assert "'k-1'" in files and "'k-5'" in files, files + out + err
    assert while_running == before
    pool.assert_clean(timeout=60)


KERNEL = """
import sys
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="hwsched-remote")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
out = []
def hook(msg):
    if msg["msg_type"] == "stream":
        out.append(msg["content"]["text"])
kc.execute_interactive("import os; print(sorted(os.listdir('/.hwsched/run')))",
                       output_hook=hook, timeout=60)
print("".join(out).strip().splitlines()[-1], flush=True)  # after the progress lines
sys.stdin.read()
kc.stop_channels()
km.shutdown_kernel()
"""


def _node_listeners(pool: HostsPool) -> set[str]:
    out = pool.host(NODE).run(["ss", "-Hltn"]).stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def test_egress_is_an_operators_opt_in_toward_other_hosts(pool: HostsPool) -> None:
    """With a macvlan network on the node's link named as the containers' network, the work
    reaches another test host; the node's own address stays out of reach (macvlan keeps a
    parent and its children apart)."""
    subnet = pool.net.subnet if pool.net else None
    assert subnet is not None
    pool._docker(
        "network",
        "create",
        "--driver=macvlan",
        f"--subnet={subnet}",
        f"--ip-range={subnet[240]}/28",
        "--opt=parent=eth0",
        "hwsched-egress",
    )
    listener = pool.host("dev2").popen(
        [sys.executable, "-c", LISTEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        port = int(listener.stdout.readline()) if listener.stdout else 0
        _restart_agent(pool, "--DockerRunner.network_mode=hwsched-egress")
        dev2, node = pool.host("dev2").address, pool.host(NODE).address
        seen = _probe(pool, [(dev2, port), (node, pool.agent_port)])
        assert seen["reached"] == [[dev2, port]], seen
        assert seen["refused"] == [[node, pool.agent_port]], seen
    finally:
        listener.kill()
        listener.communicate()
        _restart_agent(pool)
        pool._docker("network", "rm", "hwsched-egress")
    pool.assert_clean(timeout=60)


def test_a_copy_from_one_machine_is_never_served_to_the_same_user_on_another(
    pool: HostsPool,
) -> None:
    """hwdev on dev1 and hwdev on dev2: the same name, uid and path, different files. The
    node's cache is per developer machine as the scheduler verified it."""
    uid = pwd.getpwnam("hwdev").pw_uid
    for host in ("dev1", "dev2"):
        work = pool.workdir_in(host, "cached", owner="hwdev")
        module = pool.host(host).root / "cached" / "env" / "mod.py"
        module.parent.mkdir()
        module.write_text(host)
        for path in (module.parent, module):
            os.chown(path, uid, uid)
    env = {"HWSCHED_CACHE_TREES": str(work / "env")}
    # through the share, or from the cache: the file's device against the tree's new marker
    show = (
        "cat env/mod.py; echo; "
        "[ $(stat -c %d env/mod.py) = $(stat -c %d env/m) ] && echo share || echo cache"
    )

    def run(host: str) -> list[str]:
        marker = pool.host(host).root / "cached" / "env" / "m"  # new: not in any cache
        marker.unlink(missing_ok=True)
        marker.write_text("m")
        os.chown(marker, uid, uid)
        done = pool.hwrun(host, ["-q", "--", "sh", "-c", show], user="hwdev", cwd=work, env=env)
        assert done.returncode == 0, pool.explain(done)
        return done.stdout.split()

    store = pool.agent_state / "cache" / store_name("dev1", "hwdev", uid) / "objects"
    copy = store / hashlib.sha256(str(work / "env" / "mod.py").encode()).hexdigest()
    first = pool.host("dev1").popen(
        [
            "runuser",
            "-u",
            "hwdev",
            "--",
            HWRUN,
            "-q",
            "--",
            "sh",
            "-c",
            "cat env/mod.py; while [ ! -e go ]; do sleep 0.1; done",
        ],
        cwd=str(work),
        env=pool.client_env("dev1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(copy.exists, 60, "the node to copy dev1's file")
    finally:
        (pool.host("dev1").root / "cached" / "go").touch()
        out, err = first.communicate(timeout=120)
    assert out == "dev1", err
    assert run("dev1") == ["dev1", "cache"]
    assert run("dev2") == ["dev2", "share"]
    pool.assert_clean(timeout=60)


LISTEN = """
import socket
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""


def _restart_agent(pool: HostsPool, *extra: str) -> None:
    pool.services["agent"].stop()
    pool.services["agent"] = pool._agent_service(pool.certificates[NODE], *extra)
    _wait_ready(pool.services["agent"], "HWSCHED_AGENT_READY", 120)

"""Warm leases: the node keeps a developer's container, mount and a ready kernel between
sessions, binds only the session's own GPUs to them, and never serves a changed file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pool, call_json, wait_for
from jupyter_client.manager import AsyncKernelManager

pytestmark = pytest.mark.e2e

#: what a cell reports of the GPUs its container can reach
DEVICES = """
import json, os
devs = sorted(n for n in os.listdir('/dev') if n.startswith('nvidia'))
opened = []
for i in range(4):
    try:
        open(f'/dev/nvidia{i}', 'rb').close()
        opened.append(i)
    except OSError:
        pass
try:
    os.mknod('/dev/nvidia9', 0o20666, os.makedev(1, 3))
    made = 'made'
except OSError as exc:
    made = type(exc).__name__
print(json.dumps({'devs': devs, 'opened': opened, 'made': made,
                  'cuda': os.environ['CUDA_VISIBLE_DEVICES'],
                  'session': os.environ['HWSCHED_SESSION']}))
"""


@pytest.fixture
def warm_env(clean_pool: Pool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pool]:
    """Clients that ask for warm leases; every lease ended (and nothing left) after."""
    for name, value in (
        ("HWSCHED_URL", clean_pool.url),
        ("HWSCHED_TOKEN", clean_pool.token),
        ("HWSCHED_SHARE_SOCKET", clean_pool.share_socket),
        ("HWSCHED_KEEP_WARM", "300"),
    ):
        monkeypatch.setenv(name, value)
    try:
        yield clean_pool
    finally:
        warm_end(clean_pool)
        wait_for(lambda: not node(clean_pool)["leases"], 60, "the node to drop its leases")


def node(pool: Pool) -> dict[str, Any]:
    """The node agent's own account of itself: sessions and warm leases."""
    url = pool.pool()["nodes"][0]["url"]
    return dict(call_json(url, "GET", "/hwsched/node", pool.token))


def warm_end(pool: Pool, *leases: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_hwsched.cli.hwsched", "warm", "end", *leases],
        env=dict(os.environ, HWSCHED_SHARE_SOCKET=pool.share_socket),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def one_session(pool: Pool, cwd: Path, code: str) -> tuple[str, dict[str, Any]]:
    """A Remote GPU kernel's whole life: start, one cell, shut down. The cell's output, and
    the node's session record while the kernel ran."""
    km = AsyncKernelManager(kernel_name="hwsched-remote")
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    out: list[str] = []
    try:
        await kc.wait_for_ready(timeout=120)

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = await kc.execute_interactive(code, timeout=120, output_hook=hook)
        assert reply["content"]["status"] == "ok", "".join(out)
        [record] = node(pool)["sessions"]
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    return "".join(out), record


def idle_lease(pool: Pool, with_kernel: bool) -> dict[str, Any] | None:
    leases = node(pool)["leases"]
    if len(leases) == 1 and not leases[0]["in_use"] and (leases[0]["kernel_id"] or not with_kernel):
        return dict(leases[0])
    return None


def kept_kernel(pool: Pool, cwd: Path, code: str = "print(1)") -> dict[str, Any]:
    """Sessions until the node keeps a kernel for the next one: the first session's manifest
    may not yet name the kernel's modules (a fresh hot set), the second's does."""
    for _ in range(3):
        asyncio.run(one_session(pool, cwd, code))
        lease = wait_for(lambda: settled(pool), 60, "the lease's kernel to start")
        if lease["kernel_id"]:
            return lease
    raise AssertionError(f"no kernel was kept: {node(pool)['leases']}")


def settled(pool: Pool) -> dict[str, Any] | None:
    """The idle lease once its kernel's start has finished (kept, or let go)."""
    lease = idle_lease(pool, False)
    return lease if lease and not lease["kernel_starting"] else None


def container_devices(container: str) -> list[str]:
    """The nvidia device nodes in a container's /dev, seen from the host."""
    pid = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", container],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return sorted(n for n in os.listdir(f"/proc/{pid}/root/dev") if n.startswith("nvidia"))


def test_a_warm_lease_binds_only_its_gpus_to_a_ready_kernel(
    warm_env: Pool, workspace: Path
) -> None:
    pool = warm_env
    lease = kept_kernel(pool, workspace)
    # between sessions: the GPU is back in the pool, the container keeps no GPU device
    assert not pool.held_gpus()
    assert container_devices(lease["container"]) == []

    def shown() -> dict[str, Any] | None:  # the pool's view, from the node's next heartbeat
        leases = [x for n in pool.pool()["nodes"] for x in n["warm_leases"]]
        return leases[0] if leases and leases[0]["kernel"] else None

    seen = wait_for(shown, 30, "the pool to show the lease")
    assert seen["id"] == lease["id"] and not seen["in_use"] and seen["user"] == "root"
    status = subprocess.run(
        [sys.executable, "-m", "jupyter_hwsched.cli.hwsched", "status"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "kept warm" in status.stdout and lease["id"] in status.stdout, status.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter_hwsched.cli.hwsched", "warm", "list"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lease["id"] in listed.stdout and "idle" in listed.stdout, listed.stdout

    # the next session gets the kept kernel, in the kept container, with its GPU alone
    out, record = asyncio.run(one_session(pool, workspace, DEVICES))
    seen = json.loads(out.strip().splitlines()[-1])
    assert record["kernel_id"] == lease["kernel_id"]
    assert record["container"] == lease["container"]
    [held] = [g["index"] for g in record["gpus"]]
    assert seen["devs"] == [f"nvidia{held}"]
    assert seen["opened"] == [held]
    assert seen["made"] == "PermissionError"  # no capability to make another
    assert seen["cuda"] == str(held)
    assert seen["session"] == record["id"]
    wait_for(lambda: settled(pool), 60, "the lease to be idle again")
    assert container_devices(lease["container"]) == []

    # a session from another directory: the kept container, a kernel of its own
    elsewhere = workspace / "elsewhere"
    elsewhere.mkdir()
    wait_for(lambda: settled(pool), 60, "the kept kernel's start")
    out, record = asyncio.run(one_session(pool, elsewhere, "import os\nprint(os.getcwd())"))
    assert out.strip() == str(elsewhere)
    assert record["container"] == lease["container"]
    assert record["kernel_id"] != lease["kernel_id"]

    # the developer ends it: the share closes, the node drops the container and the mount
    assert lease["id"] in warm_end(pool)
    wait_for(lambda: not node(pool)["leases"], 60, "the node to drop the lease")
    pool.assert_clean()


def test_a_changed_file_is_never_served_by_a_kept_kernel(
    warm_env: Pool, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = warm_env
    lib = workspace / "lib"
    lib.mkdir()
    (lib / "warmmod.py").write_text("VALUE = 1\n")
    trees = f"/usr:{sys.prefix}:{lib}"
    monkeypatch.setenv("HWSCHED_CACHE_TREES", trees)
    monkeypatch.setenv("PYTHONPATH", str(lib))
    monkeypatch.setenv("HWSCHED_PRELOAD", "warmmod")
    code = "import sys, warmmod\nprint(warmmod.VALUE, 'warmmod' in sys.modules)"
    lease = kept_kernel(pool, workspace, code)
    # unchanged: the kept kernel, which imported the module ahead, runs the cell
    out, record = asyncio.run(one_session(pool, workspace, code))
    assert out.split() == ["1", "True"]
    assert record["kernel_id"] == lease["kernel_id"]
    assert wait_for(lambda: settled(pool), 60, "the next kept kernel")["kernel_id"]
    # changed on the developer's side: the lease cannot serve it, the run reads the new file
    (lib / "warmmod.py").write_text("VALUE = 2\n")
    before = idle_lease(pool, True)
    assert before is not None
    out, record = asyncio.run(one_session(pool, workspace, code))
    assert out.split() == ["2", "True"]
    assert record["container"] != before["container"]
    log = (pool.workdir / "agent.log").read_text(errors="replace")
    assert "files of the cached trees changed" in log


def test_a_lease_ends_by_its_idle_time(
    warm_env: Pool, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = warm_env
    monkeypatch.setenv("HWSCHED_KEEP_WARM", "3")
    asyncio.run(one_session(pool, workspace, "print(1)"))
    [lease] = node(pool)["leases"]  # kept at once, as the session ended
    assert not pool.held_gpus()
    said = f"warm lease {lease['id']} ended: idle for its keep-warm time"
    wait_for(lambda: said in (pool.workdir / "agent.log").read_text(errors="replace"), 60, said)
    assert not node(pool)["leases"]
    pool.assert_clean()  # the share closed on the developer's side too

"""A node agent killed with ``kill -9`` and started again takes its live sessions back
(agent/recovery.py): a Remote GPU kernel keeps its state and its GPU, and the developer's
side reconnects to it; a command goes on, and its client reads on from its spool on the
node without a line lost or repeated. What cannot be taken back (a command whose output's
keeper died; a kernel whose container went meanwhile) is torn down and ends with the reason.
The Docker runner (its containers belong to the engine, not to the agent), and for the kernel
the bubblewrap runner too (its sandboxes are the children of their keepers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import POOL_KINDS, Pool, Service, read_rest, wait_for
from jupyter_client.manager import AsyncKernelManager

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    from conftest import _need_e2e

    _need_e2e()
    # a node is down after 30 s of silence: room for an agent to start again
    the_pool = Pool(tmp_path_factory.mktemp("restart"), node_timeout=30.0)
    try:
        yield the_pool
    finally:
        the_pool.stop()


@pytest.fixture(scope="module")
def bwrap_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    from conftest import _need_e2e

    _need_e2e()
    the_pool = Pool(
        tmp_path_factory.mktemp("restart-bwrap"), node_timeout=30.0, **POOL_KINDS["bwrap"]
    )
    try:
        yield the_pool
    finally:
        the_pool.stop()


def restart_agent(pool: Pool, meanwhile: Callable[[], None] = lambda: None) -> Service:
    """``kill -9`` the node agent, do ``meanwhile``, then start it again as before (same
    port, same state directory)."""
    old = pool.services[1]
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait()
    meanwhile()
    again = pool.agent_service(pool.node, pool.agent_port, "2xA100-80GB", pool.agent_args, "agent")
    pool.services[1] = again
    again.wait_line("HWSCHED_AGENT_READY")
    return again


async def restart_agent_beside(pool: Pool, meanwhile: Callable[[], None] = lambda: None) -> Service:
    """``restart_agent`` from inside a client's event loop, which goes on meanwhile: a Remote
    GPU kernel's provisioner renews its session's lease on that loop, and a loop blocked for
    the restart let the lease run out first (CI saw "lease expired" for "container was gone")."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, restart_agent, pool, meanwhile)


def running_session(pool: Pool) -> dict[str, Any]:
    [session] = [s for s in pool.api("GET", "/api/sessions") if s["state"] == "running"]
    return dict(session)


async def run(kc: Any, code: str) -> str:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, timeout=120, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)


@contextlib.asynccontextmanager
async def remote_kernel(
    pool: Pool, cwd: Path, now: bool = False
) -> AsyncIterator[tuple[AsyncKernelManager, Any]]:
    """A Remote GPU kernel of the pool's, ready, and its client; shut down after."""
    os.environ.update(
        HWSCHED_URL=pool.url,
        HWSCHED_TOKEN=pool.token,
        HWSCHED_SHARE_SOCKET=pool.share_socket,
    )
    km = AsyncKernelManager(kernel_name="hwsched-remote")
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        yield km, kc
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=now)


@pytest.mark.parametrize("runner", ["docker", "bwrap"])
def test_a_kernel_keeps_its_state_through_an_agent_restart(
    runner: str, request: pytest.FixtureRequest, workspace: Path
) -> None:
    pool: Pool = request.getfixturevalue("pool" if runner == "docker" else "bwrap_pool")
    pool.assert_clean()

    async def scenario() -> None:
        async with remote_kernel(pool, workspace) as (km, kc):
            await run(kc, "import os\nx = 41\npid = os.getpid()")
            [held] = pool.held_gpus()
            before = running_session(pool)
            [container] = pool.containers()
            mounts = pool.mounts()

            await restart_agent_beside(pool)
            # the same session, container, mount and GPU; the kernel's state is intact
            assert pool.containers() == [container]
            assert pool.mounts() == mounts
            out = await run(kc, "print(x + 1, os.getpid() == pid)")
            assert out.split() == ["42", "True"]
            after = running_session(pool)
            assert after["id"] == before["id"] and after["state"] == "running"
            assert pool.held_gpus() == [held]
            log = pool.services[1].log.read_text()
            assert f"took back session {before['id']}" in log

            # what jupyter_server does for any kernel works for one taken back: a restart
            await km.restart_kernel()
            await kc.wait_for_ready(timeout=120)
            assert (await run(kc, "print('x' in globals())")).strip() == "False"

            # and a second kill -9 finds the restarted kernel's process in the record
            await run(kc, "import os\nz = 7\npid = os.getpid()")
            await restart_agent_beside(pool)
            out = await run(kc, "print(z + 1, os.getpid() == pid)")
            assert out.split() == ["8", "True"]
            log = pool.services[1].log.read_text()
            assert f"took back session {before['id']}" in log

    asyncio.run(scenario())
    pool.assert_clean(timeout=60)


#: numbered lines on stdout, every tenth also on stderr, then exit 3
NUMBERS = (
    "import sys, time\n"
    "for i in range(1, {n} + 1):\n"
    " print(i, flush=True)\n"
    " if i % 10 == 0: print('e', i, file=sys.stderr, flush=True)\n"
    " time.sleep({gap})\n"
    "sys.exit(3)"
)


def numbers(pool: Pool, workspace: Path, n: int, gap: float) -> subprocess.Popen[str]:
    return pool.popen_hwrun(
        ["-q", "--gpu", "1", "--", "python3", "-c", NUMBERS.format(n=n, gap=gap)],
        cwd=str(workspace),
    )


def check_numbers(proc: subprocess.Popen[str], first: list[str], n: int) -> None:
    """The whole output came, once each and in order, and the exit status too."""
    out, err = read_rest(proc, 180)
    assert proc.returncode == 3, err
    assert [int(x) for x in [*first, *out.split()]] == list(range(1, n + 1))
    assert err.split("\n")[:-1] == [f"e {i}" for i in range(10, n + 1, 10)], err


def keepers(pool: Pool) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "jupyter_hwsched.agent.keeper" in (p.info["cmdline"] or [])
        and str(pool.state) in " ".join(p.info["cmdline"] or [])
    ]


def test_a_command_and_its_output_go_on_through_an_agent_restart(
    pool: Pool, workspace: Path
) -> None:
    pool.assert_clean()
    proc = numbers(pool, workspace, 200, 0.02)
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(40)]
        before = running_session(pool)
        restart_agent(pool, lambda: time.sleep(1))  # the command goes on meanwhile
        check_numbers(proc, first, 200)
        [after] = [s for s in pool.api("GET", "/api/sessions?all=1") if s["id"] == before["id"]]
        assert after["end_reason"] == "released by the client", after
        pool.assert_clean(timeout=60)
        assert not keepers(pool)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_command_that_ended_while_the_agent_was_down_still_says_how(
    pool: Pool, workspace: Path
) -> None:
    pool.assert_clean()
    proc = numbers(pool, workspace, 60, 0.01)
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline()]
        restart_agent(pool, lambda: wait_for(lambda: not keepers(pool), 60, "the run to end"))
        check_numbers(proc, first, 60)
        pool.assert_clean(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_command_whose_output_was_lost_ends_with_the_reason(pool: Pool, workspace: Path) -> None:
    pool.assert_clean()
    proc = numbers(pool, workspace, 100000, 0.1)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        before = running_session(pool)

        def kill_keeper() -> None:
            for pid in keepers(pool):
                os.kill(pid, signal.SIGKILL)

        restart_agent(pool, kill_keeper)
        _, said = read_rest(proc, 120)
        assert proc.returncode != 0
        last = said.strip().splitlines()[-1]
        assert "the keeper of the command's output had stopped" in last, said
        pool.assert_clean(timeout=60)
        [ended] = [s for s in pool.api("GET", "/api/sessions?all=1") if s["id"] == before["id"]]
        assert ended["state"] == "ended"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_kernel_whose_container_went_is_ended_with_the_reason(
    pool: Pool, workspace: Path
) -> None:
    pool.assert_clean()

    async def scenario() -> str:
        async with remote_kernel(pool, workspace, now=True):
            session = running_session(pool)
            [container] = pool.containers()

            def remove_container() -> None:
                subprocess.run(["docker", "rm", "-f", container], check=True, capture_output=True)

            await restart_agent_beside(pool, remove_container)
            return str(session["id"])

    session_id = asyncio.run(scenario())
    pool.assert_clean(timeout=60)
    [ended] = [s for s in pool.api("GET", "/api/sessions?all=1") if s["id"] == session_id]
    assert "container was gone" in (ended["end_reason"] or ""), ended


def test_a_bubblewrap_kernel_whose_keeper_died_is_ended_with_the_reason(
    bwrap_pool: Pool, workspace: Path
) -> None:
    """The keeper of a bubblewrap kernel is its sandbox's parent: killed while the agent is
    down, it takes the kernel with it, and the restarted agent ends the session saying so,
    leaving no cgroup, mount, keeper or held GPU."""
    pool = bwrap_pool
    pool.assert_clean()

    async def scenario() -> str:
        async with remote_kernel(pool, workspace, now=True) as (_, kc):
            await run(kc, "x = 1")
            session = running_session(pool)
            assert keepers(pool), "a bubblewrap kernel runs under a keeper"

            def kill_keeper() -> None:
                for pid in keepers(pool):
                    os.kill(pid, signal.SIGKILL)

            await restart_agent_beside(pool, kill_keeper)
            return str(session["id"])

    session_id = asyncio.run(scenario())
    pool.assert_clean(timeout=60)
    assert not keepers(pool)
    [ended] = [s for s in pool.api("GET", "/api/sessions?all=1") if s["id"] == session_id]
    assert "the session's kernel had stopped" in (ended["end_reason"] or ""), ended

"""The node agent's session lifecycle (:class:`NodeService`) without jupyter_server.

A real scheduler (its core and its HTTP handlers, in this process) places the sessions; the
node service talks to it through the real protocol client. The runner is the host runner and
the GPUs are simulated; kernels are started by a stand-in for the agent server's kernel
manager, since starting them is what jupyter_server does and these tests are about the rest.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from harness import free_port
from tornado import httpserver, web

from jupyter_hwsched.agent.gpus import SimulatedInventory
from jupyter_hwsched.agent.host_runner import HostRunner
from jupyter_hwsched.agent.service import NodeService
from jupyter_hwsched.agent.sessions import NodeSession
from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import (
    ConflictError,
    ForbiddenError,
    SessionEnded,
    UnavailableError,
)
from jupyter_hwsched.protocol.records import Identity, SessionRecord, SessionSubmission, StartSpec
from jupyter_hwsched.protocol.request import make_request
from jupyter_hwsched.scheduler.access import Authenticator
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.handlers import NotFoundHandler, handlers
from jupyter_hwsched.scheduler.store import Store

NODE = "node-a"


@dataclass
class StandInKernels:
    """Stands in for the agent server's kernel manager: records what it is asked to do."""

    fail_with: BaseException | None = None
    gate: asyncio.Event | None = None  # when set, a start waits for it
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)

    async def start_kernel(self, session: NodeSession) -> str:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.started.append(session.id)
        return f"kernel-of-{session.id}"

    async def shutdown_kernel(self, kernel_id: str) -> None:
        self.stopped.append(kernel_id)

    def kernel_process(self, kernel_id: str) -> None:
        return None  # no process: a record without a kernel, which is never taken back


@dataclass
class World:
    scheduler: Scheduler
    client: SchedulerClient
    node: NodeService
    kernels: StandInKernels

    async def submit(self, node: str = NODE) -> SessionRecord:
        request = make_request(gpus=1, node=node)
        return await self.client.submit(SessionSubmission(request, "ann", socket.gethostname()))

    def spec(self, cwd: Path, uid: int | None = None) -> StartSpec:
        me = Identity("ann", os.getuid() if uid is None else uid, os.getgid(), "ann", str(cwd))
        return StartSpec(None, me, str(cwd), {"PATH": "/usr/bin:/bin"}, "kernel", ["python"])


@asynccontextmanager
async def world(tmp_path: Path, **node_options: Any) -> AsyncIterator[World]:
    """A scheduler serving HTTP on a free port, with this node and a second one registered."""
    token = secrets.token_hex(8)
    store = Store(str(tmp_path / "sched.sqlite"))
    scheduler = Scheduler(store)
    app = web.Application(
        handlers(scheduler, Authenticator(token)), default_handler_class=NotFoundHandler
    )
    server = httpserver.HTTPServer(app)
    port = free_port()
    server.listen(port, "127.0.0.1")
    client = SchedulerClient(f"http://127.0.0.1:{port}", token)
    kernels = StandInKernels()
    node_options.setdefault("allow_root", True)  # the tests run as root
    node = NodeService(
        node_name=NODE,
        inventory=SimulatedInventory("2xA100-80GB", NODE),
        runner=HostRunner(single_user=True),
        scheduler=SchedulerClient(f"http://127.0.0.1:{port}", token),
        kernels=kernels,
        state_dir=tmp_path / "agent",
        sshfs_options=[],
        labels=[],
        **node_options,
    )
    node.public_url = "http://127.0.0.1:1"
    node.remove_leftovers()
    await node.register()
    gpus = [g.to_json() for g in SimulatedInventory("1xA100-80GB", "node-b").gpus()]
    scheduler.register_node("node-b", "http://127.0.0.1:2", gpus)
    try:
        yield World(scheduler, client, node, kernels)
    finally:
        await node.stop()
        client.close()
        server.stop()
        store.close()


def run(tmp_path: Path, scenario: Callable[[World], Awaitable[Any]], **node_options: Any) -> Any:
    async def main() -> Any:
        async with world(tmp_path, **node_options) as w:
            return await scenario(w)

    return asyncio.run(main())


def test_a_placed_session_starts_runs_and_ends(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        asked = await w.submit()
        assert asked.secret is not None
        placed = await w.node.placed_session(asked.id, asked.secret)
        assert placed.state == "placed" and placed.node == NODE
        session = await w.node.start_session(w.spec(tmp_path), placed)
        assert w.kernels.started == [asked.id]
        assert session.kernel_id == f"kernel-of-{asked.id}"
        assert [g.index for g in session.gpus] == placed.gpu_ids
        assert session.env()["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, placed.gpu_ids))
        assert (await w.client.session(asked.id)).state == "running"
        assert session.base.is_dir()

        await w.node.end_session(asked.id, "released by the client")
        ended = await w.client.session(asked.id)
        assert (ended.state, ended.end_reason) == ("ended", "released by the client")
        assert w.kernels.stopped == [f"kernel-of-{asked.id}"]
        assert w.node.sessions == {}
        assert not session.base.exists()

    run(tmp_path, scenario)


def test_a_wrong_secret_is_refused_before_anything_starts(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        asked = await w.submit()
        with pytest.raises(ForbiddenError, match="not session"):
            await w.node.placed_session(asked.id, "someone-elses-secret")
        assert w.node.sessions == {} and w.kernels.started == []

    run(tmp_path, scenario)


def test_a_session_placed_elsewhere_is_not_started_here(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        asked = await w.submit(node="node-b")
        placed = await w.node.placed_session(asked.id, asked.secret)
        with pytest.raises(ConflictError, match="not placed on node-a"):
            await w.node.start_session(w.spec(tmp_path), placed)
        assert w.node.sessions == {} and w.kernels.started == []
        assert (await w.client.session(asked.id)).state == "placed"  # not this node's to end

    run(tmp_path, scenario)


def test_root_runs_only_where_the_node_allows_it(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        asked = await w.submit()
        placed = await w.node.placed_session(asked.id, asked.secret)
        with pytest.raises(ForbiddenError, match="does not run work as root for ann@"):
            await w.node.start_session(w.spec(tmp_path, uid=0), placed)
        assert w.node.sessions == {}

    run(tmp_path, scenario, allow_root=False)


def test_root_for_the_users_the_operator_lists(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        asked = await w.submit()
        placed = await w.node.placed_session(asked.id, asked.secret)
        session = await w.node.start_session(w.spec(tmp_path, uid=0), placed)
        assert session.uid == 0

    listed = (f"ann@{socket.gethostname()}",)
    run(tmp_path, scenario, allow_root=False, root_users=listed)


def test_a_failed_kernel_start_undoes_everything_and_says_why(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        w.kernels.fail_with = RuntimeError("no python in the container")
        asked = await w.submit()
        placed = await w.node.placed_session(asked.id, asked.secret)
        with pytest.raises(UnavailableError, match="no python in the container"):
            await w.node.start_session(w.spec(tmp_path), placed)
        ended = await w.client.session(asked.id)
        assert ended.state == "ended"
        assert ended.end_reason == (
            "the node could not start the session: no python in the container"
        )
        assert w.node.sessions == {}
        assert list((tmp_path / "agent" / "sessions").iterdir()) == []

    run(tmp_path, scenario)


def test_an_end_during_the_start_wins_and_tears_down_once(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        w.kernels.gate = asyncio.Event()
        asked = await w.submit()
        placed = await w.node.placed_session(asked.id, asked.secret)
        start = asyncio.ensure_future(w.node.start_session(w.spec(tmp_path), placed))
        while asked.id not in w.node.sessions:
            await asyncio.sleep(0.01)
        ending = asyncio.ensure_future(w.node.end_session(asked.id, "cancelled by ann"))
        await asyncio.sleep(0.05)
        w.kernels.gate.set()  # the kernel comes up after the end was asked for
        with pytest.raises(SessionEnded, match="cancelled by ann"):
            await start
        await ending
        assert w.kernels.stopped == [f"kernel-of-{asked.id}"]  # torn down, once
        ended = await w.client.session(asked.id)
        assert (ended.state, ended.end_reason) == ("ended", "cancelled by ann")

    run(tmp_path, scenario)


def test_a_heartbeat_ends_what_the_scheduler_ended(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        asked = await w.submit()
        placed = await w.node.placed_session(asked.id, asked.secret)
        await w.node.start_session(w.spec(tmp_path), placed)
        await w.client.end(asked.id, "lease expired")
        await w.node.heartbeat()
        assert w.node.sessions == {}
        assert w.kernels.stopped == [f"kernel-of-{asked.id}"]

    run(tmp_path, scenario)


def test_work_runs_as_the_verified_owner_whatever_the_request_claims(tmp_path: Path) -> None:
    owner = Identity("ann", 4321, 4321, "ann", str(tmp_path), (4321,))

    async def scenario(w: World) -> None:
        asked = await w.submit()
        placed = await w.node.placed_session(asked.id, asked.secret)
        claims_root = w.spec(tmp_path, uid=0)  # what a forged request would say
        session = await w.node.start_session(claims_root, replace(placed, owner=owner))
        assert (session.uid, session.gid, session.spec.user) == (4321, 4321, owner)

    run(tmp_path, scenario, allow_root=False)  # and root is not allowed here at all


def test_a_kernels_gpu_memory_on_real_gpus_is_nvmls_figure_for_its_processes(
    tmp_path: Path,
) -> None:
    """What a shared kernel is held to on a real GPU: NVML's per-process memory, summed over
    the processes of its container (here NVML and the container are stand-ins)."""

    class Nvml(SimulatedInventory):
        simulated = False

        def process_memory(self) -> dict[int, int]:
            return {10: 5 * 2**30, 11: 3 * 2**30, 99: 40 * 2**30}  # 99: someone else's

    class Runner(HostRunner):
        def owns(self, container_id: str, pid: int) -> bool:
            return container_id == "c1" and pid in (10, 11)

    node = NodeService(
        node_name=NODE,
        inventory=Nvml("1xA100-80GB", NODE),
        runner=Runner(single_user=True),
        scheduler=SchedulerClient("http://127.0.0.1:1", "t"),
        kernels=StandInKernels(),
        state_dir=tmp_path,
        sshfs_options=[],
        labels=[],
    )
    session = replace(
        NodeSession("s", "", NODE, None, [], tmp_path, node.runner, []),  # type: ignore[arg-type]
        container_id="c1",
    )
    assert node.gpu_memory_of(session) == 8 * 2**30
    assert node.gpu_memory_of(replace(session, container_id="c2")) == 0

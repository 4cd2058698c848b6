"""Slow readers: what the agent relays is bounded in its memory, and arrives complete.

Each test streams 100 MB to a client that does not read for a while, measures the agent's
resident memory meanwhile, then reads everything and checks every numbered line, in order.
The bounds are the defaults (agent/relay.py): 8 MiB per command stream and per kernel
connection, 32 MiB of replay buffer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import Pool, call_json
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.websocket import WebSocketClientConnection

from jupyter_hwsched.agent.relay import CommandRelay, MiB
from jupyter_hwsched.agent.websocket import NoDelayConnection
from jupyter_hwsched.developer.session import RemoteSession, kernel_argv
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.protocol.websocket import open_websocket

pytestmark = pytest.mark.e2e

LINES = 2_000_000
LINE = 50  # "%09d " and 39 x and a newline
TOTAL = LINES * LINE  # 100 MB
PRODUCE = (
    "import sys\nw = sys.stdout{out}.write\npad = {pad}'x' * 39\n"
    "for i in range({lines}):\n    w({pad}'%09d %s\\n' % (i, pad))\n"
)
#: what the agent may hold besides its bounds: the message or chunk that crossed a bound,
#: what was under way when the producer was paused (ipykernel sends 0.2 s of output as one
#: message, some MB here), the few copies made while relaying one message, and the memory
#: Python's allocator keeps for reuse
SLACK = 32 * MiB
UNSENT = NoDelayConnection.max_unsent_bytes.default_value
REPLAY = NoDelayConnection.max_replay_bytes.default_value


def expected_lines(data: bytes) -> None:
    """Every numbered line, each once, in order."""
    pad = b"x" * 39
    if data == b"".join(b"%09d %s\n" % (i, pad) for i in range(LINES)):
        return
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line != b"%09d %s" % (i, pad):
            raise AssertionError(
                f"{len(data)} of {TOTAL} bytes; line {i} of {LINES} is {line[:60]!r}"
            )
    raise AssertionError(f"{len(data)} bytes instead of {TOTAL}")


def settings(pool: Pool) -> HwschedClient:
    return HwschedClient(url=pool.url, token=pool.token, share_socket=pool.share_socket)


def agent_process(pool: Pool) -> psutil.Process:
    [agent] = [s for s in pool.services if s.name == "agent"]
    return psutil.Process(agent.proc.pid)


class Meter:
    """The agent's resident memory: before, and at its highest while sampled; ``allowed``:
    how much more it may hold."""

    def __init__(self, pool: Pool, what: str, allowed: int) -> None:
        self.what = what
        self.allowed = allowed
        self.agent = agent_process(pool)
        self.baseline = self.agent.memory_info().rss
        self.peak = self.baseline

    def sample(self) -> int:
        rss = int(self.agent.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    @property
    def over(self) -> bool:
        return self.growth >= self.allowed

    def report(self) -> str:
        return (
            f"{self.what}: agent RSS {self.baseline / MiB:.1f} MiB before, "
            f"{self.peak / MiB:.1f} MiB at most while the client did not read: "
            f"+{self.growth / MiB:.1f} MiB (allowed +{self.allowed / MiB:.0f} MiB)"
        )


async def until(predicate: Callable[[], Any], what: str, meter: Meter, timeout: float = 300) -> Any:
    """Poll (sampling the agent's memory) until ``predicate()`` is truthy; the timeout only
    guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        meter.sample()
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def idle(meter: Meter, seconds: float) -> None:
    """Keep not reading for a while (the session's lease is renewed meanwhile)."""
    for _ in range(int(seconds / 0.25)):
        meter.sample()
        await asyncio.sleep(0.25)


def stalled(read: Callable[[], int]) -> Callable[[], int | None]:
    """A predicate: true (the count) once ``read()`` stopped growing for eight samples."""
    history: list[int] = []

    def check() -> int | None:
        history.append(read())
        recent = history[-8:]
        return recent[0] if len(recent) == 8 and len(set(recent)) == 1 else None

    return check


async def hang_up(ws: WebSocketClientConnection) -> None:
    """Close, and wait until the connection is closed (what was still coming is dropped).
    Once only: a connection that closed reads nothing more, not even its end."""
    ws.close()
    while await ws.read_message() is not None:
        pass


class BlockedCommand:
    """A command session writing 100 MB to a client that does not read (yet)."""

    def __init__(self, pool: Pool, workspace: Path, prelude: str = "") -> None:
        self.marker = f"backpressure-{uuid.uuid4().hex[:8]}"
        code = prelude + PRODUCE.format(out=".buffer", pad="b", lines=LINES)
        argv = ["python3", "-c", code, self.marker]
        self.session = RemoteSession(
            settings(pool), HardwareRequest(gpus=1), "command", argv, cwd=str(workspace)
        )
        self.ws: WebSocketClientConnection | None = None
        self.proc: psutil.Process | None = None
        self.written = 0

    async def start(self, meter: Meter) -> None:
        """Start it, and wait until the command stops writing."""
        placed = await self.session.acquire(lambda phase, info: None)
        assert placed.placement is not None
        path = f"/hwsched/sessions/{self.session.id}/command"
        self.ws = await open_websocket(placed.placement.agent_url, path, self.session.secret)
        self.proc = await until(self.producer, "the command to start", meter)
        await until(stalled(self.chars_written), "the command to stop writing", meter)

    def producer(self) -> psutil.Process | None:
        for proc in psutil.process_iter(["cmdline"]):
            if self.marker in (proc.info["cmdline"] or []):
                return proc
        return None

    def chars_written(self) -> int:
        assert self.proc is not None
        try:
            self.written = self.proc.io_counters().write_chars
        except psutil.NoSuchProcess:
            pass  # it finished: nothing held it back
        return self.written

    def running(self) -> bool:
        assert self.proc is not None
        try:
            return self.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    async def read_all(self) -> tuple[bytes, Any]:
        """Its stdout and its last frame (None: the connection closed before it)."""
        assert self.ws is not None
        out = bytearray()
        while True:
            message = await self.ws.read_message()
            if message is None:
                return bytes(out), None
            if isinstance(message, bytes):
                assert message[:1] == b"\x01", message[:100]
                out += message[1:]
            else:
                return bytes(out), json.loads(message)

    async def hang_up(self) -> None:
        if self.ws is not None:
            await hang_up(self.ws)
            self.ws = None

    async def close(self) -> None:
        await self.hang_up()
        await self.session.release()


def test_a_command_whose_client_does_not_read(clean_pool: Pool, workspace: Path) -> None:
    bound = CommandRelay().max_unsent_bytes

    async def scenario() -> tuple[Meter, int, bytes, Any]:
        meter = Meter(clean_pool, "command", 2 * bound + SLACK)
        command = BlockedCommand(clean_pool, workspace)
        try:
            await command.start(meter)
            await idle(meter, 5)  # paused, and stays so while the client does not read
            out, final = await command.read_all()
            return meter, command.written, out, final
        finally:
            await command.close()

    meter, written, out, final = asyncio.run(scenario())
    print(meter.report())
    print(f"the command had written {written / 1e6:.1f} of {TOTAL / 1e6:.0f} MB when paused")
    assert written < TOTAL // 2, "the command was not paused: it wrote on unread"
    assert not meter.over, meter.report()
    expected_lines(out)
    assert final == {"exit": 0}, "the connection closed before the exit frame"
    clean_pool.assert_clean()


def test_a_client_that_leaves_without_reading_frees_its_command(
    clean_pool: Pool, workspace: Path
) -> None:
    """The relay stops waiting for a client that went away: a command that ignores the
    hangup writes on to its end (its output dropped), and the session ends clean."""
    nohup = "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n"

    async def scenario() -> int:
        meter = Meter(clean_pool, "command", 2 * CommandRelay().max_unsent_bytes + SLACK)
        command = BlockedCommand(clean_pool, workspace, nohup)
        try:
            await command.start(meter)
            paused_at = command.written
            await command.hang_up()
            await until(lambda: not command.running(), "the command to run to its end", meter)
            return paused_at
        finally:
            await command.close()

    paused_at = asyncio.run(scenario())
    assert paused_at < TOTAL // 2, "the command was not paused: it wrote on unread"
    clean_pool.assert_clean()


class KernelClient:
    """The Kernel Gateway channels of a session's kernel, spoken directly (JSON messages)."""

    def __init__(self, pool: Pool, session: RemoteSession) -> None:
        self.pool = pool
        self.session = session
        self.client_session = uuid.uuid4().hex  # the same on reconnecting: the replay's key
        self.messages = Session(key=b"", username="test")
        self.ws: WebSocketClientConnection | None = None

    @property
    def agent_url(self) -> str:
        placement = self.session.record.placement
        assert placement is not None
        return placement.agent_url

    async def connect(self) -> None:
        path = f"/api/kernels/{self.session.kernel_id}/channels?session_id={self.client_session}"
        self.ws = await open_websocket(self.agent_url, path, self.session.secret)

    def execute(self, code: str) -> str:
        assert self.ws is not None
        content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
        msg = self.messages.msg("execute_request", content)
        msg["channel"] = "shell"
        self.ws.write_message(json.dumps(msg, default=json_default))
        return str(msg["header"]["msg_id"])

    async def next(self) -> dict[str, Any]:
        assert self.ws is not None
        raw = await self.ws.read_message()
        assert raw is not None, "the kernel's connection closed"
        return dict(json.loads(raw))

    async def close(self) -> None:
        """Close and wait until the agent has seen the client go."""
        assert self.ws is not None
        await hang_up(self.ws)
        self.ws = None
        kernel = f"/api/kernels/{self.session.kernel_id}"
        while call_json(self.agent_url, "GET", kernel, self.pool.token)["connections"]:
            await asyncio.sleep(0.1)

    async def output(self, msg_id: str, first: dict[str, Any] | None = None) -> bytes:
        """The cell's stdout, until the kernel is idle again after it."""
        out = []
        msg = first or await self.next()
        while True:
            if msg["parent_header"].get("msg_id") == msg_id:
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind == "error":
                    raise AssertionError(content["traceback"])
                elif kind == "status" and content["execution_state"] == "idle":
                    return "".join(out).encode()
            msg = await self.next()

    def paused(self) -> bool:
        sessions = call_json(self.agent_url, "GET", "/hwsched/sessions", self.pool.token)
        [container] = [s["container"] for s in sessions if s["id"] == self.session.id]
        out = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Paused}}", container],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip() == "true"


def paused_or_over(client: KernelClient, meter: Meter) -> Callable[[], bool]:
    """Whether the kernel was paused, or will not be: the agent already holds more than it
    may, or the cell ran to its end unread (its output was kept, or dropped)."""
    states: list[str] = []

    def check() -> bool:
        kernel = f"/api/kernels/{client.session.kernel_id}"
        states.append(
            call_json(client.agent_url, "GET", kernel, client.pool.token)["execution_state"]
        )
        ran = "busy" in states and states[-1] == "idle"
        return ran or meter.over or client.paused()

    return check


def kernel_session(pool: Pool, workspace: Path) -> RemoteSession:
    return RemoteSession(
        settings(pool), HardwareRequest(gpus=1), "kernel", kernel_argv(), cwd=str(workspace)
    )


def test_a_kernel_whose_client_does_not_read(clean_pool: Pool, workspace: Path) -> None:
    async def scenario() -> tuple[Meter, bytes]:
        meter = Meter(clean_pool, "kernel", 2 * UNSENT + SLACK)
        session = kernel_session(clean_pool, workspace)
        try:
            await session.acquire(lambda phase, info: None)
            client = KernelClient(clean_pool, session)
            await client.connect()
            msg_id = client.execute(PRODUCE.format(out="", pad="", lines=LINES))
            await until(paused_or_over(client, meter), "the kernel to be paused", meter)
            await idle(meter, 5)
            assert not meter.over, meter.report()
            assert client.paused(), "the kernel went on while its client did not read"
            out = await client.output(msg_id)
            await client.close()
            return meter, out
        finally:
            await session.release()

    meter, out = asyncio.run(scenario())
    print(meter.report())
    assert not meter.over, meter.report()
    expected_lines(out)
    clean_pool.assert_clean()


def test_a_kernel_whose_client_comes_back_later(clean_pool: Pool, workspace: Path) -> None:
    flag = workspace / f"go-{uuid.uuid4().hex[:8]}"
    wait = f"import os, time\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.1)\n"

    async def scenario() -> tuple[Meter, bytes]:
        meter = Meter(clean_pool, "kernel replay", REPLAY + UNSENT + SLACK)
        session = kernel_session(clean_pool, workspace)
        try:
            await session.acquire(lambda phase, info: None)
            client = KernelClient(clean_pool, session)
            await client.connect()
            msg_id = client.execute(wait + PRODUCE.format(out="", pad="", lines=LINES))
            while (await client.next())["msg_type"] != "execute_input":
                pass
            await client.close()  # the cell prints only once nobody is connected
            flag.touch()
            await until(paused_or_over(client, meter), "the kernel to be paused", meter)
            await idle(meter, 5)
            assert not meter.over, meter.report()
            assert client.paused(), "the kernel went on with its replay buffer full"
            await client.connect()  # the same client session: the kept messages come back
            await idle(meter, 5)  # replayed to a client that does not read yet
            first = await client.next()
            out = await client.output(msg_id, first)
            await client.close()
            return meter, out
        finally:
            await session.release()

    meter, out = asyncio.run(scenario())
    print(meter.report())
    assert not meter.over, meter.report()
    expected_lines(out)
    clean_pool.assert_clean()


def test_a_paused_kernel_ends_with_its_session(clean_pool: Pool, workspace: Path) -> None:
    """A client that gives its session back without reading: the paused kernel goes, and
    everything of the session with it."""

    async def scenario() -> None:
        meter = Meter(clean_pool, "kernel", 2 * UNSENT + SLACK)
        session = kernel_session(clean_pool, workspace)
        client = KernelClient(clean_pool, session)
        try:
            await session.acquire(lambda phase, info: None)
            await client.connect()
            client.execute(PRODUCE.format(out="", pad="", lines=LINES))
            await until(paused_or_over(client, meter), "the kernel to be paused", meter)
            assert client.paused(), "the kernel went on while its client did not read"
        finally:
            await session.release()  # paused: its client still connected, not reading
            if client.ws is not None:
                await hang_up(client.ws)

    asyncio.run(scenario())
    clean_pool.assert_clean()


def test_a_paused_kernel_restarts(clean_pool: Pool, workspace: Path) -> None:
    """A restart reaches a kernel paused for its unread output (a frozen process takes no
    signal, and the engine starts nothing in a paused container): the new kernel answers once
    its client reads on."""

    async def scenario() -> None:
        meter = Meter(clean_pool, "kernel", 2 * UNSENT + SLACK)
        session = kernel_session(clean_pool, workspace)
        client = KernelClient(clean_pool, session)
        try:
            await session.acquire(lambda phase, info: None)
            await client.connect()
            client.execute(PRODUCE.format(out="", pad="", lines=LINES))
            await until(paused_or_over(client, meter), "the kernel to be paused", meter)
            assert client.paused(), "the kernel went on while its client did not read"
            restart = f"/api/kernels/{session.kernel_id}/restart"
            await asyncio.get_running_loop().run_in_executor(
                None, call_json, client.agent_url, "POST", restart, clean_pool.token
            )
            # as a front end does: a cell sent while the restart completes may be lost with
            # the old kernel's channels (seen under load in CI), so run it again until the new
            # kernel answers; its output comes after the backlog, which the client reads on
            out = b""
            for _ in range(5):
                msg_id = client.execute("print('after the restart')")
                try:
                    out = await asyncio.wait_for(client.output(msg_id), 60)
                    break
                except asyncio.TimeoutError:
                    continue
            assert out == b"after the restart\n", "the restarted kernel never ran the cell"
        finally:
            await session.release()
            if client.ws is not None:
                await hang_up(client.ws)

    asyncio.run(scenario())
    clean_pool.assert_clean()

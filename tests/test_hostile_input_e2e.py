"""Hostile input, against the real services: malformed and oversized websocket frames on a
node agent's kernel channels and command stream; path traversal, shell metacharacters, NUL
bytes, newlines and very long strings in every string field a client sends (cwd, notebook
path, env, argv, GPU type, node name, the share's fields, kernelspec options).

Each gets a clear 4xx (or a websocket close) that says what to change, or is handled
literally: argv is a list, never a shell line, so ``$(id)`` reaches the program as it was
written. The service goes on serving its other clients, logs no traceback, and nothing is
left behind (``clean_pool``: no container, mount, share or held GPU)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pool
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError

from jupyter_hwsched.agent.websocket import BINARY
from jupyter_hwsched.developer.environment import caller_identity
from jupyter_hwsched.developer.session import RemoteSession, kernel_argv
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.records import MAX_PATH
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.protocol.websocket import open_websocket

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
HWSCHED = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched"]
#: what a hostile client puts in a string field
HOSTILE = [
    "../../etc",
    "/etc/../../etc",
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a\nb",
    "a\x00b",
    "x" * 100_000,
]


def settings(pool: Pool) -> HwschedClient:
    return HwschedClient(url=pool.url, token=pool.token, share_socket=pool.share_socket)


def agent_url(pool: Pool) -> str:
    return f"http://127.0.0.1:{pool.agent_port}"


@pytest.fixture
def agent_log_checked(clean_pool: Pool) -> Iterator[Pool]:
    """The pool; its node agent logs no traceback meanwhile (nothing crashed)."""
    [agent] = [s for s in clean_pool.services if s.name == "agent"]
    before = agent.log.stat().st_size
    yield clean_pool
    with open(agent.log, "rb") as f:
        f.seek(before)
        said = f.read().decode(errors="replace")
    for sign in ("Traceback", "Uncaught exception"):
        assert sign not in said, said[-4000:]


def call(url: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request; the status and the decoded answer (also for an error)."""
    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


# websockets


async def closed(ws: WebSocketClientConnection) -> tuple[int | None, str | None]:
    """Read until the agent closes the connection; its close code and reason."""
    while await asyncio.wait_for(ws.read_message(), timeout=60) is not None:
        pass
    ws.close()  # our side of it, already closed by the agent
    return ws.close_code, ws.close_reason


#: how the agent answers a frame over its limit: tornado sends 1009 and drops the connection
#: at once, so a client still sending the frame may see only the connection reset
TOO_BIG = ((1009, "message too big"), (None, None))


class Kernel:
    """A kernel session on the pool, and its channels in Jupyter's JSON protocol."""

    def __init__(self, pool: Pool, workspace: Path) -> None:
        self.pool = pool
        self.session = RemoteSession(
            settings(pool), HardwareRequest(gpus=1), "kernel", kernel_argv(), cwd=str(workspace)
        )
        self.messages = Session(key=b"", username="hostile-test")

    async def channels(self, subprotocol: str | None = None) -> WebSocketClientConnection:
        path = f"/api/kernels/{self.session.kernel_id}/channels"
        return await open_websocket(
            agent_url(self.pool), path, self.session.secret, subprotocol=subprotocol
        )

    async def run(self, ws: WebSocketClientConnection, code: str) -> str:
        """A cell's stdout, through this client."""
        content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
        msg = self.messages.msg("execute_request", content)
        msg["channel"] = "shell"
        await ws.write_message(json.dumps(msg, default=json_default))
        out = []
        while True:
            raw = await asyncio.wait_for(ws.read_message(), timeout=120)
            assert isinstance(raw, str), f"the connection closed: {ws.close_code} {ws.close_reason}"
            reply = json.loads(raw)
            if reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
                continue
            if reply["msg_type"] == "stream":
                out.append(reply["content"]["text"])
            elif reply["msg_type"] == "error":
                raise AssertionError(reply["content"]["traceback"])
            elif reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
                return "".join(out)


def message(channel: str, header: Any = None) -> dict[str, Any]:
    return {
        "channel": channel,
        "header": header if header is not None else {"msg_id": "1", "msg_type": "kernel_info"},
        "parent_header": {},
        "metadata": {},
        "content": {},
    }


def v1(channel: str, *frames: bytes) -> bytes:
    return bytes(serialize_msg_to_ws_v1(list(frames), channel))  # type: ignore[no-untyped-call]


FOUR = (b'{"msg_id": "1", "msg_type": "kernel_info_request"}', b"{}", b"{}", b"{}")

#: frames that are no kernel message: (the connection's subprotocol, the frame, what is wrong)
MALFORMED_FRAMES: list[tuple[str | None, str | bytes, str]] = [
    (None, "not json at all", "is not JSON"),
    (None, "[1, 2, 3]", "not a JSON object"),
    (None, json.dumps({"channel": "shell"}), "header is not a JSON object"),
    (None, json.dumps(message("iopub")), "no channel 'iopub'"),
    (None, json.dumps(message("$(id)")), "no channel '$(id)'"),
    (None, json.dumps({**message("shell"), "content": "; rm -rf /"}), "content is not"),
    # jupyter_server's own binary format, with a part count of 2**31 - 1
    (None, struct.pack("!i", 2**31 - 1) + b"\x00" * 8, "wrong number of offsets"),
    (None, struct.pack("!iII", 2, 12, 10**6), "offsets past the end"),
    # the binary protocol: a count of 2**64 - 1 offsets, once enough to hang the agent
    (BINARY, b"\xff" * 16, "wrong number of offsets"),
    (BINARY, struct.pack("<4Q", 3, 32, 37, 10**6) + b"shell", "past the end"),
    (BINARY, "a text frame", "expected a binary frame"),
    (BINARY, v1("iopub", *FOUR), "no channel 'iopub'"),
    (BINARY, v1("shell", b"{}"), "needs header, parent, metadata and content"),
    (BINARY, v1("shell", b"not json", b"{}", b"{}", b"{}"), "header is not JSON"),
]


def test_malformed_kernel_frames_close_only_their_connection(
    agent_log_checked: Pool, workspace: Path
) -> None:
    kernel = Kernel(agent_log_checked, workspace)

    async def scenario() -> list[tuple[Any, ...]]:
        await kernel.session.acquire(lambda phase, info: None)
        answers = []
        try:
            other = await kernel.channels()  # a well-behaved client, there all along
            assert await kernel.run(other, "print(6 * 7)") == "42\n"
            for subprotocol, frame, _ in MALFORMED_FRAMES:
                ws = await kernel.channels(subprotocol)
                await ws.write_message(frame, binary=isinstance(frame, bytes))
                answers.append(await closed(ws))
            # over the agent's limit on one frame (tornado's 10 MiB)
            ws = await kernel.channels()
            with contextlib.suppress(WebSocketClosedError, StreamClosedError):
                await ws.write_message("x" * (10 * MIB + 1))  # the agent may hang up mid-frame
            answers.append(await closed(ws))
            # the kernel and its other client go on as before
            assert await kernel.run(other, "print(6 * 7)") == "42\n"
            other.close()
        finally:
            await kernel.session.release()
        return answers

    *answers, oversized = asyncio.run(scenario())
    for (subprotocol, frame, why), (code, reason) in zip(MALFORMED_FRAMES, answers, strict=True):
        assert code == 1007, (subprotocol, frame[:100], code, reason)
        assert reason is not None and why in reason, (frame[:100], reason)
    assert oversized in TOO_BIG, oversized


class Command:
    """A command session on the pool, and its output stream."""

    def __init__(self, pool: Pool, workspace: Path, code: str) -> None:
        self.session = RemoteSession(
            settings(pool),
            HardwareRequest(gpus=1),
            "command",
            ["python3", "-u", "-c", code],
            cwd=str(workspace),
        )
        self.ws: WebSocketClientConnection | None = None

    async def start(self) -> WebSocketClientConnection:
        placed = await self.session.acquire(lambda phase, info: None)
        assert placed.placement is not None
        path = f"/hwsched/sessions/{self.session.id}/command"
        self.ws = await open_websocket(placed.placement.agent_url, path, self.session.secret)
        return self.ws

    async def line(self) -> bytes:
        """The command's next line of stdout (it may come in more than one frame)."""
        assert self.ws is not None
        out = b""
        while not out.endswith(b"\n"):
            frame = await asyncio.wait_for(self.ws.read_message(), timeout=60)
            assert isinstance(frame, bytes) and frame[:1] == b"\x01", frame
            out += frame[1:]
        return out

    async def last(self) -> Any:
        """The stream's last frame, once the command has ended; the stream closes."""
        assert self.ws is not None
        frame = await asyncio.wait_for(self.ws.read_message(), timeout=60)
        assert isinstance(frame, str), frame
        await closed(self.ws)
        return json.loads(frame)


WAIT_FOR_SIGNAL = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, lambda *a: (print('interrupted'), sys.exit(3)))\n"
    "print('ready')\n"
    "signal.pause()\n"
)


@pytest.mark.parametrize(
    ("frame", "code", "why"),
    [
        ('{"signal": 1e400}', 1007, 'expected {"signal": N}'),  # once an uncaught error
        ('{"signal": "$(id)"}', 1007, 'expected {"signal": N}'),
        (b"\xff\xfe binary garbage", 1007, 'expected {"signal": N}'),
        ("x" * 100_000, 1009, "message too big"),
    ],
)
def test_malformed_command_frames_close_only_their_stream(
    agent_log_checked: Pool, workspace: Path, frame: str | bytes, code: int, why: str
) -> None:
    """The stream that got the frame closes with a reason (its command is hung up, as when
    its client goes); the other command's client still signals and reads its command."""
    other = Command(agent_log_checked, workspace, WAIT_FOR_SIGNAL)
    victim = Command(agent_log_checked, workspace, WAIT_FOR_SIGNAL)

    async def scenario() -> tuple[int | None, str | None, bytes, Any]:
        try:
            await other.start()
            assert await other.line() == b"ready\n"
            ws = await victim.start()
            assert await victim.line() == b"ready\n"
            with contextlib.suppress(WebSocketClosedError, StreamClosedError):
                await ws.write_message(frame, binary=isinstance(frame, bytes))  # may hang up
            answer = await closed(ws)
            assert other.ws is not None
            await other.ws.write_message(json.dumps({"signal": 2}))
            return (*answer, await other.line(), await other.last())
        finally:
            await victim.session.release()
            await other.session.release()

    close_code, reason, said, last = asyncio.run(scenario())
    if code == 1009:
        assert (close_code, reason) in TOO_BIG, (close_code, reason)
    else:
        assert close_code == code and reason is not None and why in reason, (close_code, reason)
    assert said == b"interrupted\n"
    assert last == {"exit": 3}


# string fields of a session's start


def start_spec(workspace: Path) -> dict[str, Any]:
    """A valid start of a command session; each case below spoils one field."""
    return {
        "share": {
            "host": "127.0.0.1",
            "port": 22,
            "user": "root",
            "private_key": "KEY",
            "host_key": "ssh-ed25519 AAAA",
            "root": "/",
        },
        "user": {"name": "root", "uid": 0, "gid": 0, "home": "/root", "groups": [0]},
        "cwd": str(workspace),
        "env": {"PATH": "/usr/bin:/bin"},
        "kind": "command",
        "argv": ["true"],
    }


def spoiled(spec: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(spec))
    where = out
    *parents, last = field.split(".")
    for name in parents:
        where = where[name]
    where[last] = value
    return out


def start_cases(marker: Path) -> list[tuple[str, Any, str]]:
    """(field, hostile value, what the refusal must say)."""
    proxy = f"-oProxyCommand=touch {marker}"
    return [
        *[("cwd", value, "cwd") for value in HOSTILE],
        ("cwd", "/var/a\x00b", "cwd '/var/a\\x00b' holds a NUL byte"),
        ("cwd", "/tmp/$(id)", "under /tmp"),
        ("cwd", "/" + "a" * (MAX_PATH + 1), f"at most {MAX_PATH}"),
        ("env", {"A=B": "x"}, "not a variable name"),
        ("env", {"": "x"}, "not a variable name"),
        ("env", {"X\x00Y": "1"}, "not a variable name"),
        ("env", {"X": "a\x00b"}, "env: variable X holds a NUL byte"),
        ("env", {"X": "x" * 200_000}, "env: variable X is 200002 bytes long"),
        ("argv", "$(id)", "argv must be a non-empty list"),
        ("argv", ["echo", "a\x00b"], "argv[1] holds a NUL byte"),
        ("argv", ["x" * 200_000], "argv[0] is 200000 bytes long"),
        ("argv", ["x" * 100_000] * 11, "pass large data in a file"),
        ("kind", "command; rm -rf /", "kind must be"),
        ("shown", ["/tmp/../etc"], "is not a path /tmp/NAME"),
        ("preload", ["os; __import__('shutil')"], "not a module name"),
        ("user.home", "/root/../../etc", "user's home"),
        ("user.home", "$(id)", "user's home"),
        ("user.name", "root\n; rm -rf /", "user's name"),
        ("user.uid", -1, "ids from 0"),
        ("user.uid", 2**40, "ids from 0"),
        ("user.groups", ["$(id)"], "user must give"),
        ("share.user", proxy, "share's user"),
        ("share.user", "root; id", "share's user"),
        ("share.host", proxy, "share's host"),
        ("share.host", "$(id)", "share's host"),
        ("share.host", "x" * 100_000, "share's host"),
        ("share.host_key", "ssh-ed25519 AAAA\n@cert-authority * ssh-ed25519 BBBB", "host_key"),
        ("share.root", "/srv\x00", "share's root"),
        ("share.root", "/srv/../../etc", "share's root"),
        ("share.root", "/srv\nProxyCommand=id", "share's root"),
        ("share.port", 0, "share's port"),
        ("share.port", "22; id", "share's port"),
        ("share.private_key", "k\x00", "private_key"),
    ]


def test_hostile_start_fields_are_refused_saying_which(
    agent_log_checked: Pool, workspace: Path
) -> None:
    pool = agent_log_checked
    marker = workspace / "proxy-command-ran"
    placed = pool.api(
        "POST",
        "/api/sessions",
        {"request": {"gpus": 1}, "user": "root", "host": socket.gethostname()},
    )
    path = f"/hwsched/sessions/{placed['id']}"
    refused = []
    try:
        for field, value, says in start_cases(marker):
            pool.api("POST", f"/api/sessions/{placed['id']}/renew")  # short leases here
            body = spoiled(start_spec(workspace), field, value)
            status, answer = call(agent_url(pool), "POST", path, placed["secret"], body)
            refused.append((field, repr(value)[:60], status, answer["message"][:300], says))
        sessions = call(agent_url(pool), "GET", "/hwsched/sessions", pool.token)[1]
    finally:
        pool.api("DELETE", f"/api/sessions/{placed['id']}")
    wrong = [r for r in refused if r[2] != 400 or r[4] not in r[3]]
    assert not wrong, wrong
    assert sessions == []
    assert not marker.exists(), "sshfs ran the ProxyCommand a share's user smuggled in"


def test_metacharacters_reach_the_program_literally(clean_pool: Pool, workspace: Path) -> None:
    """argv, the environment and the working directory are passed as they are, through no
    shell: what the program sees is what the developer wrote."""
    args = ["$(id)", "`id`", "; rm -rf /", "a\nb", "../../etc", "|| true", "'\"\\", "*"]
    env = {"HOSTILE": "$(id) `id`; rm -rf /\nnext line", "ALSO": "../../etc"}
    odd = workspace / "$(id) `id`; x"
    odd.mkdir()
    code = (
        "import os, sys; print(repr(sys.argv[1:])); "
        "print(repr([os.environ['HOSTILE'], os.environ['ALSO']])); print(repr(os.getcwd()))"
    )
    result = clean_pool.hwrun(
        ["-q", "--gpu", "1", "--", "python3", "-c", code, *args], cwd=str(odd), env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        repr(args),
        repr([env["HOSTILE"], env["ALSO"]]),
        repr(str(odd)),
    ]


def test_hostile_gpu_types_and_node_names_are_refused(agent_log_checked: Pool) -> None:
    pool = agent_log_checked
    for field, option in (("gpu_type", "--gpu-type"), ("node", "--node")):
        for value in HOSTILE:
            body = {"request": {"gpus": 1, field: value}, "user": "root", "host": "h"}
            status, answer = call(pool.url, "POST", "/api/sessions", pool.token, body)
            assert status == 400 and option in answer["message"], (value[:60], answer)
            assert len(answer["message"]) < 500, answer["message"][:500]
    # a node name in a path: no route takes it, and the answer is JSON
    for name in ("..%2F..%2Fetc", "%24(id)", "a%3Brm%20-rf%20%2F", "a%00b", "a%0Ab", "x" * 300):
        conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=30)
        try:
            conn.request(
                "PUT", f"/api/nodes/{name}", "{}", {"Authorization": f"token {pool.token}"}
            )
            response = conn.getresponse()
            assert response.status == 404, name
            assert "no such endpoint" in json.loads(response.read())["message"]
        finally:
            conn.close()
    # the hwrun command says so too, before asking for anything
    for option, value in (("--gpu-type", "$(id)"), ("--node", "; rm -rf /")):
        result = pool.hwrun(["--gpu", "1", option, value, "--", "true"])
        assert result.returncode != 0
        assert f"{option} {value!r}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
    assert pool.api("GET", "/api/sessions") == []


# the developer's Jupyter server


@pytest.fixture
def jp_server_config(pool: Pool) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_hwsched": True}},
        "HwschedServerApp": {"scheduler_url": pool.url, "scheduler_token": pool.token},
    }


async def test_hostile_notebook_paths_are_refused_or_kept_literal(
    jp_fetch: Any, clean_pool: Pool
) -> None:
    async def post_run(body: Any) -> tuple[int, str]:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("hwsched", "api", "runs", method="POST", body=json.dumps(body))
        assert info.value.response is not None
        return info.value.code, json.loads(info.value.response.body)["message"]

    for path, says in [
        ("../../etc/passwd", "'..'"),
        ("work/../../../etc/x.ipynb", "'..'"),
        ("x\x00.ipynb", "NUL"),
        ("a" * (MAX_PATH + 1), f"at most {MAX_PATH}"),
        ("///", "must be the notebook's path"),
        (["$(id)"], "must be the notebook's path"),
    ]:
        code, message = await post_run({"path": path, "gpus": 1})
        assert code == 400 and says in message, (path, message)
    for option, value in (("gpu_type", "$(id)"), ("gpus", "1; rm -rf /"), ("gpu_mem", "`id`")):
        code, message = await post_run({"path": "a.ipynb", option: value})
        assert code == 400 and value in message, message
    kernels = json.loads((await jp_fetch("api", "kernels")).body)
    assert kernels == []
    # a notebook path is a label at the scheduler: kept as written, shown as no notebook of
    # this server's (it lies outside its root)
    hostile = "../../etc/passwd\x00;$(id)\n`id`"
    held = clean_pool.api(
        "POST",
        "/api/sessions",
        {"request": {"gpus": 1}, "user": caller_identity().name, "host": "h", "notebook": hostile},
    )
    try:
        mine = json.loads((await jp_fetch("hwsched", "api", "sessions")).body)
        [shown] = [s for s in mine if s["id"] == held["id"]]
        assert shown["notebook"] == hostile and shown["notebook_path"] == ""
    finally:
        clean_pool.api("DELETE", f"/api/sessions/{held['id']}")
    too_long = {"request": {"gpus": 1}, "user": "root", "host": "h", "notebook": "n" * 5000}
    status, answer = call(clean_pool.url, "POST", "/api/sessions", clean_pool.token, too_long)
    assert status == 400 and "notebook" in answer["message"]


# kernelspec options


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--name", "../../../etc/evil"], "--name '../../../etc/evil' is not a kernelspec name"),
        (["--name", "x; rm -rf /"], "--name 'x; rm -rf /' is not a kernelspec name"),
        (["--name", "$(id)"], "is not a kernelspec name"),
        (["--gpu-type", "`id`"], "--gpu-type '`id`' is not a GPU model name"),
        (["--gpu-mem", "$(id)"], "--gpu-mem '$(id)' is not a memory size"),
        (["--node", "a\nb"], "--node 'a\\nb' is not a node name"),
        (["--python", "/bin/sh -c id"], "--python /bin/sh -c id cannot run"),
        (["--python", "../../bin/python3"], "give the interpreter's absolute path"),
    ],
)
def test_hostile_kernelspec_options_are_refused(
    tmp_path: Path, options: list[str], says: str
) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [*HWSCHED, "kernelspec", "install", "--user", *options],
        env={**os.environ, "JUPYTER_DATA_DIR": str(data), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not list(tmp_path.rglob("kernel.json"))
    assert not (tmp_path.parent / "etc").exists()

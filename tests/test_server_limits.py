"""Server limits against real processes: oversized bodies, slow headers, connection floods and
a user's full queue each get their own answer, and nothing else is disturbed.

The services run as in production (``python -m jupyter_hwsched.cli.hwsched ...``) with small
limits; the misbehaving clients are raw sockets, so that the test controls exactly what is
sent and when. Socket timeouts only guard against a hang: no assertion depends on speed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Service, free_port, wait_for

from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import TooManyRequestsError
from jupyter_hwsched.protocol.records import SessionSubmission
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.protocol.version import PROTOCOL_VERSION

HWSCHED = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched"]
BODY_LIMIT = 4096
HEADER_TIMEOUT = 2.0
QUEUE_CAP = 2
GUARD = 30.0  # seconds a socket read may block before the test gives up (a hang, not a bound)


class Scheduler:
    def __init__(self, work: Path, *args: str) -> None:
        self.token = secrets.token_hex(8)
        self.port = free_port()
        self.log = work / "scheduler.log"
        self.service = Service(
            "scheduler",
            [
                *HWSCHED,
                "scheduler",
                f"--port={self.port}",
                f"--db={work / 's.sqlite'}",
                "--lease=100000",
                "--node-timeout=100000",
                *args,
            ],
            {"HWSCHED_TOKEN": self.token, "PATH": "/usr/bin:/bin"},
            self.log,
        )
        self.service.wait_line("HWSCHED_SCHEDULER_READY")
        self.url = f"http://127.0.0.1:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> tuple[int, Any]:
        """One request with the pool token, on ``conn`` (kept open) or a connection of its own."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=GUARD)
        try:
            data = json.dumps(body) if body is not None else None
            conn.request(method, path, data, {"Authorization": f"token {self.token}"})
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            if own:
                conn.close()

    def stop(self) -> None:
        self.service.stop()
        log = self.log.read_text()
        assert "Traceback" not in log and "Uncaught exception" not in log, log[-3000:]


def register_node(scheduler: Scheduler, name: str, gpus: int) -> None:
    listed = [{"index": i, "model": "A100-80GB", "memory": 80 * 1024**3} for i in range(gpus)]
    node = {"url": "http://127.0.0.1:1", "gpus": listed, "protocol": PROTOCOL_VERSION}
    status, _ = scheduler.call("PUT", f"/api/nodes/{name}", node)
    assert status == 200


@pytest.fixture(scope="module")
def sched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    """A scheduler with small limits and a node with one GPU (no agent behind it)."""
    scheduler = Scheduler(
        tmp_path_factory.mktemp("limits"),
        f"--SchedulerApp.max_body_bytes={BODY_LIMIT}",
        f"--SchedulerApp.header_timeout={HEADER_TIMEOUT}",
        f"--Scheduler.max_queued_per_user={QUEUE_CAP}",
    )
    try:
        register_node(scheduler, "node-a", 1)
        yield scheduler
    finally:
        scheduler.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, http.client.HTTPMessage, dict[str, Any]]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = json.loads(response.read())
    return response.status, response.headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server ends the connection (reads until it does, or the guard expires)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def session_count(scheduler: Scheduler) -> int:
    status, sessions = scheduler.call("GET", "/api/sessions?all=1")
    assert status == 200
    return len(sessions)


def undisturbed(scheduler: Scheduler) -> None:
    """The scheduler still answers an ordinary request on a new connection."""
    status, pool = scheduler.call("GET", "/api/pool")
    assert status == 200 and [n["name"] for n in pool["nodes"]] == ["node-a"]


# bodies


def test_an_oversized_body_is_refused_from_its_headers_before_it_is_read(
    sched: Scheduler,
) -> None:
    before = session_count(sched)
    with connect(sched.port) as sock:
        # declares 10 GB and sends 4 bytes of it: only an answer decided from the headers
        # can come back, since the rest of the body never will; no credential either, so
        # the size is checked before anything the handler would do
        sock.sendall(
            b"POST /api/sessions HTTP/1.1\r\nHost: scheduler\r\n"
            b'Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{"re'
        )
        status, headers, body = read_answer(sock)
        assert status == 413
        assert headers["Content-Type"] == "application/json"
        assert headers["Connection"] == "close"
        assert body["message"] == (
            "the request body (10000000000 bytes) is over this server's limit of 4 KiB: send "
            "less; an operator can raise SchedulerApp.max_body_bytes"
        )
        assert closed_by_server(sock)
    assert session_count(sched) == before
    undisturbed(sched)


def test_a_body_within_the_limit_reaches_the_handler(sched: Scheduler) -> None:
    # padded to exactly the limit: the handler reads it and answers about its content
    submission = {"request": {"gpus": 1}, "user": "", "host": "h"}
    text = json.dumps(submission)
    text = text[:-1] + " " * (BODY_LIMIT - len(text)) + "}"
    assert len(text) == BODY_LIMIT
    conn = http.client.HTTPConnection("127.0.0.1", sched.port, timeout=GUARD)
    conn.request("POST", "/api/sessions", text, {"Authorization": f"token {sched.token}"})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 400
    assert "user" in body["message"]


def test_a_chunked_body_is_counted_as_it_arrives(sched: Scheduler) -> None:
    before = session_count(sched)
    with connect(sched.port) as sock:
        sock.sendall(
            b"POST /api/sessions HTTP/1.1\r\nHost: scheduler\r\n"
            + f"Authorization: token {sched.token}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b" " * 1000
        for _ in range(5):  # 5000 bytes: over the limit with the fifth piece
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, headers, body = read_answer(sock)
        assert status == 413
        assert headers["Connection"] == "close"
        assert "over this server's limit of 4 KiB" in body["message"]
        assert closed_by_server(sock)
    assert session_count(sched) == before
    undisturbed(sched)


# headers


def test_slow_headers_get_408_and_the_connection_is_closed(sched: Scheduler) -> None:
    with connect(sched.port) as slow:
        slow.sendall(b"GET /api/pool HTTP/1.1\r\n")
        slow.sendall(f"Authorization: token {sched.token}\r\n".encode())
        # the headers never end; meanwhile other clients are served
        undisturbed(sched)
        status, headers, body = read_answer(slow)
        assert status == 408
        assert headers["Connection"] == "close"
        assert body["message"] == (
            f"the request's headers did not arrive within {HEADER_TIMEOUT:g} s; an operator "
            "can raise SchedulerApp.header_timeout"
        )
        assert closed_by_server(slow)
    undisturbed(sched)


def test_a_kept_alive_connection_is_not_held_to_the_first_request_timeout(
    sched: Scheduler,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sched.port, timeout=GUARD)
    try:
        assert sched.call("GET", "/api/pool", conn=conn)[0] == 200
        # a slow header after the first request would be closed by now if the header timer
        # still ran: wait until a fresh slow connection has been closed
        with connect(sched.port) as slow:
            slow.sendall(b"GET /api/pool HTTP/1.1\r\n")
            assert read_answer(slow)[0] == 408
        assert sched.call("GET", "/api/pool", conn=conn)[0] == 200
    finally:
        conn.close()


def test_oversized_headers_get_431(sched: Scheduler) -> None:
    with connect(sched.port) as sock:
        big = b"X-Big: " + b"a" * (70 * 1024) + b"\r\n"
        sock.sendall(b"GET /api/pool HTTP/1.1\r\nHost: scheduler\r\n" + big + b"\r\n")
        status, _, body = read_answer(sock)
        assert status == 431
        assert "over the limit of 64 KiB" in body["message"]
    undisturbed(sched)


# connections


def test_a_connection_flood_gets_503_and_open_connections_keep_working(tmp_path: Path) -> None:
    cap = 6
    scheduler = Scheduler(tmp_path, f"--SchedulerApp.max_connections={cap}")
    opened: list[http.client.HTTPConnection] = []
    try:
        register_node(scheduler, "node-a", 1)
        for _ in range(cap):  # exactly the cap, each kept alive after one request
            conn = http.client.HTTPConnection("127.0.0.1", scheduler.port, timeout=GUARD)
            assert scheduler.call("GET", "/api/pool", conn=conn)[0] == 200
            opened.append(conn)
        for _ in range(5):
            status, body = scheduler.call("GET", "/api/pool")
            assert status == 503
            assert body["message"] == (
                f"the server is at its limit of {cap} open connections: try again shortly; "
                "an operator can raise SchedulerApp.max_connections"
            )
        for conn in opened:  # the connections it had are served as before
            assert scheduler.call("GET", "/api/pool", conn=conn)[0] == 200
        opened.pop().close()

        def served() -> bool:
            return scheduler.call("GET", "/api/pool")[0] == 200

        wait_for(served, what="a connection after one closed")
        for conn in opened:
            assert scheduler.call("GET", "/api/pool", conn=conn)[0] == 200
    finally:
        for conn in opened:
            conn.close()
        scheduler.stop()


# the queue


def submit(scheduler: Scheduler, user: str) -> tuple[int, Any]:
    return scheduler.call(
        "POST", "/api/sessions", {"request": {"gpus": 1}, "user": user, "host": "h"}
    )


def test_a_users_queue_cap_gives_429_and_others_still_submit(sched: Scheduler) -> None:
    mine = []
    for _ in range(1 + QUEUE_CAP):  # the first one takes the GPU; the others wait
        status, session = submit(sched, "ann")
        assert status == 201
        mine.append(session["id"])
    states = [sched.call("GET", f"/api/sessions/{sid}")[1]["state"] for sid in mine]
    assert states == ["placed", "queued", "queued"]

    status, body = submit(sched, "ann")
    assert status == 429
    assert body["message"] == (
        f"ann already has {QUEUE_CAP} sessions waiting in the queue, the most one user may "
        "have: end some (hwsched status lists them) or wait until they start"
    )
    # the package's client reads it as its own error
    client = SchedulerClient(sched.url, sched.token)
    request = SessionSubmission(HardwareRequest(gpus=1), user="ann", host="h")
    with pytest.raises(TooManyRequestsError, match="ann already has 2 sessions waiting"):
        asyncio.run(client.submit(request))
    client.close()

    # another user is not held to ann's queue, and ann's sessions are as they were
    status, theirs = submit(sched, "bob")
    assert status == 201 and theirs["state"] == "queued"
    live = {s["id"]: s["state"] for s in sched.call("GET", "/api/sessions")[1]}
    assert [live[sid] for sid in mine] == ["placed", "queued", "queued"]

    # once one of ann's waiting sessions ends, she may queue one more
    assert sched.call("DELETE", f"/api/sessions/{mine[2]}")[0] == 200
    status, again = submit(sched, "ann")
    assert status == 201
    for sid in [*mine, theirs["id"], again["id"]]:
        assert sched.call("DELETE", f"/api/sessions/{sid}")[0] == 200


# the node agent


def test_the_node_agent_refuses_an_oversized_body(tmp_path: Path) -> None:
    scheduler = Scheduler(tmp_path)
    port = free_port()
    agent = Service(
        "agent",
        [
            *HWSCHED,
            "agent",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--node-name=limits-node",
            f"--scheduler-url={scheduler.url}",
            "--simulate-gpus=1xA100-80GB",
            f"--state-dir={tmp_path / 'agent'}",
            "--AgentApp.runner_class=jupyter_hwsched.agent.host_runner.HostRunner",
            "--HostRunner.single_user=True",
            "--AgentApp.sign_with_certificate=False",
            "--AgentApp.allow_root=True",
            f"--ServerApp.root_dir={tmp_path}",
            "--AgentApp.max_body_bytes=8192",
        ],
        {"HWSCHED_TOKEN": scheduler.token, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        tmp_path / "agent.log",
    )
    try:
        agent.wait_line("HWSCHED_AGENT_READY")
        with connect(port) as sock:
            sock.sendall(
                b"POST /hwsched/sessions HTTP/1.1\r\nHost: agent\r\n"
                b"Content-Length: 600000000\r\n\r\n{"
            )
            status, _, body = read_answer(sock)
        assert status == 413
        assert body["message"] == (
            "the request body (600000000 bytes) is over this server's limit of 8 KiB: send "
            "less; an operator can raise AgentApp.max_body_bytes"
        )
        # jupyter_server's own API on the same server answers as before
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD)
        conn.request("GET", "/api/status", headers={"Authorization": f"token {scheduler.token}"})
        response = conn.getresponse()
        assert response.status == 200 and "connections" in json.loads(response.read())
        conn.close()
    finally:
        agent.stop()
        scheduler.stop()
        assert "Traceback" not in (tmp_path / "agent.log").read_text()

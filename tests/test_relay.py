"""The delay relay of the benchmarks (benchmarks/relay.py): intact, ordered, and delayed.

Only lower bounds on time are asserted: a loaded machine may make the relay slower, never
faster than its delay.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from relay import DelayProxy, proxy_command  # noqa: E402

SIZE = 50 * 1024 * 1024
DELAY_MS = 20.0


class Server:
    """A TCP server on loopback: echoes every connection, or (``sink``) reads it all and
    answers with the SHA-256 of what it read and how much."""

    def __init__(self, sink: bool = False) -> None:
        self.sink = sink
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        digest = hashlib.sha256()
        total = 0
        with conn:
            while data := conn.recv(1 << 16):
                if self.sink:
                    digest.update(data)
                    total += len(data)
                else:
                    conn.sendall(data)
            if self.sink:
                conn.sendall(f"{digest.hexdigest()} {total}\n".encode())

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture
def sink() -> Iterator[Server]:
    server = Server(sink=True)
    yield server
    server.close()


def payload(size: int) -> bytes:
    """Bytes whose order matters: a counter, so a swapped or lost block changes the digest."""
    block = os.urandom(1 << 16)
    return b"".join(i.to_bytes(8, "big") + block[8:] for i in range(size >> 16))


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def round_trip(sock: socket.socket, message: bytes = b"ping") -> float:
    start = time.perf_counter()
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        got += sock.recv(1024)
    elapsed = time.perf_counter() - start
    assert got == message
    return elapsed


def test_listener_carries_a_large_transfer_intact_and_in_order(sink: Server) -> None:
    data = payload(SIZE)
    with (
        DelayProxy(("127.0.0.1", sink.port), DELAY_MS / 1000) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as sock,
    ):
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock).decode()
    assert answer == f"{hashlib.sha256(data).hexdigest()} {SIZE}\n"


def test_listener_echo_both_ways_intact(echo: Server) -> None:
    """Both directions at once, the data coming back while more is still going out."""
    data = payload(8 * 1024 * 1024)
    with (
        DelayProxy(("127.0.0.1", echo.port), DELAY_MS / 1000) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as sock,
    ):
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(read_all(sock)))
        reader.start()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reader.join(timeout=120)
    assert received and hashlib.sha256(received[0]).digest() == hashlib.sha256(data).digest()


def test_listener_delays_each_direction(echo: Server) -> None:
    with (
        DelayProxy(("127.0.0.1", echo.port), DELAY_MS / 1000) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as sock,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = [round_trip(sock) for _ in range(5)]
    assert min(times) >= 2 * DELAY_MS / 1000


def test_a_delay_line_is_not_a_serializer(echo: Server) -> None:
    """Segments sent close together arrive close together: each waits its delay, not the
    delay of all those before it."""
    count = 20
    with (
        DelayProxy(("127.0.0.1", echo.port), DELAY_MS / 1000) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as sock,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        for i in range(count):
            sock.sendall(bytes([i]))
            time.sleep(0.001)
        got = b""
        while len(got) < count:
            got += sock.recv(1024)
        elapsed = time.perf_counter() - start
    assert got == bytes(range(count))
    # a serializer would need count * 2 * delay (0.8 s); a delay line about 2 * delay + 20 ms
    assert elapsed >= 2 * DELAY_MS / 1000
    assert elapsed < count * 2 * DELAY_MS / 1000 / 2, elapsed


def stdio_relay(port: int, delay_ms: float) -> subprocess.Popen[bytes]:
    """The relay as ssh runs a ProxyCommand: a shell command line with %h and %p filled in."""
    command = proxy_command(delay_ms).replace("%h", "127.0.0.1").replace("%p", str(port))
    return subprocess.Popen(
        ["/bin/sh", "-c", f"exec {command}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def stop(relay: subprocess.Popen[bytes]) -> None:
    if relay.poll() is None:
        relay.kill()
        relay.wait()
    for pipe in (relay.stdin, relay.stdout):
        if pipe is not None:
            pipe.close()


def test_proxy_command_carries_a_large_transfer_intact_and_in_order(sink: Server) -> None:
    data = payload(SIZE)
    relay = stdio_relay(sink.port, DELAY_MS)
    out, _ = relay.communicate(data, timeout=120)
    assert out.decode() == f"{hashlib.sha256(data).hexdigest()} {SIZE}\n"
    assert relay.returncode == 0


def test_proxy_command_delays_each_direction(echo: Server) -> None:
    relay = stdio_relay(echo.port, DELAY_MS)
    assert relay.stdin is not None and relay.stdout is not None
    try:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            relay.stdin.write(b"ping")
            relay.stdin.flush()
            assert relay.stdout.read(4) == b"ping"
            times.append(time.perf_counter() - start)
        relay.stdin.close()
        assert relay.stdout.read() == b""  # the server's end reaches us: we exit
        assert relay.wait(timeout=30) == 0
    finally:
        stop(relay)
    assert min(times) >= 2 * DELAY_MS / 1000


def test_proxy_command_ends_when_the_server_closes() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    relay = stdio_relay(int(listener.getsockname()[1]), 1)
    try:
        conn, _ = listener.accept()
        conn.sendall(b"bye")
        conn.close()
        assert relay.stdout is not None
        assert relay.stdout.read() == b"bye"
        assert relay.stdin is not None
        relay.stdin.close()
        assert relay.wait(timeout=30) == 0
    finally:
        listener.close()
        stop(relay)


def test_a_share_behind_the_relay_serves_a_run(tmp_path: Path) -> None:
    """The agent's sshfs reaches the share through the relay (sshfs_extra_options, after the
    default options; a comma in the command survives sshfs's option list)."""
    from harness import Pool

    stats = Path("/var/lib/hwsched-test") / f"relay,stats-{os.getpid()}.jsonl"
    command = f"ProxyCommand={proxy_command(2.0, stats=str(stats))}"
    pool = Pool(tmp_path, agent_args=(f"--AgentApp.sshfs_extra_options={command}",))
    try:
        done = pool.hwrun(["--", sys.executable, "-c", "print('over the relay')"], cwd="/")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "over the relay\n"
        pool.assert_clean()
        lines = stats.read_text().splitlines()
        assert lines and json.loads(lines[-1]), lines  # the share's link went through it
    finally:
        pool.stop()
        stats.unlink(missing_ok=True)


def test_proxy_command_counts_and_ends_on_sigterm(echo: Server, tmp_path: Path) -> None:
    """ssh ends its ProxyCommand with a signal; the relay still writes its counts."""
    stats = tmp_path / "stats.jsonl"
    command = (
        proxy_command(1, stats=str(stats)).replace("%h", "127.0.0.1").replace("%p", str(echo.port))
    )
    relay = subprocess.Popen(
        ["/bin/sh", "-c", f"exec {command}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert relay.stdin is not None and relay.stdout is not None
    try:
        for _ in range(3):
            relay.stdin.write(b"ping")
            relay.stdin.flush()
            assert relay.stdout.read(4) == b"ping"
        relay.terminate()
        assert relay.wait(timeout=30) == 0
    finally:
        stop(relay)
    record = json.loads(stats.read_text())
    assert record["up_segments"] == record["down_segments"] == 3
    assert record["up_bytes"] == record["down_bytes"] == 12

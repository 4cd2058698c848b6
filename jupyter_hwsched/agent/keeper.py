"""A command's keeper: the process that holds a command's output streams, apart from the
agent, and writes them to the command's spool (``agent/spool.py``). Two ways:

``python -m jupyter_hwsched.agent.keeper docker SOCKET EXEC_ID SPOOL LIMIT PROGRAM``
    starts the exec ``EXEC_ID`` (created by the agent) on the Docker Engine at the unix
    socket ``SOCKET`` and spools its output (the Docker runner).

``python -m jupyter_hwsched.agent.keeper process SPOOL LIMIT FD -- ARGV...``
    runs ``ARGV`` as its own child, with the descriptor ``FD`` passed on (-1: none), and
    spools its stdout and stderr (the bubblewrap runner: the sandbox is then the keeper's
    child, and ``--die-with-parent`` ties it to the keeper, not to the agent). The child's
    pid is written to ``SPOOL/pid`` at once.

Either way it holds at most ``LIMIT`` bytes in the spool, then writes how the command ended
and exits. The agent starts one per command, in a session of its own: an agent that stops
leaves it running, and the command's output is kept for the agent that starts next.

It speaks the Engine's HTTP API itself, over the socket, and imports nothing but the standard
library and the spool: it starts at every command's start.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from jupyter_hwsched.agent.spool import SpoolWriter

_FRAME = struct.Struct(">BxxxI")  # the Engine's multiplexed stream: stream, size
_STREAMS = {1: "stdout", 2: "stderr"}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("docker", timeout=60)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.socket_path)


def start_keeper(
    args: list[str], pass_fds: tuple[int, ...] = (), env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a keeper (in the agent): in a session of its own, so that it and the command's
    streams outlive the agent; what it says of itself goes to ``keeper.log`` beside the
    spool (``args``: as for ``main``; the spool is made here)."""
    spool = Path(args[3] if args[0] == "docker" else args[1])
    spool.mkdir(mode=0o700, exist_ok=True)
    with open(spool.parent / f"keeper-{spool.name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "jupyter_hwsched.agent.keeper", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=pass_fds,
            env=env,
            cwd="/",
            start_new_session=True,
        )


def exec_failure(message: bytes, program: str) -> bytes:
    """The engine's "OCI runtime exec failed: ... exec: "X": REASON: unknown", as one line."""
    text = message.decode(errors="replace").strip()
    found = re.search(r'exec: "[^"]*": (.*?)(?:: unknown)?$', text)
    reason = found.group(1) if found else text
    return f"{program}: cannot start on the node: {reason}\n".encode()


def _read_exactly(sock: socket.socket, size: int, buffered: bytearray) -> bytes | None:
    while len(buffered) < size:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffered += chunk
    data = bytes(buffered[:size])
    del buffered[:size]
    return data


def pump(socket_path: str, exec_id: str, spool: SpoolWriter, program: str) -> str:
    """Start the exec and spool its output until it ends; what broke, if its stream did."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    body = b'{"Detach": false, "Tty": false}'
    sock.sendall(
        f"POST /exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
        "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    buffered = bytearray()
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            return "the node's container engine closed the run's output stream at its start"
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] not in (b"101", b"200"):
        return f"the node's container engine refused the run: {rest.decode(errors='replace')}"
    buffered = bytearray(rest)
    first = True
    try:
        while (header := _read_exactly(sock, _FRAME.size, buffered)) is not None:
            code, size = _FRAME.unpack(header)
            data = _read_exactly(sock, size, buffered)
            if data is None:
                break
            if first and code == 1 and data.startswith(b"OCI runtime exec failed"):
                code, data = 2, exec_failure(data, program)
            first = False
            spool.write(_STREAMS.get(code, "stderr"), data, lambda: not spool.directory.exists())
    except OSError as exc:
        return f"the node's container engine broke the run's output stream ({exc})"
    finally:
        sock.close()
    return ""


def exit_code(socket_path: str, exec_id: str) -> tuple[int | None, str]:
    """The exec's exit status once the engine has marked it ended."""
    for _ in range(200):  # the engine may mark the exec ended a while after its stream
        try:
            connection = _UnixConnection(socket_path)
            connection.request("GET", f"/exec/{exec_id}/json")
            info = json.loads(connection.getresponse().read())
            connection.close()
        except (OSError, ValueError) as exc:
            return None, (
                "the node's container engine stopped while the run ran, and its container "
                f"with it ({exc.__class__.__name__}: {exc})"
            )
        if not info.get("Running"):
            return info.get("ExitCode"), ""
        time.sleep(0.05)
    return None, "the node's container engine ended the run's output stream early"


def keep_process(spool: SpoolWriter, argv: list[str], fd: int) -> int:
    """Run ``argv`` and spool its two streams as they come; its exit status (128+N if a
    signal N ended it)."""
    child = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(fd,) if fd >= 0 else (),
    )
    if fd >= 0:
        os.close(fd)
    part = spool.directory / "pid.part"
    part.write_text(str(child.pid))
    os.replace(part, spool.directory / "pid")
    assert child.stdout is not None and child.stderr is not None
    streams = selectors.DefaultSelector()
    streams.register(child.stdout, selectors.EVENT_READ, "stdout")
    streams.register(child.stderr, selectors.EVENT_READ, "stderr")
    while streams.get_map():
        for key, _ in streams.select():
            data = os.read(key.fd, 65536)
            if not data:
                streams.unregister(key.fileobj)
                continue
            spool.write(key.data, data, lambda: not spool.directory.exists())
    code = child.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if argv[0] == "process":
        directory, limit, fd = argv[1:4]
        spool = SpoolWriter(Path(directory), int(limit))
        code = keep_process(spool, argv[argv.index("--") + 1 :], int(fd))
        if spool.directory.exists():
            spool.finish(code, "")
        return 0
    socket_path, exec_id, directory, limit, program = argv[1:]
    spool = SpoolWriter(Path(directory), int(limit))
    broken = pump(socket_path, exec_id, spool, program)
    got, lost = exit_code(socket_path, exec_id)
    if spool.directory.exists():
        spool.finish(got, broken or lost)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

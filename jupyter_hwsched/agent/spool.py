"""A command's output, spooled on the node's disk so that it outlives the agent.

A command's output reaches its client through the agent; an agent that stops (a crash, an
upgrade) would take the output stream with it. So a command whose process outlives the agent
(the Docker runner's) does not write to the agent at all: its output goes to a *keeper*
(``agent/keeper.py``), a small process of its own that writes it here, and the agent reads it
from here and relays it. A restarted agent reads on from where its client says it got to.
A bubblewrap kernel's stdout and stderr take the same way (its sandbox is its keeper's child,
so that it outlives the agent); the agent is their only reader, and drops what it has read.

The spool is a directory of *segments*, each named by the offset (in bytes of output, both
streams counted) of its first byte. A segment holds frames, each one byte of stream (1
stdout, 2 stderr), four of length (big-endian) and the bytes; a frame never spans segments.
The keeper writes them in order and starts a new segment past ``SEGMENT_BYTES``; once the
command has ended and every frame is written, ``exit.json`` says how it ended.

Bounded: the client acknowledges what it got, and segments wholly before that are removed
(``Spool.trim``). While the segments still there hold more than the keeper's bound, the
keeper stops reading the command's output, and the command blocks on its next write, as it
does for a client that does not read. This module uses only the standard library: the keeper
starts it at every command's start.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: a segment this long is closed, and the next frame starts another
SEGMENT_BYTES = 1024 * 1024
#: consecutive frames of one stream are handed on as one piece of at most this many bytes:
#: a command that writes a line at a time makes a frame a line, and the relay's cost is per
#: piece (a websocket message, a wake-up of its client)
MERGED = 64 * 1024
HEADER = struct.Struct(">BI")
EXIT = "exit.json"
STREAMS = {1: "stdout", 2: "stderr"}
CODES = {name: code for code, name in STREAMS.items()}


def segment_name(offset: int) -> str:
    return f"{offset:016d}"


def segments(directory: Path) -> list[int]:
    """The offsets of the segments there, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


class SpoolWriter:
    """The keeper's side: frames appended in order, held to ``limit`` bytes on disk."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.offset = 0  # bytes of output written
        self.held: dict[int, int] = {}  # segment -> its size, of those still there
        self._fd: int | None = None
        self._start = 0
        directory.mkdir(mode=0o700, exist_ok=True)

    def write(self, stream: str, data: bytes, gone: Callable[[], bool] = lambda: False) -> None:
        """Append ``data``; first wait while the spool is over its bound (``gone()``: give
        up the wait, the session is over)."""
        while sum(self.held.values()) >= self.limit and not gone():
            time.sleep(0.05)
            there = set(segments(self.directory))
            self.held = {s: n for s, n in self.held.items() if s in there}
            if not self.directory.exists():
                return
        if self._fd is None or self.held.get(self._start, 0) >= SEGMENT_BYTES:
            self._open(self.offset)
        assert self._fd is not None
        frame = HEADER.pack(CODES[stream], len(data)) + data
        view = memoryview(frame)
        while view:
            view = view[os.write(self._fd, view) :]
        self.held[self._start] = self.held.get(self._start, 0) + len(frame)
        self.offset += len(data)

    def _open(self, start: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.directory / segment_name(start)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        self._start = start

    def finish(self, code: int | None, broken: str) -> None:
        """Every frame is written: say how the command ended (replaced whole)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        part = self.directory / (EXIT + ".part")
        part.write_text(json.dumps({"code": code, "broken": broken}))
        os.replace(part, self.directory / EXIT)


def ended(directory: Path) -> dict[str, Any] | None:
    """How the command ended, once its keeper has written all of its output."""
    try:
        return dict(json.loads((directory / EXIT).read_text()))
    except (OSError, ValueError):
        return None


def trim(directory: Path, received: int) -> None:
    """Remove the segments wholly before ``received`` (the client has them)."""
    found = segments(directory)
    for start, following in itertools.pairwise(found):
        if following <= received:
            (directory / segment_name(start)).unlink(missing_ok=True)


class SpoolReader:
    """The agent's side: the output from ``offset`` on, in order, as the keeper writes it."""

    #: seconds between looks at a spool that has nothing new
    POLL = 0.01

    def __init__(self, directory: Path, offset: int) -> None:
        self.directory = directory
        self.offset = offset  # bytes of output handed on
        found = segments(directory)
        starts = [s for s in found if s <= offset]
        if (found and not starts) or (not found and offset > 0):
            raise ValueError(f"output before byte {offset} is no longer spooled")
        self._start = starts[-1] if starts else 0
        self._position = 0  # in the current segment's file
        self._at = self._start  # output offset at _position

    def frames(self, stopped: Callable[[], bool]) -> Any:
        """Yield ``(stream, data)`` as they come; return how the command ended (``ended``'s
        dict), or ``None`` once ``stopped()`` says to stop."""
        while not stopped():
            got = self._read()
            if got:
                yield from got
                continue
            later = [s for s in segments(self.directory) if s > self._start]
            if later:
                got = self._read()  # what was written before the next segment began
                if got:
                    yield from got
                    continue
                self._start, self._position, self._at = later[0], 0, later[0]
                continue
            how = ended(self.directory)
            if how is None and not self.directory.exists():
                return {"code": None, "broken": ""}  # the session is over, its files gone
            if how is not None:
                got = self._read()
                if got:
                    yield from got
                    continue
                return how
            time.sleep(self.POLL)
        return None

    def _read(self) -> list[tuple[str, bytes]]:
        """Whole frames past the current position of the current segment, those of one stream
        in a row joined into pieces of up to ``MERGED`` bytes."""
        try:
            with open(self.directory / segment_name(self._start), "rb") as segment:
                segment.seek(self._position)
                data = segment.read(4 * SEGMENT_BYTES)
        except FileNotFoundError:
            return []
        out: list[tuple[str, list[bytes]]] = []  # pieces: a stream and its parts, in order
        last = 0  # bytes in the last piece
        at = 0
        while len(data) - at >= HEADER.size:
            code, size = HEADER.unpack_from(data, at)
            if len(data) - at - HEADER.size < size:
                break  # the keeper is still writing it
            payload = data[at + HEADER.size : at + HEADER.size + size]
            at += HEADER.size + size
            skip = max(0, self.offset - self._at)
            self._at += size
            if skip < size:
                stream, piece = STREAMS.get(code, "stderr"), payload[skip:]
                if out and out[-1][0] == stream and last + len(piece) <= MERGED:
                    out[-1][1].append(piece)
                    last += len(piece)
                else:
                    out.append((stream, [piece]))
                    last = len(piece)
                self.offset += size - skip
        self._position += at
        return [(stream, b"".join(parts)) for stream, parts in out]

"""A command's output spool (agent/spool.py): what the keeper writes, the agent reads, in
order, from any byte on; bounded by what the client has acknowledged."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from jupyter_hwsched.agent import spool
from jupyter_hwsched.agent.keeper import start_keeper
from jupyter_hwsched.agent.spool import SpoolReader, SpoolWriter


def read_all(directory: Path, offset: int = 0) -> tuple[list[tuple[str, bytes]], dict | None]:
    frames = SpoolReader(directory, offset).frames(lambda: False)
    got = []
    while True:
        try:
            got.append(next(frames))
        except StopIteration as stop:
            return got, stop.value


def joined(frames: list[tuple[str, bytes]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for stream, data in frames:
        out[stream] += data
    return out


def write_lines(writer: SpoolWriter, n: int) -> bytes:
    everything = b""
    for i in range(n):
        stream = "stderr" if i % 7 == 0 else "stdout"
        data = f"{i}\n".encode() * 50
        writer.write(stream, data)
        everything += data
    return everything


def test_output_comes_back_in_order_across_segments_with_its_end(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "out", limit=1 << 30)
    everything = write_lines(writer, 5000)
    writer.finish(3, "")
    assert len(spool.segments(tmp_path / "out")) > 1  # it rolled over
    frames, how = read_all(tmp_path / "out")
    assert b"".join(d for _, d in frames) == everything
    assert joined(frames)["stderr"] == b"".join(f"{i}\n".encode() * 50 for i in range(0, 5000, 7))
    assert how == {"code": 3, "broken": ""}


def test_a_line_at_a_time_is_handed_on_in_few_pieces_of_one_stream_each(tmp_path: Path) -> None:
    """A command that writes a line at a time makes a frame a line; the reader joins those of
    one stream in a row (the relay's cost is per piece), never across streams, and never
    past ``MERGED`` bytes."""
    writer = SpoolWriter(tmp_path / "out", limit=1 << 30)
    lines = [f"{i}\n".encode() for i in range(20_000)]
    for line in lines:
        writer.write("stdout", line)
    writer.write("stderr", b"oops\n")
    writer.write("stdout", b"after\n")
    writer.finish(0, "")
    frames, how = read_all(tmp_path / "out")
    assert b"".join(d for s, d in frames if s == "stdout") == b"".join(lines) + b"after\n"
    assert [d for s, d in frames if s == "stderr"] == [b"oops\n"]
    assert all(len(d) <= spool.MERGED for _, d in frames)
    # 20,000 lines (about 110 KB) in a few pieces, not one a line
    assert len(frames) < 10, [len(d) for _, d in frames]
    assert frames[-2:] == [("stderr", b"oops\n"), ("stdout", b"after\n")]
    assert how == {"code": 0, "broken": ""}


@pytest.mark.parametrize("offset", [0, 1, 149, 150, 151, 1_000_000, 1_500_003])
def test_reading_on_from_any_byte_gives_exactly_the_rest(tmp_path: Path, offset: int) -> None:
    writer = SpoolWriter(tmp_path / "out", limit=1 << 30)
    everything = write_lines(writer, 8000)
    writer.finish(0, "")
    spool.trim(tmp_path / "out", offset)  # what the client acknowledged is gone
    frames, how = read_all(tmp_path / "out", offset)
    assert b"".join(d for _, d in frames) == everything[offset:]
    assert how is not None


def test_trim_keeps_the_segment_that_holds_the_byte_asked_for(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "out", limit=1 << 30)
    write_lines(writer, 20000)
    starts = spool.segments(tmp_path / "out")
    spool.trim(tmp_path / "out", starts[2] - 1)
    assert spool.segments(tmp_path / "out") == starts[1:]
    with pytest.raises(ValueError, match="no longer spooled"):
        SpoolReader(tmp_path / "out", starts[0])


def test_a_frame_half_written_is_read_once_whole(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    frame = spool.HEADER.pack(1, 5) + b"hello"
    fd = os.open(directory / spool.segment_name(0), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, frame[:7])
    reader = SpoolReader(directory, 0)
    assert reader._read() == []
    os.write(fd, frame[7:])
    os.close(fd)
    assert reader._read() == [("stdout", b"hello")]


def test_the_writer_waits_past_its_bound_until_the_client_has_read(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    writer = SpoolWriter(directory, limit=3 * spool.SEGMENT_BYTES)
    chunk = b"x" * 65536
    written = threading.Event()
    count = [0]

    def produce() -> None:
        for _ in range(200):  # 12.5 MiB
            writer.write("stdout", chunk)
            count[0] += 1
        written.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    assert not written.wait(1.0)  # held at its bound
    held = sum(
        os.path.getsize(directory / spool.segment_name(s)) for s in spool.segments(directory)
    )
    assert held <= 3 * spool.SEGMENT_BYTES + len(chunk) + spool.HEADER.size
    stalled = count[0]
    # the client reads it all, saying so as it goes: the writer goes on to the end
    reader = SpoolReader(directory, 0).frames(lambda: False)
    got = 0
    while got < 200 * len(chunk):
        _, data = next(reader)
        got += len(data)
        spool.trim(directory, got)
    assert written.wait(30) and stalled < 200


def test_a_keeper_spools_a_process_and_says_how_it_ended(tmp_path: Path) -> None:
    """The keeper's process mode (the bubblewrap runner's): both streams, in order, the
    child's pid at once, its exit status last; it outlives whoever started it."""
    directory = tmp_path / "out"
    script = "echo one; echo two >&2; sleep 0.2; echo three; exit 3"
    keeper = start_keeper(["process", str(directory), str(1 << 20), "-1", "--", "sh", "-c", script])
    assert keeper.wait(60) == 0
    assert int((directory / "pid").read_text()) > 0
    frames, how = read_all(directory)
    assert joined(frames) == {"stdout": b"one\nthree\n", "stderr": b"two\n"}
    assert how == {"code": 3, "broken": ""}
    assert (tmp_path / "keeper-out.log").read_text() == ""  # it said nothing of itself

"""A delay line for TCP: the network between a GPU node and a developer machine, modelled.

The kernels this project runs on have no ``netem``, so a link's latency is modelled by a relay
that holds every segment it reads for a fixed time in each direction before writing it on.
It is a delay line, not a serializer: it keeps reading while earlier segments wait, and
segments that fall due together go out in one write, so throughput is limited by the delay
only as far as the peers' own windows limit it (as on a real link with that round trip).
Order is kept: each direction is one FIFO.

One thread moves both directions of a connection with ``select(2)``, whose timeout has
microsecond resolution (epoll's is a millisecond, too coarse for a 0.25 ms delay); no thread
hand-offs, so the relay adds little of its own to each round trip (``calibrate`` measures
what it adds on the machine at hand).

Two ways to use it:

* as an ``ssh`` ProxyCommand, relaying stdin to HOST:PORT and HOST:PORT to stdout::

      ssh -o ProxyCommand="python benchmarks/relay.py --delay-ms 0.5 %h %p" ...

* as a TCP listener in front of HOST:PORT (each accepted connection gets its own thread)::

      python benchmarks/relay.py --delay-ms 0.5 --listen 2222 127.0.0.1 22

Importable: :class:`Pump` (one connection, both directions), :func:`relay_stdio`,
:class:`DelayProxy`, :func:`proxy_command` and :func:`calibrate`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 256 * 1024
#: what one direction may hold before it stops reading (a memory bound, not a throughput cap:
#: at 1 ms it allows 64 GB/s)
MAX_BUFFERED = 64 * 1024 * 1024
#: segments due together are written in one call, up to this much
MAX_WRITE = 1024 * 1024
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


@dataclass
class Direction:
    """One direction of a connection: read from ``src``, hold, write to ``dst``."""

    name: str
    src: int
    dst: int
    close_write: Callable[[], None]
    pending: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    buffered: int = 0
    out: memoryview = field(default_factory=lambda: memoryview(b""))
    eof: bool = False
    closed: bool = False
    #: segments read, writes made, bytes carried
    segments: int = 0
    writes: int = 0
    bytes: int = 0

    def stats(self) -> dict[str, int]:
        return {f"{self.name}_{key}": getattr(self, key) for key in ("segments", "writes", "bytes")}


class Pump:
    """Both directions of one connection, moved by one thread (:meth:`run`).

    ``a_read``/``a_write`` are one end's file descriptors (the same socket's twice, or a
    pipe's stdin and stdout), ``b`` the other end's. A direction whose source ends has its
    destination's write side closed (``close_a``/``close_b``) once all it read went out.
    :meth:`run` returns when both directions have ended, or raises the first error (a write
    to a peer that went away)."""

    def __init__(
        self,
        a: tuple[int, int],
        b: tuple[int, int],
        close_a: Callable[[], None],
        close_b: Callable[[], None],
        delay: float,
    ) -> None:
        self.delay = max(0.0, delay)
        self.directions = [
            Direction("up", a[0], b[1], close_b),
            Direction("down", b[0], a[1], close_a),
        ]
        self._stop_r, self._stop_w = os.pipe()
        self._lock = threading.RLock()  # stop() may run in a signal handler, in run's thread
        self._ended = False
        for fd in {*a, *b}:
            os.set_blocking(fd, False)

    def stop(self) -> None:
        """Make :meth:`run` return soon (from any thread, or a signal handler)."""
        with self._lock:
            if not self._ended:
                with contextlib.suppress(OSError):
                    os.write(self._stop_w, b"x")

    def stats(self) -> dict[str, int]:
        return {k: v for d in self.directions for k, v in d.stats().items()}

    def _read(self, d: Direction) -> None:
        try:
            data = os.read(d.src, CHUNK)
        except OSError as error:
            if error.errno in _AGAIN:
                return
            if error.errno != errno.ECONNRESET:
                raise
            data = b""
        if not data:
            d.eof = True
            return
        d.pending.append((time.monotonic() + self.delay, data))
        d.buffered += len(data)
        d.segments += 1

    def _flush(self, d: Direction, now: float) -> None:
        """Write what is due (as far as the destination takes it without blocking)."""
        while True:
            if not d.out and d.pending and d.pending[0][0] <= now:
                batch = []
                size = 0
                while d.pending and d.pending[0][0] <= now and size < MAX_WRITE:
                    data = d.pending.popleft()[1]
                    batch.append(data)
                    size += len(data)
                d.out = memoryview(batch[0] if len(batch) == 1 else b"".join(batch))
            if not d.out:
                break
            try:
                written = os.write(d.dst, d.out)
            except OSError as error:
                if error.errno in _AGAIN:
                    break
                raise
            d.out = d.out[written:]
            d.buffered -= written
            d.bytes += written
            d.writes += 1
        if d.eof and not d.pending and not d.out and not d.closed:
            d.closed = True
            d.close_write()

    def run(self) -> None:
        tighten_timers()
        selector = selectors.SelectSelector()  # select(2): microsecond timeouts
        try:
            while not all(d.closed for d in self.directions):
                now = time.monotonic()
                for d in self.directions:
                    self._flush(d, now)
                selector_map: dict[int, int] = {self._stop_r: selectors.EVENT_READ}
                for d in self.directions:
                    if not d.eof and d.buffered < MAX_BUFFERED:
                        selector_map[d.src] = selector_map.get(d.src, 0) | selectors.EVENT_READ
                    if d.out and not d.closed:
                        selector_map[d.dst] = selector_map.get(d.dst, 0) | selectors.EVENT_WRITE
                for key in list(selector.get_map().values()):
                    if key.fd not in selector_map:
                        selector.unregister(key.fd)
                for fd, events in selector_map.items():
                    try:
                        if selector.get_key(fd).events != events:
                            selector.modify(fd, events)
                    except KeyError:
                        selector.register(fd, events)
                if all(d.closed for d in self.directions):
                    break
                due = [d.pending[0][0] for d in self.directions if d.pending and not d.out]
                timeout = max(0.0, min(due) - time.monotonic()) if due else None
                ready = selector.select(timeout)
                for key, events in ready:
                    if key.fd == self._stop_r:
                        return
                    if events & selectors.EVENT_READ:
                        for d in self.directions:
                            if d.src == key.fd and not d.eof:
                                self._read(d)
        finally:
            selector.close()
            with self._lock:
                self._ended = True
                os.close(self._stop_r)
                os.close(self._stop_w)


def tighten_timers() -> None:
    """Ask Linux for this thread's timers to fire on time (its default slack is 50 us, a fifth
    of a 0.25 ms delay). Best effort: elsewhere, or without ctypes, nothing changes."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns


def connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _shutdown_write(sock: socket.socket) -> Callable[[], None]:
    def close_write() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    return close_write


def relay_stdio(
    host: str,
    port: int,
    delay: float,
    stdin: int = 0,
    stdout: int = 1,
    stats: str | None = None,
) -> int:
    """Relay ``stdin`` to HOST:PORT and HOST:PORT to ``stdout`` with ``delay`` each way,
    until both directions have ended. Returns an exit status (1: a peer went away).

    ``stats``: a file to append one JSON line to at the end (also when ended by SIGTERM or
    SIGHUP, which is how ssh ends its ProxyCommand): segments, writes and bytes each way."""
    start = time.monotonic()
    sock = connect(host, port)

    def close_stdout() -> None:
        with contextlib.suppress(OSError):
            os.close(stdout)

    pump = Pump(
        (stdin, stdout), (sock.fileno(), sock.fileno()), close_stdout, _shutdown_write(sock), delay
    )
    status = 0

    def on_signal(_signum: int, _frame: object) -> None:
        pump.stop()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        pump.run()
    except OSError:
        status = 1
    finally:
        sock.close()
        if stats:
            record = {
                "delay_ms": delay * 1000,
                "seconds": round(time.monotonic() - start, 3),
                **pump.stats(),
            }
            with open(stats, "a") as f:
                f.write(json.dumps(record) + "\n")
    return status


class DelayProxy:
    """A TCP listener that relays each connection to ``target`` with ``delay`` each way.

    ``port`` is the port it listens on (pass 0 to let the system pick). Use as a context
    manager or call :meth:`close`, which also ends the connections it relays."""

    def __init__(
        self,
        target: tuple[str, int],
        delay: float,
        port: int = 0,
        bind: str = "127.0.0.1",
    ) -> None:
        self.target = target
        self.delay = delay
        self._listener = socket.create_server((bind, port))
        self.port = int(self._listener.getsockname()[1])
        self._pumps: set[Pump] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._serve, name="delay-proxy", daemon=True).start()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream = connect(*self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(
                target=self._relay, args=(client, upstream), name="delay-proxy-conn", daemon=True
            ).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with client, upstream:
            pump = Pump(
                (client.fileno(), client.fileno()),
                (upstream.fileno(), upstream.fileno()),
                _shutdown_write(client),
                _shutdown_write(upstream),
                self.delay,
            )
            with self._lock:
                if self._closed:
                    return
                self._pumps.add(pump)
            try:
                pump.run()
            except OSError:
                pass
            finally:
                with self._lock:
                    self._pumps.discard(pump)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pumps = list(self._pumps)
        with contextlib.suppress(OSError):
            self._listener.close()
        for pump in pumps:
            pump.stop()


def proxy_command(delay_ms: float, python: str | None = None, stats: str | None = None) -> str:
    """An ``ssh`` ProxyCommand that runs this relay with ``delay_ms`` each way (``%h %p``:
    ssh's host and port), for the agent's ``sshfs_extra_options`` (which escapes commas). No
    spaces or quotes in the paths: ssh hands the command to a shell."""
    script = os.path.abspath(__file__)
    extra = f" --stats {stats}" if stats else ""
    return f"{python or sys.executable} {script} --delay-ms {delay_ms:g}{extra} %h %p"


def calibrate(delay_ms: float, pings: int = 200) -> float:
    """The median round trip, in seconds, of a one-byte ping through the relay run as a
    ProxyCommand (a process, stdin and stdout) to an echo server on loopback: what the
    relay really adds at ``delay_ms`` on this machine, its own cost included."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    port = str(listener.getsockname()[1])
    command = proxy_command(delay_ms).replace("%h", "127.0.0.1").replace("%p", port)
    relay = subprocess.Popen(
        ["/bin/sh", "-c", f"exec {command}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert relay.stdin is not None and relay.stdout is not None
    times = []
    try:
        for _ in range(pings):
            start = time.perf_counter()
            relay.stdin.write(b"p")
            relay.stdin.flush()
            if relay.stdout.read(1) != b"p":
                raise RuntimeError("the relay lost a ping")
            times.append(time.perf_counter() - start)
    finally:
        relay.stdin.close()
        relay.wait(timeout=30)
        relay.stdout.close()
        listener.close()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--delay-ms", type=float, required=True, help="how long each segment is held, one way"
    )
    parser.add_argument("--listen", type=int, metavar="PORT", help="listen on PORT instead")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--stats", metavar="FILE", help="append segment and byte counts to FILE at the end"
    )
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    delay = args.delay_ms / 1000.0
    if args.listen is None:
        return relay_stdio(args.host, args.port, delay, stats=args.stats)
    proxy = DelayProxy((args.host, args.port), delay, args.listen, args.bind)
    print(f"relaying {args.bind}:{proxy.port} -> {args.host}:{args.port}, {args.delay_ms} ms")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

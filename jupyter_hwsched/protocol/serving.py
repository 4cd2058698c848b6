"""The limits of every HTTP surface: body and header size, timeouts, connections.

tornado's :class:`~tornado.httpserver.HTTPServer` takes most of these as arguments but answers
them poorly for a JSON API: a Content-Length over ``max_body_size`` gets a bare ``400 Bad
Request`` (after the application's delegate has seen the headers), a flood of connections is
accepted without bound, headers over ``max_header_size`` close the connection without a word,
and ``idle_connection_timeout`` defaults to an hour. :func:`apply_limits` puts a
:class:`ConnectionGuard` in front of a server (one made here, or one another library made,
like jupyter_server's) so that each limit has an answer that says what happened:

* over ``max_connections`` open connections, a new one gets ``503`` at once and is closed;
* a request whose Content-Length is over ``max_body_bytes`` gets ``413`` as soon as its headers
  are in, before any of the body is read (the connection is detached from tornado, so nothing
  reads the body into the application); a chunked body is counted as it arrives and refused
  with ``413`` the moment it passes the limit (through tornado's connection, which closes once
  the answer is out: tornado is reading on, so there is no lingering, below);
* headers over ``max_header_bytes`` get ``431`` (up to twice the limit; beyond that tornado
  itself closes the connection unanswered);
* a new connection whose first request's headers are not complete within ``header_timeout``
  gets ``408`` and is closed; between requests on a kept-alive connection, tornado's own timer
  allows ``idle_timeout`` for the next request's headers, and ``body_timeout`` for a body.

Every answer is one line of JSON, ``{"message": ...}``, as the package's errors are
(:mod:`jupyter_hwsched.protocol.handler`), with ``Connection: close``. Before closing after an
answer the guard reads and discards what the client is still sending, for a few seconds at
most ("lingering close"), so that the client reads the answer rather than a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from tornado import gen, httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.log import gen_log
from traitlets import Float, HasTraits, Integer, default

KIB = 1024
MIB = 1024 * KIB

#: how long, and how much, a refused client's further sending is read and dropped
LINGER_SECONDS = 5.0
LINGER_BYTES = 64 * MIB
_READ = 64 * KIB


@dataclass(frozen=True)
class ServerLimits:
    """What one HTTP server accepts. The defaults suit a JSON control API."""

    #: the largest request body; a larger one gets 413 before it is read
    max_body_bytes: int = 1 * MIB
    #: the largest request line plus headers
    max_header_bytes: int = 64 * KIB
    #: seconds from accepting a connection until its first request's headers are complete
    header_timeout: float = 10.0
    #: seconds a kept-alive connection may wait for (and receive) its next request's headers
    idle_timeout: float = 120.0
    #: seconds to receive a request's body
    body_timeout: float = 60.0
    #: open connections (websockets included); more get 503
    max_connections: int = 1000
    #: where the limits are set ("SchedulerApp"), named in the errors; "" for fixed limits
    settings: str = ""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, not {getattr(self, name)}")
        for name in ("header_timeout", "idle_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")

    def change(self, setting: str) -> str:
        """How an operator raises ``setting`` ('' where the limits are fixed)."""
        return f"; an operator can raise {self.settings}.{setting}" if self.settings else ""


class LimitSettings(HasTraits):
    """The limits as settings of an application (``c.SchedulerApp.max_body_bytes``): mix in
    after the application's own base, and set ``limit_defaults`` for other defaults."""

    limit_defaults: ClassVar[ServerLimits] = ServerLimits()

    max_body_bytes = Integer(
        ServerLimits.max_body_bytes,
        min=1,
        config=True,
        help="The largest request body in bytes (the scheduler: 1 MiB; a node agent: 4 MiB, "
        "since starting a session sends the developer's environment). A larger one is "
        "refused with 413 before it is read.",
    )
    max_header_bytes = Integer(
        ServerLimits.max_header_bytes,
        min=1,
        config=True,
        help="The largest request line and headers, in bytes; larger ones get 431.",
    )
    header_timeout = Float(
        ServerLimits.header_timeout,
        min=0.01,
        config=True,
        help="Seconds a new connection has to send its first request's headers; a slower "
        "one gets 408 and is closed.",
    )
    idle_timeout = Float(
        ServerLimits.idle_timeout,
        min=0.01,
        config=True,
        help="Seconds a kept-alive connection may wait for its next request's headers.",
    )
    body_timeout = Float(
        ServerLimits.body_timeout,
        min=0.01,
        config=True,
        help="Seconds a client has to send a request's body.",
    )
    max_connections = Integer(
        ServerLimits.max_connections,
        min=1,
        config=True,
        help="Open connections (websockets included); a connection over the limit gets 503 "
        "and is closed. Keep it below the process's open-file limit.",
    )

    @default("max_body_bytes")
    def _max_body_default(self) -> int:
        return self.limit_defaults.max_body_bytes

    @default("max_header_bytes")
    def _max_header_default(self) -> int:
        return self.limit_defaults.max_header_bytes

    @default("header_timeout")
    def _header_timeout_default(self) -> float:
        return self.limit_defaults.header_timeout

    @default("idle_timeout")
    def _idle_timeout_default(self) -> float:
        return self.limit_defaults.idle_timeout

    @default("body_timeout")
    def _body_timeout_default(self) -> float:
        return self.limit_defaults.body_timeout

    @default("max_connections")
    def _max_connections_default(self) -> int:
        return self.limit_defaults.max_connections

    def server_limits(self) -> ServerLimits:
        """The configured limits (ValueError names a setting that cannot be)."""
        return ServerLimits(
            max_body_bytes=self.max_body_bytes,
            max_header_bytes=self.max_header_bytes,
            header_timeout=self.header_timeout,
            idle_timeout=self.idle_timeout,
            body_timeout=self.body_timeout,
            max_connections=self.max_connections,
            settings=type(self).__name__,
        )


def size(count: int) -> str:
    """A byte count for people: 1 MiB, 64 KiB, 1500 bytes."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    return f"{count} bytes"


def error_body(message: str) -> bytes:
    """The package's error body, one line of JSON."""
    return json.dumps({"message": message}).encode() + b"\n"


def answer(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response that ends the connection, with :func:`error_body`."""
    body = error_body(message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def limited_server(app: Any, limits: ServerLimits, **kwargs: Any) -> HTTPServer:
    """A tornado HTTPServer for ``app`` (``kwargs``: HTTPServer's, e.g. ``ssl_options``)
    that keeps ``limits``."""
    server = HTTPServer(app, **kwargs)
    apply_limits(server, limits)
    return server


def apply_limits(server: HTTPServer, limits: ServerLimits) -> ConnectionGuard:
    """Make ``server`` keep ``limits`` from its next connection on."""
    return ConnectionGuard(server, limits)


class ConnectionGuard:
    """Stands in front of one HTTPServer: counts its connections, times their first headers,
    and checks each request's headers before the application sees them.

    It takes over two of the server's methods on the instance: ``handle_stream`` (tornado's
    TCPServer calls it with each accepted connection) and ``start_request`` (the server's
    connections call it for each request, for the delegate that receives it).
    """

    def __init__(self, server: HTTPServer, limits: ServerLimits) -> None:
        self.server = server
        self.limits = limits
        old = server.conn_params
        # tornado's own limits stay as a backstop, above the guard's: the guard answers first
        server.conn_params = HTTP1ConnectionParameters(
            no_keep_alive=old.no_keep_alive,
            chunk_size=old.chunk_size,
            decompress=old.decompress,
            max_header_size=2 * limits.max_header_bytes,
            header_timeout=limits.idle_timeout,
            max_body_size=2 * limits.max_body_bytes + old.chunk_size,
            body_timeout=limits.body_timeout,
        )
        self.open: set[IOStream] = set()
        self.refusing = 0
        self.max_refusing = max(16, limits.max_connections // 10)
        self._warned_at = float("-inf")
        self._first_headers: dict[IOStream, object] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._handle_stream = server.handle_stream
        self._start_request = server.start_request
        # instance attributes win over the class's methods; tornado looks them up per call
        setattr(server, "handle_stream", self.handle_stream)  # noqa: B010
        setattr(server, "start_request", self.start_request)  # noqa: B010

    # connections

    def connections(self) -> int:
        """Connections open now (forgetting those that have closed)."""
        self.open = {s for s in self.open if not s.closed()}
        return len(self.open)

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if len(self.open) >= self.limits.max_connections and (
            self.connections() >= self.limits.max_connections
        ):
            self._refuse_connection(stream)
            return
        self.open.add(stream)
        loop = IOLoop.current()
        self._first_headers[stream] = loop.call_later(
            self.limits.header_timeout, self._headers_too_slow, stream, address
        )
        self._handle_stream(stream, address)

    def _refuse_connection(self, stream: IOStream) -> None:
        now = IOLoop.current().time()
        if now - self._warned_at > 60:
            self._warned_at = now
            gen_log.warning(
                "at the connection limit (%d open): refusing new connections with 503",
                self.limits.max_connections,
            )
        if self.refusing >= self.max_refusing:
            stream.close()  # a flood: answering each would only feed it
            return
        message = (
            f"the server is at its limit of {self.limits.max_connections} open connections: "
            f"try again shortly{self.limits.change('max_connections')}"
        )
        self.refusing += 1
        self.spawn(
            self.answer_and_close(stream, answer(503, "Service Unavailable", message)),
            done=self._refused,
        )

    def _refused(self) -> None:
        self.refusing -= 1

    def _headers_too_slow(self, stream: IOStream, address: Any) -> None:
        if self._first_headers.pop(stream, None) is None or stream.closed():
            return
        gen_log.info(
            "closing a connection from %s: no complete request headers within %g s",
            address,
            self.limits.header_timeout,
        )
        message = (
            f"the request's headers did not arrive within {self.limits.header_timeout:g} s"
            f"{self.limits.change('header_timeout')}"
        )
        # tornado is still reading the headers, so the guard cannot linger: answer and close
        self.spawn(self.answer_and_close(stream, answer(408, "Request Timeout", message), 0))

    def headers_arrived(self, stream: IOStream) -> None:
        handle = self._first_headers.pop(stream, None)
        if handle is not None:
            IOLoop.current().remove_timeout(handle)

    async def answer_and_close(
        self, stream: IOStream, response: bytes, linger: float = LINGER_SECONDS
    ) -> None:
        """Send ``response``, read and drop what the client still sends (for ``linger``
        seconds at most, and never longer than ``header_timeout``), close."""
        loop = IOLoop.current()
        try:
            # bounded too: a TLS client that never finishes its handshake never takes the answer
            await gen.with_timeout(
                loop.time() + self.limits.header_timeout,
                stream.write(response),
                quiet_exceptions=StreamClosedError,
            )
            deadline = loop.time() + min(linger, self.limits.header_timeout)
            dropped = 0
            while linger > 0 and dropped < LINGER_BYTES:
                read = stream.read_bytes(_READ, partial=True)
                dropped += len(
                    await gen.with_timeout(deadline, read, quiet_exceptions=StreamClosedError)
                )
        except (StreamClosedError, TimeoutError):
            pass
        finally:
            stream.close()

    def spawn(self, work: Awaitable[None], done: Callable[[], None] | None = None) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def finished(task: asyncio.Future[None]) -> None:
            self._tasks.discard(task)
            if done is not None:
                done()
            if not task.cancelled() and task.exception() is not None:
                gen_log.error("refusing a request failed", exc_info=task.exception())

        task.add_done_callback(finished)

    # requests

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        delegate = self._start_request(server_conn, request_conn)
        assert isinstance(request_conn, HTTP1Connection), "HTTPServer speaks HTTP/1.x"
        return LimitedRequest(self, delegate, request_conn)

    def refusal(
        self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders
    ) -> tuple[int, str, str] | None:
        """Status, reason and message for a request that its headers already put over a
        limit."""
        limits = self.limits
        header_bytes = len(start_line.method) + len(start_line.path) + 11
        header_bytes += sum(len(k) + len(v) + 4 for k, v in headers.get_all())
        if header_bytes > limits.max_header_bytes:
            message = (
                f"the request's headers are {header_bytes} bytes, over the limit of "
                f"{size(limits.max_header_bytes)}{limits.change('max_header_bytes')}"
            )
            return 431, "Request Header Fields Too Large", message
        declared = content_length(headers)
        if declared is not None and declared > limits.max_body_bytes:
            return 413, "Content Too Large", self.too_large(f"{declared} bytes")
        return None

    def too_large(self, what: str) -> str:
        limit = self.limits.max_body_bytes
        return (
            f"the request body ({what}) is over this server's limit of {size(limit)}: send "
            f"less{self.limits.change('max_body_bytes')}"
        )


def content_length(headers: httputil.HTTPHeaders) -> int | None:
    """The declared body size (the largest of repeated values), or None: none declared, or
    one tornado will refuse as malformed."""
    value = headers.get("Content-Length")
    if value is None:
        return None
    pieces = re.split(r",[ \t]*", value.strip())
    if not all(p.isdigit() for p in pieces):
        return None
    return max(int(p) for p in pieces)


class LimitedRequest(httputil.HTTPMessageDelegate):
    """Receives one request before the application's delegate does, and passes on what is
    within the limits."""

    def __init__(
        self,
        guard: ConnectionGuard,
        delegate: httputil.HTTPMessageDelegate,
        connection: HTTP1Connection,
    ) -> None:
        self.guard = guard
        self.delegate = delegate
        self.connection = connection
        self.received = 0
        self.refused = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine), "a server reads requests"
        self.guard.headers_arrived(self.connection.stream)
        refusal = self.guard.refusal(start_line, headers)
        if refusal is None:
            return self.delegate.headers_received(start_line, headers)
        self.refused = True
        status, reason, message = refusal
        gen_log.info("%s %s -> %d: %s", start_line.method, start_line.path, status, message)
        # detached, the connection leaves tornado: no body is read, no handler runs
        stream = self.connection.detach()
        self.guard.spawn(self.guard.answer_and_close(stream, answer(status, reason, message)))
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.refused:
            return None
        self.received += len(chunk)
        if self.received <= self.guard.limits.max_body_bytes:
            return self.delegate.data_received(chunk)
        # a body without Content-Length (chunked) grew past the limit. tornado is reading the
        # next piece already, so the guard cannot linger itself: it answers through the
        # connection, which drops the rest of the body and closes once the answer is out
        self.refused = True
        message = self.guard.too_large(f"{self.received} bytes so far")
        gen_log.info("%s -> 413: %s", self.connection.context, message)
        body = error_body(message)
        headers = httputil.HTTPHeaders(
            {"Content-Type": "application/json", "Content-Length": str(len(body))}
        )
        headers["Connection"] = "close"
        start = httputil.ResponseStartLine("HTTP/1.1", 413, "Content Too Large")
        self.connection.write_headers(start, headers, body)
        self.connection.finish()
        return None

    def finish(self) -> None:
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()

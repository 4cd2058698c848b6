"""The kernel channels websocket of the node agent: Nagle's algorithm off, bounded buffers.

A cell's messages are small and each is waited for; with Nagle's algorithm a reply can sit
in the socket buffer for a delayed ACK (about 40 ms here) before it leaves. Measured with
``benchmarks/kernel_roundtrip.py``: an empty cell took 48 ms before, 6.6 ms after.

What the agent holds for a client is bounded, and nothing is dropped (see relay.py):

- ``c.NoDelayConnection.max_unsent_bytes`` (8 MiB): messages written to the websocket and not
  yet taken by the client's socket. Past it the session's container is paused until the
  client has read down to half of it.
- ``c.NoDelayConnection.max_replay_bytes`` (32 MiB): messages kept while the kernel has no
  client, replayed to the client that reconnects with the same session id. Past it the
  container is paused until a client connects again.

jupyter_server's IOPub rate limit, which drops output past 1 MB/s, is off by default here
(``limit_rate``): the bounds above protect the agent, and the client's own server limits what
reaches a browser.

A client that speaks the binary subprotocol (``v1.kernel.websocket.jupyter.org``, as the
Remote GPU kernel's bridge does) gets the kernel's ZMQ frames as they are, behind a table of
offsets: nothing is parsed or re-encoded on the way, and what the client sends is only signed
with the kernel's key (``Session.send_raw``). Without rate limit or traceback filtering, a
kernel message goes straight from the ZMQ socket to the websocket.

What a client sends is checked for its shape before it goes anywhere (:func:`client_message`):
a frame that is not a kernel message of the connection's protocol (not JSON, a binary offset
table that points outside the frame, a channel other than shell, control or stdin) closes that
client's websocket with 1007 and a reason, and the kernel and its other clients go on. To a
frame over ``websocket_max_message_size`` (tornado's 10 MiB) tornado answers 1009 and drops
the connection at once, before reading it.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import zmq
from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from traitlets import Bool, Int

from jupyter_hwsched.agent import relay
from jupyter_hwsched.agent.relay import MiB

#: where the replay buffer's own count is kept, beside jupyter_server's buffer
REPLAY = "hwsched_replay"
#: jupyter_server's binary kernel websocket protocol: the kernel's ZMQ frames, not JSON
BINARY = "v1.kernel.websocket.jupyter.org"
DELIM = b"<IDS|MSG>"
#: the channels a client sends on (iopub only goes the other way)
CLIENT_CHANNELS = ("shell", "control", "stdin")
#: the close code of a frame that is not a kernel message (RFC 6455: invalid payload data)
MALFORMED = 1007


class MalformedMessage(ValueError):
    """A client's frame is not a kernel message; the text says what is wrong (it is sent
    back as the websocket's close reason, so it stays short)."""


def split_v1(message: Any) -> tuple[str, list[bytes]]:
    """The channel and frames of a message of the binary protocol (what jupyter_server's
    ``deserialize_msg_from_ws_v1`` reads, with its offset table checked first: a count read
    from garbage would have it build a list of up to 2**64 offsets)."""
    if not isinstance(message, bytes):
        raise MalformedMessage(f"expected a binary frame ({BINARY})")
    count = int.from_bytes(message[:8], "little")
    if not 2 <= count <= len(message) // 8 - 1:
        raise MalformedMessage("bad offset table: wrong number of offsets")
    offsets = [int.from_bytes(message[8 * i : 8 * i + 8], "little") for i in range(1, count + 1)]
    if (
        offsets[0] < 8 * (count + 1)
        or offsets[-1] > len(message)
        or any(b < a for a, b in itertools.pairwise(offsets))
    ):
        raise MalformedMessage("bad offset table: offsets out of order or past the end")
    try:
        channel = message[offsets[0] : offsets[1]].decode()
    except UnicodeDecodeError:
        raise MalformedMessage("the channel name is not UTF-8") from None
    return channel, [message[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]


def _json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise MalformedMessage(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"the {what} is not a JSON object")
    return value


def _check_channel(channel: Any) -> None:
    if channel not in CLIENT_CHANNELS:
        raise MalformedMessage(f"no channel {str(channel)[:40]!r}: use shell, control or stdin")


def client_message(message: Any, binary: bool) -> tuple[str, dict[str, Any]]:
    """The channel and header of a client's frame, once it is known to be a kernel message
    that jupyter_server can pass on; else :class:`MalformedMessage`. ``binary``: the
    connection speaks the binary protocol."""
    if binary:
        channel, frames = split_v1(message)
        _check_channel(channel)
        if len(frames) < 4:
            raise MalformedMessage("a message needs header, parent, metadata and content")
        return channel, _json_object(frames[0], "header")
    if isinstance(message, bytes):  # JSON with binary buffers (jupyter_server's own format)
        if len(message) < 8:
            raise MalformedMessage("a binary frame too short for its offset table")
        count = struct.unpack("!i", message[:4])[0]
        if not 1 <= count <= len(message) // 4 - 1:
            raise MalformedMessage("bad offset table: wrong number of offsets")
        offsets = struct.unpack(f"!{count}I", message[4 : 4 * (count + 1)])
        if any(not 4 * (count + 1) <= o <= len(message) for o in offsets):
            raise MalformedMessage("bad offset table: offsets past the end")
        body = _json_object(message[offsets[0] : offsets[1] if count > 1 else None], "message")
    else:
        body = _json_object(message, "message")
    channel = body.get("channel") or "shell"
    _check_channel(channel)
    for part in ("header", "parent_header", "metadata", "content"):
        if not isinstance(body.get(part), dict):
            raise MalformedMessage(f"the message's {part} is not a JSON object")
    return channel, body["header"]


class NoDelayConnection(ZMQChannelsWebsocketConnection):
    max_unsent_bytes = Int(
        8 * MiB,
        config=True,
        help="Bytes of kernel messages the agent holds for a client that has not read them; "
        "past this the kernel's session is paused until the client reads half of them.",
    )
    max_replay_bytes = Int(
        32 * MiB,
        config=True,
        help="Bytes of kernel messages kept for a client that disconnected, replayed when it "
        "reconnects; past this the kernel's session is paused until a client connects.",
    )
    limit_rate = Bool(
        False,
        config=True,
        help="Drop IOPub output past jupyter_server's rate limits. Off: output is paced by the "
        "client's reading instead (max_unsent_bytes), and none is lost.",
    )

    unsent = 0  # bytes written to the websocket, not yet flushed to its socket
    pending_bytes = 0  # bytes of kernel messages waiting for the client to catch up
    holding = False  # whether this connection holds the session paused
    binary: bool | None = None  # whether kernel messages pass untouched (see _binary)
    _sharing: Any = False  # (node, session) if the kernel shares a GPU; False: not looked up

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: messages (stream, message parts, size) not yet written, in order; a stream of
        #: None: a status message
        self.pending: deque[tuple[Any, Any, int]] = deque()

    @property
    def write_message(self) -> Callable[..., Any]:
        """Every write to the client, counted until it is flushed."""
        return self._write_counted

    def _write_counted(self, message: bytes | str, binary: bool = False) -> Any:
        future = self.websocket_handler.write_message(message, binary=binary)
        size = len(message)  # JSON text is ASCII (json.dumps escapes the rest)
        self.unsent += size
        future.add_done_callback(partial(self._flushed, size))
        self._check()
        return future

    def handle_outgoing_message(self, stream: Any, outgoing_msg: list[Any]) -> None:
        """A kernel message for the client: written now while the client keeps up, else kept
        in order (as the kernel sent it) until the client has read enough."""
        if self.pending or self.unsent > self.max_unsent_bytes:
            self._queue(stream, outgoing_msg, sum(len(part) for part in outgoing_msg))
            return
        self._pass_on(stream, outgoing_msg)

    def handle_incoming_message(self, incoming_msg: Any) -> None:
        """A client's message for the kernel, once its shape is checked; a shared kernel's
        cell waits for its turn on the GPU first (sharing.py)."""
        try:
            channel, header = client_message(incoming_msg, self.subprotocol == BINARY)
        except MalformedMessage as exc:
            self.log.warning("kernel %s: a client sent a malformed frame: %s", self.kernel_id, exc)
            self.websocket_handler.close(MALFORMED, f"not a kernel message: {exc}")
            return
        if not self._held_for_gpu(channel, header, incoming_msg):
            self.forward(incoming_msg)

    def forward(self, incoming_msg: Any) -> None:
        """A client's message to the kernel. In the binary protocol with no message types
        filtered, its frames are signed and sent at once, rather than queued on the channel's
        stream for the event loop's next turn (what jupyter_server's own path does)."""
        allowed = self.multi_kernel_manager.allowed_message_types
        if not self.channels or not self._binary() or allowed:
            super().handle_incoming_message(incoming_msg)
            return
        channel, frames = split_v1(incoming_msg)  # checked before: client_message
        stream = self.channels.get(channel)
        if stream is None or len(frames) < 4:
            self.log.warning("dropping a message for channel %r of %d frames", channel, len(frames))
            return
        message = [DELIM, self.session.sign(frames[:4]), *frames]
        if not stream.sending():  # nothing queued before it: order is kept
            try:
                stream.socket.send_multipart(message, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
        stream.send_multipart(message)

    # kernels sharing a GPU (sharing.py)

    def _shared(self) -> tuple[Any, Any] | None:
        """The node and the session, if this kernel shares a GPU (looked up once)."""
        if self._sharing is False:
            node, session = self._session()
            sharing = session is not None and session.shared_mem
            self._sharing = (node, session) if sharing else None
        found: tuple[Any, Any] | None = self._sharing or None
        return found

    def _held_for_gpu(self, channel: str, header: dict[str, Any], incoming_msg: Any) -> bool:
        """Whether a message of a shared kernel waits for the GPU (it goes on later)."""
        shared = self._shared()
        if shared is None:
            return False
        node, session = shared
        kind = header.get("msg_type")
        if channel == "shell" and kind == "execute_request":
            return not node.sharing.execute(session.id, self, incoming_msg, header)
        if channel == "control" and kind == "interrupt_request":
            node.sharing.interrupted(session.id)
        return False

    def say(self, parent: dict[str, Any], text: str) -> None:
        """A line in the output of the cell that ``parent`` asked for (stderr)."""
        self._emit("iopub", "stream", {"name": "stderr", "text": text + "\n"}, parent)

    def abort(self, parent: dict[str, Any]) -> None:
        """Answer a cell that will not run, as a kernel answers one it aborts."""
        self._emit("iopub", "status", {"execution_state": "busy"}, parent)
        self._emit("iopub", "status", {"execution_state": "idle"}, parent)
        self._emit("shell", "execute_reply", {"status": "aborted", "execution_count": None}, parent)

    def _emit(
        self, channel: str, kind: str, content: dict[str, Any], parent: dict[str, Any]
    ) -> None:
        """A message of the agent's own to the client, in order with the kernel's."""
        if self.channels.get(channel) is None:
            return  # no client on that channel now
        message = self.session.msg(kind, content, parent=parent)
        self.handle_outgoing_message(channel, self.session.serialize(message))

    def _pass_on(self, stream: Any, outgoing_msg: Any) -> None:
        """A kernel message to the client: in the binary protocol with nothing to filter, its
        frames as they came (what jupyter_server's own path does, less its per-message checks)."""
        if not self._binary():
            super().handle_outgoing_message(stream, outgoing_msg)
            return
        if isinstance(stream, str):
            stream = self.channels[stream]
        if stream.closed():
            self.log.warning("zmq message arrived on closed channel")
            self.disconnect()
            return
        _, frames = self.session.feed_identities(outgoing_msg)
        data = serialize_msg_to_ws_v1(frames[1:], stream.channel)  # type: ignore[no-untyped-call]
        self.write_message(data, binary=True)

    def _binary(self) -> bool:
        """Whether kernel messages pass to the client untouched (decided once a connection)."""
        if self.binary is None:
            if self.websocket_handler.ws_connection is None:
                return False  # not yet open: no subprotocol chosen
            self.binary = bool(
                self.subprotocol == BINARY
                and not self.limit_rate
                and getattr(self.multi_kernel_manager, "allow_tracebacks", True)
            )
        return self.binary

    def _send_status_message(self, status: str) -> None:
        if self.pending:  # after the messages the kernel sent before it
            self._queue(None, status, 0)
            return
        super()._send_status_message(status)  # type: ignore[no-untyped-call]

    def _queue(self, stream: Any, message: Any, size: int) -> None:
        self.pending.append((stream, message, size))
        self.pending_bytes += size
        self._check()

    def _flushed(self, size: int, future: Any) -> None:
        if not future.cancelled():
            future.exception()  # a connection that closed: disconnect() deals with it
        self.unsent -= size
        self._drain()
        self._check()

    def _drain(self) -> None:
        ws = self.websocket_handler.ws_connection
        while self.pending and self.unsent <= self.max_unsent_bytes:
            if ws is None or ws.is_closing():
                return  # disconnect() keeps the rest for the client's return
            stream, message, size = self.pending.popleft()
            self.pending_bytes -= size
            if stream is None:
                super()._send_status_message(message)  # type: ignore[no-untyped-call]
            else:
                self._pass_on(stream, message)

    def _check(self) -> None:
        """Pause the session past the bound; resume it at half the bound."""
        backlog = self.unsent + self.pending_bytes
        if not self.holding and backlog > self.max_unsent_bytes:
            self.holding = True
            relay.hold(*self._session(), self._key)
        elif self.holding and backlog <= self.max_unsent_bytes // 2:
            self.holding = False
            relay.release(*self._session(), self._key)

    @property
    def _key(self) -> str:
        return f"websocket-{id(self)}"

    def _session(self) -> tuple[Any, Any]:
        node = self.websocket_handler.settings.get("hwsched_node")
        return node, relay.session_of_kernel(node, self.kernel_id) if node else None

    def _kept(self) -> dict[str, Any] | None:
        """What jupyter_server keeps of this kernel's messages while it has no client."""
        kept: dict[str, Any] | None = self.multi_kernel_manager._kernel_buffers.get(self.kernel_id)
        return kept

    def connect(self) -> Any:
        self.websocket_handler.set_nodelay(True)
        # a client is back: what was kept for it drains through this connection's own bound
        # (and a paused kernel must answer the connection's kernel_info nudge)
        kept = self._kept()
        if kept is not None and REPLAY in kept:
            kept[REPLAY]["over"] = True  # its bound no longer pauses the kernel
        relay.release(*self._session(), f"replay-{self.kernel_id}")
        return super().connect()

    def disconnect(self) -> Any:
        channels = self.channels
        node, session = self._session()
        # not yet written: kept for the client's return, ahead of what the kernel sends next
        left = [
            (stream if isinstance(stream, str) else stream.channel, message)
            for stream, message, _ in self.pending
            if stream is not None
        ]
        self.pending.clear()
        self.pending_bytes = 0
        if self.holding:
            self.holding = False
            relay.release(node, session, self._key)
        super().disconnect()  # type: ignore[no-untyped-call]
        kept = self._kept()
        if kept is not None and channels and kept["channels"] is channels:
            kept["buffer"][:0] = left
            self._bound_replay(kept, node, session)

    def _bound_replay(self, kept: dict[str, Any], node: Any, session: Any) -> None:
        """jupyter_server now keeps every message for the client that reconnects, without a
        bound: keep them the same way, counted, and pause the kernel past the bound."""
        buffer: list[tuple[str, list[bytes]]] = kept["buffer"]
        limit, key = self.max_replay_bytes, f"replay-{self.kernel_id}"
        state = kept[REPLAY] = {"bytes": sum(len(p) for _, m in buffer for p in m), "over": False}
        log = self.log

        def count(size: int) -> None:
            state["bytes"] += size
            if state["bytes"] > limit and not state["over"]:
                state["over"] = True
                log.info("kept %d bytes for kernel %s's client: pausing it", limit, key[7:])
                relay.hold(node, session, key)

        def keep(channel: str, parts: list[bytes]) -> None:
            buffer.append((channel, parts))
            count(sum(len(p) for p in parts))

        for channel, stream in kept["channels"].items():
            stream.on_recv(partial(keep, channel))
        count(0)  # already over with what was left unwritten: pause now

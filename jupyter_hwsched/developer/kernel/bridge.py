"""Local ZMQ kernel sockets in front of a kernel on a node agent.

Jupyter clients on the developer's machine talk ZMQ to the ports of a connection file. The
bridge binds those ports and relays every message to the node agent's kernel channels
websocket and back, re-signing with the local connection key. Replies go back to the client
that asked (ROUTER identities are remembered by message id); iopub is published to all.
A ``shutdown_request`` is handed to ``on_shutdown`` instead of the remote kernel, so that
the provisioner decides between a restart in place and a release.

The websocket speaks jupyter_server's binary subprotocol (``v1.kernel.websocket.jupyter.org``):
a message travels as its ZMQ frames (header, parent header, metadata, content, buffers) behind
a table of offsets, and neither side parses or re-encodes what it only passes on. The bridge
checks each client message's signature, reads its header (and a reply's parent header, to
route it) and signs the same frames again with the local key; the agent signs them with the
kernel's. Measured with ``benchmarks/kernel_roundtrip.py`` (medians of four runs on a shared
two-CPU machine): an empty cell took 10.6 ms with JSON beside 6.2 ms on a local kernel (1.71),
9.0 ms beside 5.7 ms (1.59) without it. Passing the kernel's messages on without a future per
send, with the agent's own cheaper sends and activity watcher (agent/kernels.py): 7.6 ms beside
5.3 ms (1.41 to 1.47).

What remains is the two processes the messages pass through. Timed per hop on the kernel's
idle status (medians of 300 cells): kernel to agent 0.79 ms (a local client's own wake-up
takes as long), the agent's work 0.17, agent to bridge 0.37, the bridge's work 0.06, bridge
to client 0.58. Each process on the way costs about half a millisecond of wake-up on this
two-CPU machine, each way; a ratio of 1.2 needs one of them gone from the path.

Later measurements (per-thread CPU from /proc, and py-spy) say the path is short of CPU rather
than slow to wake: with every process pinned to one CPU the remote cell took longer, not less
(7.45 ms beside 4.37), and per remote cell the agent's loop spends 1.3-1.9 ms of CPU on five
messages. In a session's first seconds the node cache's copying threads share that CPU (the
agent then used 7.6 ms a cell, and the round trip was 9.5 ms beside 5.9). Two ways to drop a
hop were tried and measured: the bridge's sockets in its client's own ZMQ context (one I/O
thread for both ends; 1.43-1.53 against 1.48-1.52, within the noise), and, for a front end
that reaches the kernel through jupyter_server (JupyterLab), passing its websocket frames
straight to the agent's websocket with no ZMQ hop in between (5.5-5.7 ms beside 5.7 ms through
the bridge; the ratio moved mostly with the local figure). Neither was kept.

CPU per empty cell, read from /proc over 600 cells (1.20-1.30 remote / local in that run): the
kernel 3.0-3.3 ms either way, the client 1.5-1.7 ms, and for the remote kernel the bridge in the
client's process 1.2-1.3 ms more and the agent 1.3-1.75 ms; about a third of the two CPUs stays
idle, so the extra time is these two processes' work on the path, about 0.25 ms a message.
Two ways to cut the event-loop turns per message were measured and not kept, as neither moved
that CPU or the round trip: the agent reading every waiting message of a kernel socket at one
wake-up (pyzmq's ZMQStream reads one per turn of the loop), and this bridge taking the kernel's
messages from tornado's callback rather than one awaited ``read_message`` each. For scale, a
bare ZMQ ping-pong between two processes here takes 0.07 ms (0.2 ms with a pause between
pings), a bare TCP one 0.02 ms (0.1): the hops themselves are cheap, the Python around them
is not. Two more placements made no difference when compared in one run (two remote kernels
and a local one, cells alternating, 300 each): the agent passing a client the iopub messages
its activity watcher reads, rather than each client having a subscription of its own (6.45
beside 6.45 ms, 6.85 beside 6.81), and this bridge in a process of its own, as the launcher runs
it for other front ends, rather than in its client's (7.61 beside 7.66, 7.46 beside 7.17).
Reaching 1.2 looks to need the relays' per-message work out of Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError

from jupyter_hwsched.protocol.errors import ForbiddenError, UnavailableError
from jupyter_hwsched.protocol.version import __version__
from jupyter_hwsched.protocol.websocket import open_websocket

log = logging.getLogger(__name__)

ShutdownHandler = Callable[[dict[str, Any]], Awaitable[None]]
Frames = list[bytes]  # a message's frames after the signature: header, parent, metadata, ...
#: jupyter_server's binary kernel websocket protocol: ZMQ frames, not JSON
SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
DELIM = b"<IDS|MSG>"
#: how many passed-on request ids the bridge remembers (their output may come much later)
SENT_KEPT = 10_000

#: what the bridge says of the kernel before the remote one answers for itself
KERNEL_INFO: dict[str, Any] = {
    "status": "ok",
    "protocol_version": "5.3",
    "implementation": "hwsched-remote",
    "implementation_version": __version__,
    "language_info": {
        "name": "python",
        "version": ".".join(map(str, sys.version_info[:3])),
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "nbconvert_exporter": "python",
    },
    "banner": "Remote GPU kernel (jupyter-hwsched): waiting for its GPU",
    "help_links": [],
}


class KernelBridge:
    """``bind()`` serves the connection file's ports at once; ``attach()`` connects them to
    the remote kernel once it exists. In between (the queue, the start on the node) the
    bridge answers ``kernel_info`` itself, hands interrupts to ``on_interrupt`` and holds
    every other request until the kernel is there."""

    def __init__(
        self,
        connection: dict[str, Any],
        on_shutdown: ShutdownHandler,
        reconnect_for: float = 30.0,
        ca_file: str | None = None,
        on_interrupt: ShutdownHandler | None = None,
    ) -> None:
        self.connection = connection
        self.agent_url = ""
        self.ca_file = ca_file
        self.path = ""
        self.secret = ""
        self.on_shutdown = on_shutdown
        self.on_interrupt = on_interrupt
        self.attached = asyncio.Event()
        self.held: list[tuple[str, str, Frames]] = []  # (channel, msg_id, frames) before attach()
        self.waiting = ""  # where the kernel is on its way, for a cell that waits
        self.announced_busy: set[str] = set()  # held requests already said busy for
        #: the requests this bridge passed on, newest last: the node's server nudges the
        #: kernel with kernel_info requests of its own, whose status no client here asked for
        self.sent: OrderedDict[str, None] = OrderedDict()
        key = connection.get("key", b"")
        self.session = Session(
            key=key.encode() if isinstance(key, str) else key,
            signature_scheme=connection.get("signature_scheme", "hmac-sha256"),
        )
        self.context = zmq.asyncio.Context()
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.senders: dict[str, zmq.Socket[bytes]] = {}
        self.routes: dict[str, list[bytes]] = {}  # msg_id -> identities of the asker
        self.tasks: list[asyncio.Task[None]] = []
        self.reader: asyncio.Task[None] | None = None
        self.ws: WebSocketClientConnection | None = None
        self.closed = asyncio.Event()
        self.connected = asyncio.Event()
        self.stopping = False
        self.reconnect_for = reconnect_for
        # activity, for the idle release: requests in flight, and when the last one ended
        self.in_flight: set[str] = set()
        self.last_activity = time.monotonic()
        self.last_request: dict[str, Any] | None = None  # the cell that messages are shown in

    def _bind(self, name: str, kind: int) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        ip = self.connection.get("ip", "127.0.0.1")
        try:
            sock.bind(f"tcp://{ip}:{self.connection[name + '_port']}")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                sock.close()
                raise
            # the port was picked when the kernel was asked for, and the queue can take long:
            # something took it meanwhile. Take another; the kernel manager learns it from
            # the connection info the provisioner returns.
            self.connection[name + "_port"] = sock.bind_to_random_port(f"tcp://{ip}")
        self.sockets[name] = sock
        # the same socket without futures, for what the bridge passes on: a PUB or ROUTER
        # send never waits, and a future per message cost more than the send itself
        self.senders[name] = zmq.Socket.shadow(sock.underlying)
        return sock

    async def _connect(self) -> None:
        # the same session id on every connection: while we are away the node's server keeps
        # the kernel's messages for us, and replays them when we come back
        self.ws = await open_channels(
            self.agent_url,
            f"{self.path}?session_id={self.session.session}",
            self.secret,
            self.ca_file,
        )
        self.connected.set()

    async def _reconnect(self) -> bool:
        """After a dropped connection: try again for ``reconnect_for`` seconds."""
        self.connected.clear()
        if self.ws is not None:
            self.ws.close()  # dropped by the other end; closed here too, or tornado warns
        self.ws = None
        deadline = time.monotonic() + self.reconnect_for
        delay = 0.1
        while not self.stopping and time.monotonic() < deadline:
            try:
                await self._connect()
                log.info("reconnected to the remote kernel")
                return True
            except (UnavailableError, ForbiddenError) as exc:  # not (yet) taken back
                log.warning("reconnecting to the remote kernel: %s", exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        return False

    async def start(self, agent_url: str, kernel_id: str, secret: str) -> None:
        """Connect to the remote kernel, then serve the ports (a kernel that exists)."""
        self._use(agent_url, kernel_id, secret)
        await self._connect()
        self.bind()
        self._attached()

    def bind(self) -> None:
        """Serve the connection file's ports (a kernel still on its way)."""
        for name in ("shell", "control", "stdin"):
            sock = self._bind(name, zmq.ROUTER)
            self.tasks.append(asyncio.create_task(self._from_clients(name, sock)))
        self._bind("iopub", zmq.PUB)
        hb = self._bind("hb", zmq.REP)
        self.tasks.append(asyncio.create_task(self._heartbeat(hb)))

    async def attach(self, agent_url: str, kernel_id: str, secret: str) -> None:
        """Connect the served ports to the remote kernel; pass on what was held."""
        self._use(agent_url, kernel_id, secret)
        await self._connect()
        self._attached()
        held, self.held = self.held, []
        for channel, msg_id, frames in held:
            await self._to_kernel(channel, msg_id, frames)

    def _use(self, agent_url: str, kernel_id: str, secret: str) -> None:
        self.agent_url, self.secret = agent_url, secret
        self.path = f"/api/kernels/{kernel_id}/channels"

    def _attached(self) -> None:
        self.reader = asyncio.create_task(self._from_kernel())
        self.tasks.append(self.reader)
        self.attached.set()

    async def _heartbeat(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            await sock.send_multipart(await sock.recv_multipart())

    async def _from_clients(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        while not self.stopping:
            try:
                frames = await sock.recv_multipart(copy=True)
            except zmq.ZMQError:
                return  # closed by stop()
            try:
                idents, rest = self._verified(frames)
                header = json.loads(rest[0])
                msg_id, kind = header["msg_id"], header["msg_type"]
            except Exception as exc:  # a bad signature or frame: drop it, as a kernel would
                log.warning("dropping a malformed message on %s: %s", channel, exc)
                continue
            self.routes[msg_id] = idents
            if kind == "execute_request":
                self.in_flight.add(msg_id)
                self.last_request = {"header": header}  # the parent of what notify() says
                self.last_activity = time.monotonic()
            elif kind == "shutdown_request":
                await self.on_shutdown(self._message(header, rest))  # may stop this bridge
                continue
            if not self.attached.is_set():
                await self._before_attach(channel, header, rest)
                continue
            await self._to_kernel(channel, msg_id, rest)

    def _verified(self, frames: Frames) -> tuple[Frames, Frames]:
        """A client's message split into its routing identities and its frames from the
        header on, if its signature is the local key's (and not one seen before, as
        ``Session.deserialize`` checks); its content is not parsed."""
        idents, fed = self.session.feed_identities(frames)
        rest = cast(Frames, fed)  # received with copy=True: bytes
        if len(rest) < 5:
            raise ValueError(f"malformed message of {len(rest)} frames")
        signature = rest[0]
        if self.session.auth is not None:
            if not signature:
                raise ValueError("unsigned message")
            if signature in self.session.digest_history:
                raise ValueError("duplicate signature")
            if not hmac.compare_digest(signature, self.session.sign(rest[1:5])):
                raise ValueError("invalid signature")
            self.session._add_digest(signature)
        return list(idents), rest[1:]

    def _message(self, header: dict[str, Any], frames: Frames) -> dict[str, Any]:
        """The whole message, for what the bridge answers or hands on itself."""
        unpack = self.session.unpack
        return {
            "header": header,
            "msg_id": header["msg_id"],
            "msg_type": header["msg_type"],
            "parent_header": unpack(frames[1]),
            "metadata": unpack(frames[2]),
            "content": unpack(frames[3]),
            "buffers": frames[4:],
        }

    async def _before_attach(self, channel: str, header: dict[str, Any], frames: Frames) -> None:
        kind = header["msg_type"]
        msg = self._message(header, frames)
        if kind == "kernel_info_request":
            self.busy_idle(msg, lambda: self.reply(channel, msg, "kernel_info_reply", KERNEL_INFO))
        elif kind == "interrupt_request" and self.on_interrupt is not None:
            self.reply(channel, msg, "interrupt_reply", {"status": "ok"})
            await self.on_interrupt(msg)
        else:
            self.held.append((channel, header["msg_id"], frames))
            if kind == "execute_request":
                # busy now, as a kernel says at once; the remote kernel's own busy for this
                # request is dropped later, so that a client sees one
                iopub = self.sockets["iopub"]
                self.session.send(iopub, "status", {"execution_state": "busy"}, parent=msg)
                self.announced_busy.add(msg["header"]["msg_id"])
                if self.waiting:
                    self.notify(self.waiting)

    def busy_idle(self, parent: dict[str, Any], between: Callable[[], None]) -> None:
        """What a kernel publishes around a reply: busy, the reply, idle."""
        iopub = self.sockets["iopub"]
        self.session.send(iopub, "status", {"execution_state": "busy"}, parent=parent)
        between()
        self.session.send(iopub, "status", {"execution_state": "idle"}, parent=parent)

    async def _to_kernel(self, channel: str, msg_id: str, frames: Frames) -> None:
        data = frame_v1(channel, frames)
        sent = self.sent
        sent[msg_id] = None
        if len(sent) > SENT_KEPT:
            sent.popitem(last=False)
        for _ in range(2):  # once more after a reconnect
            if not self.connected.is_set():
                try:
                    await asyncio.wait_for(self.connected.wait(), self.reconnect_for)
                except asyncio.TimeoutError:
                    return
            try:
                assert self.ws is not None
                await self.ws.write_message(data, binary=True)
                return
            except WebSocketClosedError:
                await asyncio.sleep(0.1)

    def idle_for(self) -> float:
        """Seconds with no execution in flight (0 while a cell runs, however silent)."""
        return 0.0 if self.in_flight else time.monotonic() - self.last_activity

    def notify(self, text: str, state: str | None = None) -> None:
        """Tell the notebook: a line in the output area of the last cell, and a status."""
        parent = self.last_request or {}
        if "iopub" not in self.sockets:
            return
        self.session.send(
            self.sockets["iopub"], "stream", {"name": "stderr", "text": text + "\n"}, parent=parent
        )
        if state:
            self.session.send(
                self.sockets["iopub"], "status", {"execution_state": state}, parent=parent
            )

    def reply(
        self, channel: str, parent: dict[str, Any], msg_type: str, content: dict[str, Any]
    ) -> None:
        """Answer a client directly (e.g. a shutdown_reply), as the kernel would."""
        idents = self.routes.pop(parent["header"]["msg_id"], [])
        if msg_type == "execute_reply":
            self.in_flight.discard(parent["header"]["msg_id"])
        self.session.send(self.sockets[channel], msg_type, content, parent=parent, ident=idents)

    async def _from_kernel(self) -> None:
        while True:
            raw = await self.ws.read_message() if self.ws is not None else None
            if raw is None:
                if self.stopping or not await self._reconnect():
                    break
                continue
            if isinstance(raw, str):
                continue  # the binary protocol sends nothing as text
            try:
                channel, frames = unframe_v1(raw)
                parent_header = json.loads(frames[1])
            except Exception as exc:
                log.warning("dropping a malformed message from the kernel: %s", exc)
                continue
            parent_id = parent_header.get("msg_id", "")
            if channel == "iopub":
                if self._announced(parent_header, parent_id, frames):
                    continue
                self._send("iopub", [], frames)
            elif channel in ("shell", "control", "stdin"):
                if channel == "stdin":
                    idents = self.routes.get(parent_id, [])
                else:
                    idents = self.routes.pop(parent_id, [])
                    if parent_id in self.in_flight and _kind(frames) == "execute_reply":
                        self.in_flight.discard(parent_id)
                        self.last_activity = time.monotonic()
                self._send(channel, idents, frames)
        self.closed.set()

    def _send(self, channel: str, idents: Frames, frames: Frames) -> None:
        """The kernel's frames to the local clients, signed with the local key."""
        signature = self.session.sign(frames[:4])
        self.senders[channel].send_multipart([*idents, DELIM, signature, *frames], copy=False)

    def _announced(self, parent_header: dict[str, Any], parent: str, frames: Frames) -> bool:
        """Output not for this bridge's clients: the remote kernel's busy for a request the
        bridge already said busy for, or the status the node's server causes when it nudges
        the kernel with a kernel_info_request of its own."""
        if not parent:
            return False
        if parent_header.get("msg_type") == "kernel_info_request" and parent not in self.sent:
            return True
        if (
            parent in self.announced_busy
            and _kind(frames) == "status"
            and json.loads(frames[3]).get("execution_state") == "busy"
        ):
            self.announced_busy.discard(parent)
            return True
        return False

    async def stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            self.ws.close()  # then let the reader see the close, so the socket really shuts
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                if self.reader is not None:
                    await asyncio.wait_for(asyncio.shield(self.reader), 2.0)
        me = asyncio.current_task()
        others = [task for task in self.tasks if task is not me]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        self.senders.clear()  # shadows: closed with the sockets they shadow
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.sockets.clear()
        self.context.term()
        self.closed.set()


def _kind(frames: Frames) -> str:
    kind: str = json.loads(frames[0]).get("msg_type", "")
    return kind


def frame_v1(channel: str, frames: Frames) -> bytes:
    """A message in jupyter_server's binary websocket protocol: the number of offsets, the
    offsets (of the channel name, of each frame, and of the end), then those, all little
    endian 64-bit."""
    name = channel.encode()
    count = len(frames) + 2
    offsets = [8 * (count + 1), 8 * (count + 1) + len(name)]
    for frame in frames:
        offsets.append(offsets[-1] + len(frame))
    return b"".join([struct.pack(f"<{count + 1}Q", count, *offsets), name, *frames])


def unframe_v1(data: bytes) -> tuple[str, Frames]:
    """The channel and the frames of a message in the binary websocket protocol."""
    (count,) = struct.unpack_from("<Q", data)
    offsets = struct.unpack_from(f"<{count}Q", data, 8)
    channel = data[offsets[0] : offsets[1]].decode()
    frames = [data[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    if len(frames) < 4:
        raise ValueError(f"malformed message of {len(frames)} frames")
    return channel, frames


async def open_channels(
    agent_url: str, path: str, token: str, ca_file: str | None = None
) -> WebSocketClientConnection:
    """The kernel channels websocket in the binary protocol, which the agent must choose."""
    return await open_websocket(agent_url, path, token, ca_file, subprotocol=SUBPROTOCOL)

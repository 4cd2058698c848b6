"""``hwrun`` underneath: a command session whose output streams back over a websocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any, BinaryIO

from tornado.websocket import WebSocketClosedError

from jupyter_hwsched.developer.session import ProgressCallback, RemoteSession
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.errors import ForbiddenError, HwschedError, SessionEnded
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.protocol.websocket import open_websocket

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


async def run_command(
    settings: HwschedClient,
    request: HardwareRequest,
    argv: list[str],
    progress: ProgressCallback,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run ``argv`` on a pooled GPU; stream its output; return its exit code."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    session = RemoteSession(settings, request, "command", argv)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stream = OutputStream(settings, session, progress)

    def forward(signum: int) -> None:
        if session.releasing:
            return  # already cleaning up: let it finish, so that nothing is left behind
        if stream.ws is not None:
            try:
                stream.ws.write_message(json.dumps({"signal": signum}))
                return
            except WebSocketClosedError:
                pass
        if main is not None:
            main.cancel()  # still queued or starting, or the node is away: give up, release

    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, forward, int(sig))
    try:
        placed = await session.acquire(progress)
        assert placed.placement is not None, "an acquired session is placed"
        await stream.connect(placed.placement.agent_url)
        while True:
            message = await stream.next_message()
            if isinstance(message, bytes):
                target = out if message[:1] == b"\x01" else err
                target.write(message[1:])
                target.flush()
                stream.got(len(message) - 1)
            else:
                final = json.loads(message)
                if "ended" in final:
                    raise SessionEnded(f"the session ended: {final['ended']}")
                return int(final["exit"])
    finally:
        stream.close()
        try:
            await session.release()
        finally:
            # only now: a Ctrl-C during the release must not cut it short
            for sig in FORWARDED_SIGNALS:
                loop.remove_signal_handler(sig)


#: seconds a client tries to reach its command's node again after the connection dropped
#: (a node agent that restarts takes its commands back: agent/recovery.py)
RECONNECT = 30.0
#: the client says what it has received at least this often, in bytes; the node's spool
#: of the output keeps what it has not (agent/spool.py)
ACK_BYTES = 256 * 1024


class OutputStream:
    """The connection to the node that carries a command's output, connected again (and the
    output read on from the byte the client got to) when the node's agent restarts."""

    def __init__(
        self, settings: HwschedClient, session: RemoteSession, progress: ProgressCallback
    ) -> None:
        self.settings = settings
        self.session = session
        self.progress = progress  # told "reconnecting", then "resumed" if the node came back
        self.ws: Any = None
        self.agent_url = ""
        self.received = 0  # bytes of output
        self.acked = 0

    @property
    def path(self) -> str:
        return f"/hwsched/sessions/{self.session.id}/command"

    async def connect(self, agent_url: str) -> None:
        self.agent_url = agent_url
        self.ws = await open_websocket(
            agent_url, f"{self.path}?resume=0", self.session.secret, self.settings.ca_file
        )  # resume=0: from the start, and this client says what it received

    def got(self, size: int) -> None:
        self.received += size
        if self.received - self.acked >= ACK_BYTES and self.ws is not None:
            self.acked = self.received
            with contextlib.suppress(WebSocketClosedError):
                self.ws.write_message(json.dumps({"received": self.received}))

    async def next_message(self) -> Any:
        """The node's next message; reconnects where the connection dropped before the
        command ended; SessionEnded once it cannot."""
        resumed = False
        while True:
            message = await _next_message(self.ws, self.session)
            if message is not None:
                return message
            dropped = self.ws
            self.ws = None
            reason = await self.session.why_ended()
            if reason is None and dropped.close_code in (None, 1001):  # the node went away
                self.progress("reconnecting", self.session.record)
                self.ws = await self._reconnect()
                if self.ws is not None:
                    self.progress("resumed", self.session.record)
                    resumed = True
                    continue
                resumed = True
            if reason is None and (resumed or dropped.close_code == 1011):
                # the node is back without the command, or away, or could not run it: it
                # reports why to the scheduler, or the scheduler ends the session for its
                # silence
                reason = await self._reason_within(LAST_WORDS) or dropped.close_reason
            raise SessionEnded(
                f"the session ended: {reason}"
                if reason
                else "the connection to the node closed before the command ended"
            )

    async def _reconnect(self) -> Any:
        """The connection again, reading on from what was received; None if the node did
        not take the command back within RECONNECT seconds, or the session ended."""
        deadline = time.monotonic() + RECONNECT
        while time.monotonic() < deadline and not self.session.ended.is_set():
            try:
                ws = await open_websocket(
                    self.agent_url,
                    f"{self.path}?resume={self.received}",
                    self.session.secret,
                    self.settings.ca_file,
                )
            except ForbiddenError:
                return None  # the node is back and does not know the session: not taken back
            except HwschedError:
                await asyncio.sleep(0.5)  # not back yet
                continue
            self.acked = self.received
            return ws
        return None

    async def _reason_within(self, seconds: float) -> str | None:
        deadline = time.monotonic() + seconds
        while (reason := await self.session.why_ended()) is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.25)
        return reason

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


#: seconds the node's last messages may take to arrive once the scheduler says the session
#: ended (a command that exits ends its session: its exit status is on its way)
LAST_WORDS = 5.0


async def _next_message(ws: Any, session: RemoteSession) -> Any:
    """The node's next message; ``None`` once its connection closed, or once the scheduler
    says the session ended and the node said nothing more (a link to the node that is down
    closes nothing)."""
    reading = asyncio.ensure_future(ws.read_message())
    if not session.ended.is_set():
        ended = asyncio.ensure_future(session.ended.wait())
        try:
            await asyncio.wait({reading, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if reading.done():
            return reading.result()
    try:
        return await asyncio.wait_for(asyncio.shield(reading), LAST_WORDS)
    except asyncio.TimeoutError:
        return None


def exit_status(code: int) -> int:
    return code if 0 <= code < 256 else 255

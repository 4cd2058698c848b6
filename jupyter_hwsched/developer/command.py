"""``hwrun`` underneath: a command session whose output streams back over a websocket."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any, BinaryIO

from tornado.websocket import WebSocketClosedError

from jupyter_hwsched.developer.session import ProgressCallback, RemoteSession
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.errors import SessionEnded
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
    ws: Any = None

    def forward(signum: int) -> None:
        if session.releasing:
            return  # already cleaning up: let it finish, so that nothing is left behind
        if ws is not None:
            try:
                ws.write_message(json.dumps({"signal": signum}))
            except WebSocketClosedError:
                pass
        elif main is not None:
            main.cancel()  # still queued or starting: give up and release

    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, forward, int(sig))
    try:
        placed = await session.acquire(progress)
        assert placed.placement is not None, "an acquired session is placed"
        ws = await open_websocket(
            placed.placement.agent_url,
            f"/hwsched/sessions/{session.id}/command",
            session.secret,
            settings.ca_file,
        )
        while True:
            message = await _next_message(ws, session)
            if message is None:
                reason = await session.why_ended()
                raise SessionEnded(
                    f"the session ended: {reason}"
                    if reason
                    else "the connection to the node closed before the command ended"
                )
            if isinstance(message, bytes):
                target = out if message[:1] == b"\x01" else err
                target.write(message[1:])
                target.flush()
            else:
                final = json.loads(message)
                if "ended" in final:
                    raise SessionEnded(f"the session ended: {final['ended']}")
                return int(final["exit"])
    finally:
        if ws is not None:
            ws.close()
        try:
            await session.release()
        finally:
            # only now: a Ctrl-C during the release must not cut it short
            for sig in FORWARDED_SIGNALS:
                loop.remove_signal_handler(sig)


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

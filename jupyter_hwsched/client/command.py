"""``hwrun`` underneath: a command session whose output streams back over a websocket."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any, BinaryIO

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from ..errors import SessionEnded, UnavailableError
from ..request import HardwareRequest
from .config import HwschedClient
from .session import ProgressCallback, RemoteSession

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
        await session.acquire(progress)
        url = session.info["agent_url"].rstrip("/").replace("http", "ws", 1)
        try:
            ws = await websocket_connect(
                HTTPRequest(
                    f"{url}/hwsched/sessions/{session.id}/command",
                    headers={"Authorization": f"token {session.secret}"},
                )
            )
        except (OSError, HTTPClientError) as exc:
            raise UnavailableError(f"cannot reach the node agent: {exc}") from None
        while True:
            message = await ws.read_message()
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
                code = int(final["exit"])
                progress("exited", {"exit": code})
                return code
    finally:
        if ws is not None:
            ws.close()
        try:
            await session.release()
        finally:
            # only now: a Ctrl-C during the release must not cut it short
            for sig in FORWARDED_SIGNALS:
                loop.remove_signal_handler(sig)


def exit_status(code: int) -> int:
    return code if 0 <= code < 256 else 255

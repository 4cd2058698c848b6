"""A kernel on a node agent, spoken to through the Kernel Gateway API's channels websocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from tornado.websocket import WebSocketClientConnection

from jupyter_hwsched.protocol.errors import SessionEnded, UnavailableError
from jupyter_hwsched.protocol.websocket import open_websocket

MessageCallback = Callable[[dict[str, Any]], None]


class GatewayKernel:
    def __init__(
        self, agent_url: str, token: str, kernel_id: str, ca_file: str | None = None
    ) -> None:
        self.agent_url = agent_url.rstrip("/")
        self.ca_file = ca_file
        self.token = token
        self.kernel_id = kernel_id
        self.session = uuid.uuid4().hex
        self.ws: WebSocketClientConnection | None = None
        self.pending: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed_reason: str | None = None

    def message(
        self, msg_type: str, content: dict[str, Any], channel: str = "shell"
    ) -> dict[str, Any]:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "username": "hwsched",
                "session": self.session,
                "date": datetime.now(timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }

    async def connect(self, timeout: float = 60.0) -> None:
        self.ws = await open_websocket(
            self.agent_url,
            f"/api/kernels/{self.kernel_id}/channels?session_id={self.session}",
            self.token,
            self.ca_file,
        )
        self._reader = asyncio.create_task(self._read())
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        """A kernel that has just started may miss the first request; ask until it answers."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            msg = self.message("kernel_info_request", {})
            queue = self._track(msg)
            await self._send(msg)
            try:
                while True:
                    reply = await asyncio.wait_for(queue.get(), 0.25)
                    if reply["header"]["msg_type"] == "kernel_info_reply":
                        return
            except asyncio.TimeoutError:
                pass
            finally:
                self.pending.pop(msg["header"]["msg_id"], None)
            if asyncio.get_running_loop().time() > deadline:
                raise UnavailableError("the remote kernel did not answer within the start timeout")

    def _track(self, msg: dict[str, Any]) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending[msg["header"]["msg_id"]] = queue
        return queue

    async def _send(self, msg: dict[str, Any]) -> None:
        if self.ws is None or self.closed_reason:
            raise SessionEnded(self.closed_reason or "not connected to the remote kernel")
        await self.ws.write_message(json.dumps(msg))

    async def _read(self) -> None:
        assert self.ws is not None
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                self.closed_reason = "the connection to the remote kernel closed"
                for waiting in self.pending.values():
                    waiting.put_nowait({"header": {"msg_type": "_closed"}, "content": {}})
                return
            msg = json.loads(raw)
            parent = str((msg.get("parent_header") or {}).get("msg_id"))
            queue = self.pending.get(parent)
            if queue is not None:
                queue.put_nowait(msg)

    async def execute(
        self,
        code: str,
        on_iopub: MessageCallback,
        user_expressions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run code; pass each output message on as it comes; return the execute_reply content."""
        msg = self.message(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": user_expressions or {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        queue = self._track(msg)
        await self._send(msg)
        reply: dict[str, Any] | None = None
        idle = False
        try:
            while reply is None or not idle:
                incoming = await queue.get()
                kind = incoming["header"]["msg_type"]
                if kind == "_closed":
                    raise SessionEnded(self.closed_reason or "the remote kernel went away")
                if incoming.get("channel") == "shell" and kind == "execute_reply":
                    reply = incoming["content"]
                elif kind == "status":
                    idle = incoming["content"].get("execution_state") == "idle"
                elif incoming.get("channel") == "iopub":
                    on_iopub(incoming)
        finally:
            self.pending.pop(msg["header"]["msg_id"], None)
        return reply

    async def close(self, timeout: float = 5.0) -> None:
        """Close the websocket and wait (briefly) for the peer's close, so that the socket is
        shut now rather than left to the garbage collector when the event loop ends."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_until_closed(ws), timeout)


async def _until_closed(ws: WebSocketClientConnection) -> None:
    while await ws.read_message() is not None:
        pass  # what arrives between our close and the peer's is not wanted any more

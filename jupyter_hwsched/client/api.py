"""Typed calls to the three services a client talks to."""

from __future__ import annotations

from typing import Any

from ..request import HardwareRequest
from .http import JsonClient


class SchedulerAPI(JsonClient):
    def __init__(self, url: str, token: str) -> None:
        super().__init__(
            url,
            token,
            what="the scheduler",
            hint="is the pool running ('hwsched up')? Check HWSCHED_URL",
        )

    async def submit(
        self, request: HardwareRequest, user: str, host: str, group: str = "", notebook: str = ""
    ) -> dict[str, Any]:
        body = {
            "request": request.to_json(),
            "user": user,
            "host": host,
            "group": group,
            "notebook": notebook,
        }
        result: dict[str, Any] = await self.request("POST", "/api/sessions", body)
        return result

    async def session(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/api/sessions/{session_id}")
        return result

    async def renew(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/api/sessions/{session_id}/renew")
        return result

    async def end(self, session_id: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "DELETE", f"/api/sessions/{session_id}", reason=reason
        )
        return result

    async def pool(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/api/pool")
        return result

    async def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request("GET", "/api/sessions")
        return result


class ShareAPI(JsonClient):
    def __init__(self, socket_path: str) -> None:
        super().__init__(
            "",
            what="the share agent",
            hint="it runs as part of 'hwsched up' or as 'hwsched share'; "
            "check HWSCHED_SHARE_SOCKET",
            unix_socket=socket_path,
        )

    async def open(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/shares", {"session_id": session_id})
        return result

    async def close_share(self, session_id: str) -> None:
        await self.request("DELETE", f"/shares/{session_id}")

    async def shares(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request("GET", "/shares")
        return result


class AgentAPI(JsonClient):
    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token, what="the node agent", timeout=120.0)

    async def start(self, session_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/hwsched/sessions/{session_id}", spec)
        return result

    async def stop(self, session_id: str, reason: str) -> None:
        await self.request("DELETE", f"/hwsched/sessions/{session_id}", reason=reason)

    async def interrupt(self, kernel_id: str) -> None:
        await self.request("POST", f"/api/kernels/{kernel_id}/interrupt")

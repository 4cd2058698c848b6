"""Typed async clients for every call one machine of the pool makes to another.

``SchedulerClient``: the scheduler's REST API, for developers' clients (submit, wait, renew,
end), share agents (is this session placed, and whose is it) and node agents (register,
heartbeat, running). ``AgentClient``: a node agent's own endpoints and the Kernel Gateway
calls a client makes beside the channels. ``ShareClient``: the local share agent's unix socket.
Records go in and come out; JSON exists only inside these methods.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from jupyter_hwsched.protocol.http import Credential, JsonClient
from jupyter_hwsched.protocol.records import (
    Heartbeat,
    HeartbeatReply,
    NodeRegistration,
    SessionRecord,
    SessionSubmission,
    ShareGrant,
    StartSpec,
)


class SchedulerClient(JsonClient):
    def __init__(self, url: str, token: str | Credential, ca_file: str | None = None) -> None:
        super().__init__(
            url,
            token,
            what="the scheduler",
            hint="is the pool running ('hwsched up')? Check HWSCHED_URL",
            ca_file=ca_file,
        )

    async def _session(self, method: str, path: str, body: Any = None) -> SessionRecord:
        return SessionRecord.from_json(await self.request(method, path, body))

    # a developer's client

    async def submit(self, submission: SessionSubmission) -> SessionRecord:
        """Queue a request; the answer carries the session's secret, this once."""
        return await self._session("POST", "/api/sessions", submission.to_json())

    async def session(self, session_id: str) -> SessionRecord:
        return await self._session("GET", f"/api/sessions/{session_id}")

    async def renew(self, session_id: str) -> SessionRecord:
        return await self._session("POST", f"/api/sessions/{session_id}/renew")

    async def end(self, session_id: str, reason: str) -> SessionRecord:
        ended = await self.request("DELETE", f"/api/sessions/{session_id}", reason=reason)
        return SessionRecord.from_json(ended)

    async def pool(self) -> dict[str, Any]:
        """Nodes, GPUs with holders, and the queue: a document for people, shown as it is."""
        result: dict[str, Any] = await self.request("GET", "/api/pool")
        return result

    async def sessions(self) -> list[dict[str, Any]]:
        """The live sessions, as JSON for the front ends that show them."""
        result: list[dict[str, Any]] = await self.request("GET", "/api/sessions")
        return result

    async def usage(self, since_seconds: float) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/api/usage", since=str(since_seconds))
        return result

    # a node agent

    async def register_node(self, name: str, registration: NodeRegistration) -> None:
        await self.request("PUT", f"/api/nodes/{name}", registration.to_json())

    async def heartbeat(self, name: str, heartbeat: Heartbeat) -> HeartbeatReply:
        reply = await self.request("POST", f"/api/nodes/{name}/heartbeat", heartbeat.to_json())
        return HeartbeatReply.from_json(reply)

    async def mark_running(self, session_id: str, node: str) -> SessionRecord:
        return await self._session("POST", f"/api/sessions/{session_id}/running", {"node": node})


class ShareClient(JsonClient):
    def __init__(self, socket_path: str) -> None:
        super().__init__(
            "",
            what="the share agent",
            hint="it runs as part of 'hwsched up' or as 'hwsched share'; "
            "check HWSCHED_SHARE_SOCKET",
            unix_socket=socket_path,
        )

    async def open(
        self, session_id: str, cache_trees: list[str] | None = None, keep_warm: float = 0
    ) -> ShareGrant:
        """A share for the session: the caller's warm lease with its node if one is free,
        else a new one (kept as a lease when the session ends, with ``keep_warm``)."""
        body: dict[str, object] = {"session_id": session_id}
        if cache_trees:
            body["cache_trees"] = cache_trees
        if keep_warm:
            body["keep_warm"] = keep_warm
        grant = await self.request("POST", "/shares", body)
        return ShareGrant.from_json(grant)

    async def leases(self) -> list[dict[str, Any]]:
        """The caller's warm leases."""
        return list(await self.request("GET", "/leases"))

    async def end_lease(self, lease_id: str) -> None:
        """End a warm lease: its share closes, and the node drops what it kept."""
        await self.request("DELETE", f"/leases/{lease_id}")

    async def forget_hot_set(self) -> dict[str, Any]:
        """Forget the caller's hot set; nodes drop their copies when they next serve them."""
        return dict(await self.request("DELETE", "/hot"))

    async def close_share(self, session_id: str, keep: bool = False) -> None:
        """Close the session's share; ``keep``: keep it open for its warm lease instead."""
        if keep:
            await self.request("DELETE", f"/shares/{session_id}", keep="1")
        else:
            await self.request("DELETE", f"/shares/{session_id}")

    async def credential(self) -> str:
        """A credential for the calling OS user, signed by this machine (pools with
        identities)."""
        made = await self.request("POST", "/credentials")
        return str(made["credential"])


class AgentClient(JsonClient):
    def __init__(self, url: str, token: str, ca_file: str | None = None) -> None:
        super().__init__(url, token, what="the node agent", timeout=120.0, ca_file=ca_file)

    async def cache(self) -> dict[str, Any]:
        """The node's cache (the operator's token)."""
        return dict(await self.request("GET", "/hwsched/cache"))

    async def purge_cache(
        self, user: str | None = None, uid: int = -1, host: str = ""
    ) -> dict[str, Any]:
        """Purge the node's cache: everyone's copies, or one user's (the operator's token)."""
        query = f"?user={quote(user)}&uid={uid}&host={quote(host)}" if user else ""
        return dict(await self.request("DELETE", f"/hwsched/cache{query}"))

    async def start(self, session_id: str, spec: StartSpec) -> str | None:
        """Start a placed session on the node; the id of its kernel, for a kernel session."""
        started = await self.request("POST", f"/hwsched/sessions/{session_id}", spec.to_json())
        kernel_id = started.get("kernel_id") if isinstance(started, dict) else None
        return str(kernel_id) if kernel_id else None

    async def stop(self, session_id: str, reason: str, warm: bool = False) -> bool:
        """End the session; ``warm``: keep it warm, as its start asked (agent/warm.py).
        Whether the node kept it."""
        path = f"/hwsched/sessions/{session_id}"
        if warm:
            ended = await self.request("DELETE", path, reason=reason, warm="1")
        else:
            ended = await self.request("DELETE", path, reason=reason)
        return isinstance(ended, dict) and ended.get("kept_warm") is True

    async def interrupt(self, kernel_id: str) -> None:
        await self.request("POST", f"/api/kernels/{kernel_id}/interrupt")

    async def restart(self, kernel_id: str) -> None:
        """A new kernel process in the same container, on the same GPUs."""
        await self.request("POST", f"/api/kernels/{kernel_id}/restart")

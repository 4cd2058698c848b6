"""Opening a websocket to a node agent: the kernel channels, or a command's stream."""

from __future__ import annotations

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_hwsched.protocol.errors import UnavailableError
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION


async def open_websocket(agent_url: str, path: str, token: str) -> WebSocketClientConnection:
    """Connect with the token (a session's secret); a failure says the node is unreachable."""
    url = agent_url.rstrip("/").replace("http", "ws", 1) + path
    request = HTTPRequest(
        url,
        headers={"Authorization": f"token {token}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
        connect_timeout=10,
    )
    try:
        ws = await websocket_connect(request, max_message_size=256 * 1024 * 1024)
    except (OSError, HTTPClientError) as exc:
        raise UnavailableError(f"cannot reach the node agent: {exc}") from None
    # small messages both ways, each waited for: Nagle's delay would add ~40 ms a round trip
    ws.protocol.set_nodelay(True)  # type: ignore[union-attr]
    return ws

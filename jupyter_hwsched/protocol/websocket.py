"""Opening a websocket to a node agent: the kernel channels, or a command's stream."""

from __future__ import annotations

import ssl

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_hwsched.protocol import settings as env
from jupyter_hwsched.protocol.errors import ForbiddenError, UnavailableError
from jupyter_hwsched.protocol.tls import check_url, client_context, not_trusted
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION


async def open_websocket(
    agent_url: str,
    path: str,
    token: str,
    ca_file: str | None = None,
    subprotocol: str | None = None,
) -> WebSocketClientConnection:
    """Connect with the token (a session's secret) over wss where the agent serves https,
    verified against the pool CA; a failure says the node is unreachable. ``subprotocol``:
    one the agent must choose, else the connection is refused."""
    url = agent_url.rstrip("/").replace("http", "ws", 1) + path
    secure = check_url(url, "the node agent")
    request = HTTPRequest(
        url,
        headers={"Authorization": f"token {token}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
        connect_timeout=10,
        ssl_options=client_context(env.ca_file() if ca_file is None else ca_file)
        if secure
        else None,
    )
    try:
        ws = await websocket_connect(
            request,
            max_message_size=256 * 1024 * 1024,
            subprotocols=[subprotocol] if subprotocol else None,
        )
    except ssl.SSLCertVerificationError as exc:
        raise not_trusted("the node agent", agent_url, exc) from None
    except HTTPClientError as exc:
        if exc.code == 403:  # up, and the token is not one it knows (no such session there)
            raise ForbiddenError(f"the node agent refused the connection: {exc}") from None
        raise UnavailableError(f"cannot reach the node agent: {exc}") from None
    except OSError as exc:
        raise UnavailableError(f"cannot reach the node agent: {exc}") from None
    if subprotocol and ws.selected_subprotocol != subprotocol:
        ws.close()
        raise UnavailableError(f"the node agent does not speak {subprotocol}")
    # small messages both ways, each waited for: Nagle's delay would add ~40 ms a round trip
    ws.protocol.set_nodelay(True)  # type: ignore[union-attr]
    return ws

"""The node agent's server limits, on the HTTP server jupyter_server made.

jupyter_server builds its HTTPServer with ``max_body_size`` and ``max_buffer_size`` of 512 MB
and tornado's hour-long header timeout, and the agent has no say in how it is built; so the
agent puts the package's :class:`~jupyter_hwsched.protocol.serving.ConnectionGuard` in front
of it once it exists. Its body limit replaces ``ServerApp.max_body_size``.
"""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.protocol.serving import (
    KIB,
    MIB,
    ConnectionGuard,
    LimitSettings,
    ServerLimits,
    apply_limits,
    size,
)

__all__ = ["AGENT_LIMITS", "LimitSettings", "limit_server"]

#: the agent's defaults: starting a session sends the developer's environment and argv
AGENT_LIMITS = ServerLimits(max_body_bytes=4 * MIB, max_header_bytes=64 * KIB)


def limit_server(serverapp: Any, limits: ServerLimits) -> ConnectionGuard:
    """Apply ``limits`` to the jupyter_server ``serverapp``'s HTTP server, from its next
    connection on (call it before the agent announces itself)."""
    guard = apply_limits(serverapp.http_server, limits)
    serverapp.log.info(
        "server limits: bodies up to %s, headers up to %s within %g s, %d connections",
        size(limits.max_body_bytes),
        size(limits.max_header_bytes),
        limits.header_timeout,
        limits.max_connections,
    )
    return guard

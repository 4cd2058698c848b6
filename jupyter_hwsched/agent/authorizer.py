"""What a token holder may do on a node agent: kernels, nothing else.

The agent is a jupyter_server running as root on the GPU node; its contents, terminals and
sessions APIs would hand out the node itself, and its shutdown would stop every session, so
they are refused.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.authorizer import Authorizer

ALLOWED_RESOURCES = frozenset({"kernels", "kernelspecs", "api"})


class NodeAuthorizer(Authorizer):
    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource in ALLOWED_RESOURCES

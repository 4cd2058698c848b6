"""Who may do what on a node agent.

Two kinds of caller: the pool's operators and the scheduler's peers, with the cluster token
(user ``hwsched-admin``), and a session's own client, with the secret the scheduler gave it
for that session only (user ``session:<id>``), which reaches that session's kernel and
command and nothing else. The agent is a jupyter_server running as root on the GPU node: its
contents, terminals and sessions APIs would hand out the node itself, and its shutdown would
stop every session, so they are refused to everyone.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User

ALLOWED_RESOURCES = frozenset({"kernels", "kernelspecs", "api"})
ADMIN = "hwsched-admin"
SESSION_PREFIX = "session:"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def session_of(user: Any) -> str | None:
    name = getattr(user, "username", "")
    return name[len(SESSION_PREFIX) :] if name.startswith(SESSION_PREFIX) else None


class NodeIdentityProvider(IdentityProvider):
    """The cluster token, or a live session's secret."""

    async def get_user_token(self, handler: Any) -> User | None:
        if await super().get_user_token(handler) is not None:
            return User(username=ADMIN)
        token = self.get_token(handler)
        agent = handler.settings.get("hwsched_node")
        if not token or agent is None:
            return None
        digest = secret_hash(token)
        for session in agent.sessions.values():
            if session.secret_hash and hmac.compare_digest(digest, session.secret_hash):
                return User(username=SESSION_PREFIX + session.id)
        return None


class NodeAuthorizer(Authorizer):
    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if resource not in ALLOWED_RESOURCES:
            return False
        if getattr(user, "username", None) == ADMIN:
            return True
        session_id = session_of(user)
        agent = handler.settings.get("hwsched_node")
        session = agent.sessions.get(session_id) if agent and session_id else None
        kernel_id = handler.path_kwargs.get("kernel_id")
        # a session's client reaches its own kernel (channels, interrupt, restart), no other
        return bool(
            resource == "kernels" and session and kernel_id and kernel_id == session.kernel_id
        )

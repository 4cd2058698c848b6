"""Who may do what at the scheduler.

Every request is authenticated first (:class:`Authenticator`): with a pool CA configured, a
credential signed by a developer machine (a user of that machine), a node (that node) or an
operator; the pool token, where one is set, is the operator's. Without a CA the pool runs as
before identities existed: the one token is everything, which suits one machine alone.

Then each action asks here: a session belongs to the user and machine that asked for it, and
only they or an operator may end, renew or read it in full; the node it is placed on may read
it, report it running and end it; a node registers and beats only as itself.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from jupyter_hwsched.protocol.errors import AuthError, ForbiddenError
from jupyter_hwsched.protocol.handler import check_token
from jupyter_hwsched.protocol.identity import OPERATOR, Principal, Verifier
from jupyter_hwsched.protocol.records import Identity, SessionSubmission
from jupyter_hwsched.scheduler.core import Scheduler
from jupyter_hwsched.scheduler.model import Session

#: what everyone may see of another user's session: enough for the pool's view
#: what another user may see of a session: what squeue shows everyone, no more
PUBLIC_FIELDS = (
    "id",
    "user",
    "state",
    "node",
    "gpu_ids",
    "created",
    "placed",
    "request",
    "position",
    "waiting_for",
    "estimated_start",
)


class Revocations:
    """Names whose credentials no longer count (``ann@dev-1``, ``dev-1``, ``gpu-3``): the
    configured ones, and those in a file that is read again whenever it changes."""

    def __init__(self, names: Collection[str] = (), path: str = "") -> None:
        self.fixed = frozenset(names)
        self.path = path
        self._mtime: float | None = None
        self._from_file: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        if self.path:
            try:
                mtime = os.stat(self.path).st_mtime
            except FileNotFoundError:
                mtime, self._from_file = None, frozenset()
            if mtime is not None and mtime != self._mtime:
                lines = Path(self.path).read_text().splitlines()
                self._from_file = frozenset(n.strip() for n in lines if n.strip() and n[0] != "#")
            self._mtime = mtime
        return self.fixed | self._from_file


class Authenticator:
    """The credential of a request -> who made it."""

    def __init__(self, token: str, verifier: Verifier | None = None) -> None:
        self.token = token
        self.verifier = verifier

    @property
    def identities(self) -> bool:
        """Whether callers have identities (a pool CA), or all share the one token."""
        return self.verifier is not None

    def __call__(self, credential: str) -> Principal:
        if self.verifier is None:
            if credential.startswith("eyJ") and credential.count(".") == 2:
                raise AuthError(
                    "this scheduler checks no identities (it has no --ca-file), so it takes "
                    "the pool token only: give it the pool CA, or send the token (a node: "
                    "--AgentApp.sign_with_certificate=False)"
                )
            check_token(credential, self.token)
            return OPERATOR
        if not credential:
            raise AuthError(
                "no credential: a client gets one from the share agent on its machine "
                "(HWSCHED_SHARE_SOCKET), a node signs with its certificate, an operator sends "
                "the pool token"
            )
        return self.verifier.verify(credential)


def owner_of(session: Session) -> str:
    return f"{session.user}@{session.host}"


def end_revoked(scheduler: Scheduler, revoked: Collection[str]) -> None:
    """End the live sessions of users, or of machines, whose credentials were revoked."""
    for session in list(scheduler.live.values()):
        if session.owner is not None and (owner_of(session) in revoked or session.host in revoked):
            reason = f"the credential of {owner_of(session)} was revoked by the pool's operator"
            scheduler.end(session.id, reason, drain=True)


def end_unowned(scheduler: Scheduler) -> None:
    """A pool that starts checking identities ends the sessions made before, whose owner
    nobody verified (their users ask again, as themselves)."""
    for session in list(scheduler.live.values()):
        if session.owner is None:
            reason = "the pool now checks who asks: ask for the GPUs again"
            scheduler.end(session.id, reason, drain=True)


def may_manage(who: Principal, session: Session) -> bool:
    """The owner or an operator: end, renew, read in full."""
    return who.operator or who.is_user(session.user, session.host)


def require_manager(who: Principal, session: Session, action: str) -> None:
    if not may_manage(who, session):
        raise ForbiddenError(
            f"{who.label} may not {action} session {session.id}: it belongs to "
            f"{owner_of(session)}, and only its owner or an operator may"
        )


def may_read(who: Principal, session: Session) -> bool:
    """Who sees a session in full: its manager, or the node it is placed on."""
    return may_manage(who, session) or who.is_node(session.node)


def may_read_view(who: Principal, view: dict[str, Any]) -> bool:
    """``may_read`` on a session's view."""
    return who.operator or who.is_user(view["user"], view["host"]) or who.is_node(view.get("node"))


def public_view(view: dict[str, Any]) -> dict[str, Any]:
    """What another user may see of a session."""
    return {key: view[key] for key in PUBLIC_FIELDS if key in view}


def require_node(who: Principal, name: str, action: str) -> None:
    """A node acts only as itself (an operator may stand in)."""
    if not (who.operator or who.is_node(name)):
        raise ForbiddenError(f"{who.label} may not {action} node {name}: only that node may")


def submitter(who: Principal, asked: SessionSubmission, max_priority: int) -> Identity | None:
    """Check a submission against its credential; the verified account the work runs as
    (None where the pool has no identities, or an operator submits for someone). The
    session's machine is the one that vouched for the user, whatever the request says."""
    if who.operator:
        return None
    if who.kind != "user" or who.user is None:
        raise ForbiddenError(f"{who.label} may not ask for GPUs: only users (and operators) may")
    if asked.user != who.name:
        raise ForbiddenError(
            f"you are {who.label}: a session is asked for as yourself, not as {asked.user}"
        )
    if asked.request.priority > max_priority:
        raise ForbiddenError(
            f"--priority {asked.request.priority} is above what {who.label} may ask for "
            f"({max_priority}): ask an operator, or leave it at the default"
        )
    return who.user

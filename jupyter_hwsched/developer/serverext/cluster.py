"""What the signed-in user sees of the pool, and the sessions they may cancel.

The Jupyter server runs as the developer, so "the user" is the server process's own account,
the same name that every session it starts is submitted under.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_hwsched.developer.environment import caller_identity
from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import ForbiddenError, UnavailableError

#: ends a session held by one of this server's kernels; True if one held it
KernelReleaser = Callable[[str], Awaitable[bool]]
#: a client of the scheduler where one is configured now, else None
Locator = Callable[[], SchedulerClient | None]


class ClusterService:
    """The scheduler, seen from one developer's Jupyter server."""

    def __init__(self, locate: Locator, root_dir: str, release_kernel: KernelReleaser):
        self.locate = locate
        self.scheduler: SchedulerClient | None = None
        self.root_dir = os.path.abspath(root_dir)
        self.release_kernel = release_kernel
        self.user = caller_identity().name

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()

    def _api(self) -> SchedulerClient:
        if self.scheduler is None:
            # looked up until found: a pool started after JupyterLab ('hwsched up' beside a
            # running server, a binder) is picked up from its discovery file
            self.scheduler = self.locate()
        if self.scheduler is None:
            raise UnavailableError(
                "no GPU pool is configured for this Jupyter server: start one with 'hwsched up', "
                "or set c.HwschedServerApp.scheduler_url and scheduler_token (or HWSCHED_URL "
                "and HWSCHED_TOKEN) before starting JupyterLab"
            )
        return self.scheduler

    def absolute(self, path: str) -> str:
        """A notebook's path as its kernels know it (JPY_SESSION_NAME)."""
        return os.path.join(self.root_dir, path.strip("/"))

    def notebook_path(self, absolute: str) -> str:
        """A session's notebook as a path JupyterLab knows (relative to the server's root),
        or '' where it lies outside it."""
        if not absolute:
            return ""
        relative = os.path.relpath(absolute, self.root_dir)
        return "" if relative.startswith("..") else relative.replace(os.sep, "/")

    def _mine(self, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            dict(s, notebook_path=self.notebook_path(s.get("notebook", "")))
            for s in sessions
            if s["user"] == self.user
        ]

    async def pool(self) -> dict[str, Any]:
        """Nodes and GPUs with holders, the queue, and this user's live sessions."""
        api = self._api()
        pool, sessions = await asyncio.gather(api.pool(), api.sessions())
        simulated = any(g.get("simulated") for n in pool["nodes"] for g in n["gpus"])
        return dict(pool, user=self.user, mine=self._mine(sessions), simulated=simulated)

    async def sessions(self, path: str | None = None) -> list[dict[str, Any]]:
        """This user's live sessions; with a path, those of that notebook alone."""
        mine = self._mine(await self._api().sessions())
        if path is not None:
            mine = [s for s in mine if s["notebook_path"] == path.strip("/")]
        return mine

    async def cancel(self, session_id: str) -> dict[str, Any]:
        """End one of the user's sessions: through its kernel where a kernel of this server
        holds it (so that its share and bridge close too), else at the scheduler."""
        api = self._api()
        session = await api.session(session_id)
        if session.user != self.user:
            raise ForbiddenError(
                f"session {session_id} belongs to {session.user}, not to {self.user}: "
                "only its owner can cancel it"
            )
        if session.state != "ended" and not await self.release_kernel(session_id):
            await api.end(session_id, f"cancelled by {self.user} in JupyterLab")
        return (await api.session(session_id)).to_json()

"""Warm leases: a developer's container, mount and a ready kernel, kept between sessions.

A session started with ``keep_warm`` seconds, and ended by its own client asking to keep it
warm, is not torn down. The node stops everything that ran in its container, takes its GPUs
back (the device nodes go, see devices.py; the scheduler has them back at once), and keeps
the rest under the share's lease: the share's mount, the cached trees' views, the container,
and for a kernel session a new kernel started in it with no GPU, its ``preload`` modules
imported. The developer's share agent keeps the share open to this node alone while the
lease lives.

The next session of the same developer that the scheduler places here, and whose share
names the lease, runs in what was kept if it asks for the same thing: the same working
``/tmp`` paths, groups and limits (what the container was made with), and cached trees
whose files have not changed since (every entry the views were built from is in the new
manifest, unchanged). It then gets its GPUs bound to the container; a kernel session whose
program, working directory, environment and imports ahead are the kept kernel's gets that
kernel, told its session's variables (``CUDA_VISIBLE_DEVICES``...) before the client sees
it, and any other a new kernel in the kept container. The kernel is kept only if every
module it imported is a file of the cached trees that the last session's manifest names, so
that the next manifest vouches for it: a change on the developer's side is never hidden from
the run by a kernel that imported the file earlier. A container that cannot
serve the session is torn down with its lease, and the session starts cold.

A lease ends at its idle time (``keep_warm`` after the session that used it last), when its
share stops answering (the developer ended it: ``hwsched warm end``), or with the agent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_hwsched.agent.sessions import NodeSession
from jupyter_hwsched.protocol.cache_manifest import (
    MAX_LINKS,
    CacheManifest,
    link_target,
    under,
    warm_key,
)
from jupyter_hwsched.protocol.records import LeaseRecord, StartSpec

#: what a kept kernel is asked to say: the files its modules came from, one per line
MODULE_FILES = (
    "'\\n'.join(sorted({getattr(m, '__file__', None) or ''"
    " for m in list(__import__('sys').modules.values())}))"
)


@dataclass
class WarmLease:
    id: str  # the share's lease: the id of the session it was first opened for
    session: NodeSession  # what is kept: container, mount, views; no GPU, nothing running
    host: str
    expires: float
    kernel_id: str | None = None  # a kernel ready in the container, with no GPU
    #: the kernel's start, under way (awaited by a session that would use it)
    starting: asyncio.Task[None] | None = None
    in_use: str = ""  # the session taking the lease over, while it does
    created: float = field(default_factory=time.time)

    @property
    def user(self) -> str:
        return self.session.spec.user.name

    @property
    def uid(self) -> int:
        return self.session.uid

    def record(self) -> LeaseRecord:
        return LeaseRecord(
            id=self.id,
            user=self.user,
            host=self.host,
            warm_key=warm_key(self.host, self.user),
            expires=self.expires,
            kernel=self.kernel_id is not None,
            in_use=self.in_use,
        )

    def describe(self) -> dict[str, Any]:
        out = self.record().to_json()
        out.update(
            cwd=self.session.spec.cwd,
            container=self.session.container_id,
            kernel_id=self.kernel_id,
            kernel_starting=self.starting is not None and not self.starting.done(),
        )
        return out

    def owned_by(self, host: str, uid: int) -> bool:
        return host == self.host and uid == self.uid

    def mismatch(self, spec: StartSpec, limits: Any) -> str:
        """Why a session asking ``spec`` cannot run in the kept container ("": it can):
        what the container was made with must be the same, and the cached trees' files
        unchanged."""
        kept = self.session.spec
        checks = (
            (spec.shown != kept.shown, "the /tmp paths shown differ"),
            (spec.user.groups != kept.user.groups, "the groups differ"),
            (limits != self.session.limits, "the limits differ"),
        )
        for differs, why in checks:
            if differs:
                return why
        old = kept.share.cache if kept.share else None
        return stale(old, spec.share.cache if spec.share else None)

    def kernel_fits(self, spec: StartSpec) -> bool:
        """Whether the kept kernel is the one the session asks for: the same program, working
        directory, environment and imports ahead."""
        kept = self.session.spec
        return (
            self.kernel_id is not None
            and spec.kind == "kernel"
            and (spec.argv, spec.cwd, spec.env, spec.preload)
            == (kept.argv, kept.cwd, kept.env, kept.preload)
        )


def stale(old: CacheManifest | None, new: CacheManifest | None) -> str:
    """Why views built from ``old`` may not serve a session whose manifest is ``new``: a
    file they hold changed, or the developer asked nodes to forget their copies."""
    if old is None:
        return ""
    if new is None or tuple(new.trees) != tuple(old.trees):
        return "the cached trees differ"
    if new.purge_ns != old.purge_ns:
        return "the developer asked nodes to forget their copies"
    if not set(old.entries) <= set(new.entries):
        return "files of the cached trees changed"
    return ""


def unvalidated(files: str, manifest: CacheManifest | None, trees: tuple[str, ...]) -> list[str]:
    """The module files (one per line) that the next session's manifest cannot vouch for:
    those outside the trees the views serve, or not in ``manifest`` (the one the next
    session's manifest is compared with), so that a change to them would go unseen."""
    entries = {e.path: e for e in manifest.entries} if manifest else {}

    def vouched(path: str) -> bool:
        for _ in range(MAX_LINKS):
            entry = entries.get(path)
            if entry is None or entry.kind not in "fl":
                return False
            if entry.kind == "f":
                return True
            path = link_target(path, entry.target)
        return False

    return [
        f
        for f in files.splitlines()
        if f.startswith("/") and not (under(f, list(trees)) and vouched(f))
    ]

"""The node's cache of developers' read-mostly trees: settings, stores, and each session's use.

``NodeCache.attach`` runs when a session's share is mounted: for each tree the manifest names,
it builds the session's view from the user's store, mounts it over the share read-only, and
starts copying what the store lacks. ``detach`` undoes that before the share is unmounted,
saves the index and evicts down to the bound.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from jupyter_hwsched.agent.cache.beneath import open_beneath
from jupyter_hwsched.agent.cache.fill import Filler, FillStats
from jupyter_hwsched.agent.cache.store import UserStore, store_name
from jupyter_hwsched.agent.cache.view import (
    ViewStats,
    build_view,
    mount_overlay,
    unmount_overlay,
)
from jupyter_hwsched.agent.mount import mounted, mounts_under
from jupyter_hwsched.protocol.cache_manifest import CacheManifest, expand_home
from jupyter_hwsched.protocol.errors import UnavailableError


@dataclass
class SessionCache:
    """What one session uses of the cache."""

    store: UserStore
    directory: Path  # the session's views and their mount points
    #: overlay mount on the node -> the tree's path in the container
    binds: dict[str, str] = field(default_factory=dict)
    views: dict[str, ViewStats] = field(default_factory=dict)
    filler: Filler | None = None
    filled: FillStats | None = None

    def describe(self) -> dict[str, Any]:
        hits = sum(v.hits for v in self.views.values())
        files = sum(v.files for v in self.views.values())
        out: dict[str, Any] = {
            "trees": sorted(self.views),
            "files": files,
            "hits": hits,
            "hit_bytes": sum(v.hit_bytes for v in self.views.values()),
            "opaque_dirs": sum(v.opaque for v in self.views.values()),
        }
        stats = self.filled or (self.filler.stats if self.filler else None)
        if stats is not None:
            out.update(copied=stats.copied, copied_bytes=stats.bytes, copy_failures=stats.failed)
        return out


class NodeCache(LoggingConfigurable):
    """Settings: ``c.NodeCache.max_bytes`` and the rest."""

    enabled = Bool(
        True,
        config=True,
        help="Serve the read-mostly trees a session's manifest names (its Python environment, "
        "/usr) from the node's disk, read-only; off: every file comes through the share.",
    )
    directory = Unicode(
        "", config=True, help="Where the copies live (default: 'cache' in the agent's state_dir)."
    )
    max_bytes = Int(
        20 << 30,
        config=True,
        help="The most bytes of copies on this node, all users together; the least recently "
        "used go first (never one a live session uses).",
    )
    max_file_bytes = Int(2 << 30, config=True, help="Files bigger than this are never copied.")
    never_cache = List(
        Unicode(),
        ["~/.ssh", "~/.gnupg"],
        config=True,
        help="Paths never copied, whatever a manifest says (~ is the developer's home).",
    )
    fill_workers = Int(
        2, config=True, help="Files copied at once for one session (through its share)."
    )
    poll_interval = Float(
        0.5, config=True, help="Seconds between reads of the share's log of opened files."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stores: dict[str, UserStore] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._root: Path | None = None

    def open(self, state_dir: Path) -> None:
        """Load what a previous run of the agent left (the copies survive restarts; the
        views of its sessions do not: :meth:`remove_leftovers`)."""
        self._root = Path(self.directory) if self.directory else state_dir / "cache"
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._root, 0o700)
        for child in sorted(self._root.iterdir()):
            if child.is_dir() and child.name != "views":
                self._store(child.name)

    @property
    def views(self) -> Path:
        """Where sessions' views and their mounts live."""
        return self.root / "views"

    def remove_leftovers(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Unmount and remove the views of sessions a previous agent left, but those of the
        sessions in ``keep`` (taken back: recovery.py); the mounts that would not go."""
        kept = [self.views / name for name in keep]
        stuck = [
            p
            for p in mounts_under(self.views)
            if not any(Path(p).is_relative_to(k) for k in kept) and not unmount_overlay(Path(p))
        ]
        if not stuck and self.views.is_dir():
            for child in self.views.iterdir():
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
        return stuck

    def take_back(
        self, host: str, user: str, uid: int, directory: Path, binds: dict[str, str]
    ) -> SessionCache:
        """What a session an earlier agent started uses of the cache, its views still
        mounted (its copying is not resumed)."""
        missing = [target for target in binds if not mounted(target)]
        if missing:
            raise UnavailableError(f"views no longer mounted: {', '.join(missing)}")
        store = self._store(store_name(host, user, uid))
        return SessionCache(store, directory, dict(binds))

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("NodeCache.open was not called")
        return self._root

    def _count(self, delta: int) -> None:
        with self._lock:
            self._bytes += delta

    def _store(self, name: str) -> UserStore:
        with self._lock:
            store = self._stores.get(name)
        if store is None:
            store = UserStore(self.root / name, self._count)
            with self._lock:
                store = self._stores.setdefault(name, store)
        return store

    def attach(
        self,
        manifest: CacheManifest,
        host: str,
        user: str,
        uid: int,
        home: str,
        mountpoint: Path,
        session_id: str,
        mount_dir: Path | None = None,
    ) -> SessionCache:
        """Views of the manifest's trees over the share mounted at ``mountpoint``. A tree that
        cannot be served this way is served by the share alone, as before; said in the log."""
        store = self._store(store_name(host, user, uid))
        if store.forget_before(manifest.purge_ns):
            self.log.info("forgot the copies of %s on %s, as they asked", user, host)
        # beside the store, on its file system: a view hard-links its copies
        session_dir = self.root / "views" / session_id
        used = SessionCache(store, session_dir)
        never = expand_home(self.never_cache, home)
        missing: list[str] = []
        for n, tree in enumerate(manifest.trees):
            # the views stay beside the store; the trees may be mounted elsewhere (mount_dir:
            # the session's own directory, where a runner that binds as the developer reaches)
            view, target = session_dir / f"view-{n}", (mount_dir or session_dir) / f"tree-{n}"
            try:
                lower = open_beneath(mountpoint, tree, directory=True)
            except OSError as exc:
                self.log.info("not caching %s: %s", tree, exc)
                continue
            try:
                view.mkdir(parents=True)
                stats = build_view(store, manifest, tree, view, never)
                mount_overlay(view, lower, target)
            except OSError as exc:
                self.log.warning("not caching %s: %s", tree, exc)
                continue
            finally:
                os.close(lower)
            used.binds[str(target)] = tree
            used.views[tree] = stats
            missing.extend(e.path for e in stats.missing)
        known = {e.path for e in manifest.entries if e.kind == "f"} - set(missing)
        if used.views:
            used.filler = Filler(
                store,
                mountpoint,
                manifest,
                never,
                known,
                workers=self.fill_workers,
                max_file_bytes=self.max_file_bytes,
                poll_interval=self.poll_interval,
            )
            used.filler.start(missing)
        return used

    def detach(self, used: SessionCache) -> bool:
        """Stop copying and unmount the views (blocking); whether all are gone."""
        if used.filler is not None:
            used.filled = used.filler.stop()
            used.filler = None
            if used.filled.errors:
                self.log.info("copies that failed: %s", "; ".join(used.filled.errors))
        gone = all([unmount_overlay(Path(target)) for target in used.binds])
        if gone:  # the views' links go, so that what they held may be evicted
            shutil.rmtree(used.directory, ignore_errors=True)
        used.store.save()
        self.evict()
        return gone

    def size(self) -> int:
        with self._lock:
            return self._bytes

    def evict(self) -> int:
        """Drop the least recently used copies no live session links until under the bound;
        the bytes freed."""
        if self.size() <= self.max_bytes:
            return 0
        with self._lock:
            stores = list(self._stores.values())
        candidates = sorted(
            ((used, path, store) for store in stores for used, path, _ in store.evictable()),
            key=lambda c: (c[0], c[1]),
        )
        freed = 0
        goal = int(self.max_bytes * 0.9)  # some room, so that eviction is not at every end
        for _used, path, store in candidates:
            if self.size() <= goal:
                break
            freed += store.drop(path)
        for store in stores:
            store.save()
        return freed

    def purge(self, host: str | None = None, user: str | None = None, uid: int = -1) -> int:
        """Remove one user's copies (all, without a user); the bytes freed."""
        with self._lock:
            everyone = user is None
            names = list(self._stores) if everyone else [store_name(host or "", user or "", uid)]
            stores = [self._stores.pop(n) for n in names if n in self._stores]
        freed = sum(store.purge() for store in stores)
        if user is None and self._root is not None:
            for child in self._root.iterdir():
                shutil.rmtree(child, ignore_errors=True)
        return freed

    def warm_keys(self) -> tuple[str, ...]:
        """The developers this node keeps copies for (``warm_key``s), for placement."""
        with self._lock:
            stores = list(self._stores.items())
        return tuple(sorted({name.split("-")[0] for name, store in stores if store.records}))

    def describe(self) -> dict[str, Any]:
        with self._lock:
            stores = len(self._stores)
        return {
            "enabled": self.enabled,
            "bytes": self.size(),
            "max_bytes": self.max_bytes,
            "stores": stores,
        }

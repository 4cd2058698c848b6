"""The developer's hot set: the files runs read through the share, kept on this machine.

The share's SFTP server logs each file it opens. When a share closes, the share agent adds the
files opened for reading to that user's hot set; when the next share opens, it takes a manifest
of the hot set under the session's cached trees (``take_manifest``). The directory of a Python
module read comes whole (every file and link in it, up to ``SIBLING_MAX`` bytes a file),
because an import lists it and stats the sources (``with_python_neighbours``).

``take_manifest`` runs as the user whose share it is (``python -m`` this module, as that user,
when the agent is root), so the manifest names nothing that user could not see.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

from jupyter_hwsched.protocol.cache_manifest import (
    MAX_ENTRIES,
    MAX_LINKS,
    SIBLING_MAX,
    CacheEntry,
    CacheManifest,
    link_target,
    under,
    with_python_neighbours,
)

#: the most paths a user's hot set keeps (the most recently read)
MAX_HOT = 20_000


class HotSets:
    """One file per user (by uid) of the paths its runs read, most recent last."""

    def __init__(self, directory: Path, most: int = MAX_HOT) -> None:
        self.directory = directory
        self.most = most

    def _file(self, uid: int) -> Path:
        return self.directory / f"{int(uid)}.hot"

    def load(self, uid: int) -> list[str]:
        try:
            return [p for p in self._file(uid).read_text().split("\0") if p.startswith("/")]
        except OSError:
            return []

    def record(self, uid: int, paths: list[str]) -> None:
        if not paths:
            return
        kept = dict.fromkeys(p for p in self.load(uid) if p not in set(paths))
        kept.update(dict.fromkeys(paths))
        rows = list(kept)[-self.most :]
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._file(uid).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\0".join(rows))
        os.replace(tmp, self._file(uid))

    def forget(self, uid: int) -> int:
        """Drop the user's hot set and ask every node to drop its copies (the next time it
        serves that user, through the manifest); when, on this machine's clock."""
        self._file(uid).unlink(missing_ok=True)
        now = time.time_ns()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file(uid).with_suffix(".purge").write_text(str(now))
        return now

    def purge_ns(self, uid: int) -> int:
        try:
            return int(self._file(uid).with_suffix(".purge").read_text())
        except (OSError, ValueError):
            return 0


def _entry(path: str, st: os.stat_result, target: str = "", whole: bool = False) -> CacheEntry:
    kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
    return CacheEntry(
        path,
        kind,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        target,
        whole,
    )


def take_manifest(
    hot: list[str], trees: list[str], never: list[str], log: str = "", purge_ns: int = 0
) -> CacheManifest:
    """The manifest of ``hot`` under ``trees``, leaving out whatever lies under ``never``."""
    taken = time.time_ns()
    read, listed = with_python_neighbours(p for p in hot if under(p, trees))
    read = [p for p in read if under(p, trees) and not under(p, never)]
    dirs: dict[str, None] = {}
    # the most recently read first, should the manifest fill up; a directory listed whole
    # counts as read, its parent holding it
    for path in reversed([*read, *(f"{d}/." for d in listed if under(d, trees))]):
        tree = next(t for t in trees if under(path, [t]))
        parent = os.path.dirname(path)
        while under(parent, [tree]) and parent not in dirs:
            dirs[parent] = None
            parent = os.path.dirname(parent)
    entries: dict[str, CacheEntry] = {}
    complete: dict[str, bool] = {}
    subdirs: dict[str, list[str]] = {}
    read_set = set(read)
    for d in dirs:
        if len(entries) >= MAX_ENTRIES:
            break
        try:
            entries[d] = _entry(d, os.lstat(d))
            listing = list(os.scandir(d))
        except OSError:
            entries.pop(d, None)
            continue
        # a Python module's directory is listed whole, within the manifest's bound
        everything = d in listed and len(entries) + len(listing) <= MAX_ENTRIES
        whole = everything  # and it is whole if nothing in it is left out
        subdirs[d] = []
        for item in listing:
            wanted = item.path in read_set or item.path in dirs
            if under(item.path, never) or not (everything or wanted):
                whole = False
                continue
            try:
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    subdirs[d].append(item.path)
                    entries.setdefault(item.path, _entry(item.path, st))
                elif stat.S_ISLNK(st.st_mode):
                    entries[item.path] = _entry(item.path, st, os.readlink(item.path))
                elif stat.S_ISREG(st.st_mode) and (st.st_size <= SIBLING_MAX or wanted):
                    entries[item.path] = _entry(item.path, st)
                else:
                    whole = False
            except OSError:
                whole = False
        complete[d] = whole

    whole_dirs: set[str] = set()
    for d in sorted(complete, key=len, reverse=True):  # a subdirectory before its parent
        if complete[d] and all(s in whole_dirs for s in subdirs.get(d, [])):
            whole_dirs.add(d)
            entries[d] = replace(entries[d], whole=True)
    _add_link_targets(entries, never)
    kept = tuple(entries.values())[:MAX_ENTRIES]
    return CacheManifest(tuple(trees), kept, taken, log, purge_ns)


def _add_link_targets(entries: dict[str, CacheEntry], never: list[str]) -> None:
    """The files the manifest's links lead to, wherever they are (a Python module may be a
    link out of the trees, as Debian's sitecustomize.py is): no node caches a target outside
    the trees, but its entry lets a node tell that what it read through the link is
    unchanged (agent/warm.py)."""
    for entry in [e for e in entries.values() if e.kind == "l"]:
        path, target = entry.path, entry.target
        for _ in range(MAX_LINKS):
            path = link_target(path, target)
            if path in entries or under(path, never) or len(entries) >= MAX_ENTRIES:
                break
            try:
                st = os.lstat(path)
                target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            except OSError:
                break
            if not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                break
            entries[path] = _entry(path, st, target)
            if not target:
                break


def main() -> None:
    """``python -m jupyter_hwsched.developer.share.hotset``: the manifest, taken as the
    calling user, of the request on stdin (``take_manifest``'s arguments, by name)."""
    manifest = take_manifest(**json.load(sys.stdin))
    json.dump(manifest.to_json(), sys.stdout)


if __name__ == "__main__":
    main()

"""A session's view of one cached tree: the store's valid copies over the share, read-only.

The view is a directory the node builds for the session from the manifest: the directories
and links it names, and a hard link to the store's object for every file whose copy is
valid. An overlay mount puts the view over the share's copy of the tree (``lowerdir=view:
share``), so that a file in the view is read from the node's disk and anything else from the
share, as before. A directory the manifest says is whole, and whose files all have valid
copies, is marked opaque: names it lacks are absent without asking the share.

Overlayfs without an upper layer is read-only, and the mount is ``nosuid,nodev``.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_hwsched.agent.cache.store import UserStore
from jupyter_hwsched.protocol.cache_manifest import CacheEntry, CacheManifest, under

OPAQUE = "trusted.overlay.opaque"


@dataclass
class ViewStats:
    files: int = 0  # files the manifest names under the tree
    hits: int = 0  # of which the store had a valid copy
    hit_bytes: int = 0
    opaque: int = 0  # whole directories hidden from the share
    missing: list[CacheEntry] = field(default_factory=list)  # files to copy for next time


def _seconds(ns: int) -> int:
    """What the share shows of a time: whole seconds (SFTP version 3)."""
    return ns - ns % 1_000_000_000


def build_view(
    store: UserStore, manifest: CacheManifest, tree: str, view: Path, never: list[str]
) -> ViewStats:
    """Fill the empty directory ``view`` with the manifest's entries under ``tree``."""
    stats = ViewStats()
    named: dict[str, CacheEntry] = {}
    for entry in manifest.entries:  # the first entry of a path counts, in path order
        if under(entry.path, [tree]):
            named.setdefault(entry.path, entry)
    made: list[CacheEntry] = []
    # only under directories made here: an entry under a link of the manifest's would
    # otherwise be made wherever the link points, on the node
    made_dirs: set[str] = set()
    incomplete: set[str] = set()  # directories with a file that has no valid copy
    for entry in (named[p] for p in sorted(named)):
        parent = os.path.dirname(entry.path)
        if under(entry.path, never):
            incomplete.add(parent)
            continue
        root = entry.path == tree
        if not root and parent not in made_dirs:
            continue  # its directory was not named, or was not made
        target = view if root else view / os.path.relpath(entry.path, tree)
        if entry.kind == "d":
            if not root:
                try:
                    target.mkdir()
                except OSError:
                    continue
            made.append(entry)
            made_dirs.add(entry.path)
        elif entry.kind == "l":
            os.symlink(entry.target, target)
            os.lchown(target, entry.uid, entry.gid)
        else:
            stats.files += 1
            obj = store.valid(entry)
            try:
                if obj is None:
                    raise FileNotFoundError(entry.path)
                os.link(obj, target, follow_symlinks=False)
            except OSError:  # no valid copy, or evicted meanwhile
                stats.missing.append(entry)
                incomplete.add(parent)
                continue
            stats.hits += 1
            stats.hit_bytes += entry.size
    for path in list(incomplete):  # a directory is whole only if all below it is
        while under(path, [tree]) and path != tree:
            path = os.path.dirname(path)
            incomplete.add(path)
    for entry in reversed(made):  # children first: their times are set before the parent's
        target = view if entry.path == tree else view / os.path.relpath(entry.path, tree)
        if entry.whole and entry.path not in incomplete:
            os.setxattr(target, OPAQUE, b"y")
            stats.opaque += 1
        os.chown(target, entry.uid, entry.gid)
        os.chmod(target, stat.S_IMODE(entry.mode) & 0o1777)
        os.utime(target, ns=(_seconds(entry.mtime_ns), _seconds(entry.mtime_ns)))
    return stats


def mount_overlay(view: Path, lower_fd: int, target: Path) -> None:
    """Mount ``view`` over the share's directory open at ``lower_fd`` (opened with
    ``open_beneath``, so no link of the developer's can make it one of the node's) at
    ``target``, read-only."""
    target.mkdir(parents=True, exist_ok=True)
    options = f"ro,nosuid,nodev,lowerdir={view}:/proc/self/fd/{lower_fd}"
    done = subprocess.run(
        ["mount", "-t", "overlay", "-o", options, "hwsched-cache", str(target)],
        capture_output=True,
        text=True,
        pass_fds=(lower_fd,),
    )
    if done.returncode != 0:
        raise OSError(f"overlay mount failed: {done.stderr.strip()}")


def unmount_overlay(target: Path) -> bool:
    """Unmount a view's overlay (lazily if busy); whether it is gone."""
    for args in (["umount", str(target)], ["umount", "-l", str(target)]):
        if subprocess.run(args, capture_output=True).returncode == 0:
            return True
    return not os.path.ismount(target)

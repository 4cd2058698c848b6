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
from jupyter_hwsched.protocol.cache_manifest import CacheEntry, CacheManifest

OPAQUE = "trusted.overlay.opaque"


@dataclass
class ViewStats:
    files: int = 0  # files the manifest names under the tree
    hits: int = 0  # of which the store had a valid copy
    hit_bytes: int = 0
    opaque: int = 0  # whole directories hidden from the share
    missing: list[CacheEntry] = field(default_factory=list)  # files to copy for next time


def in_tree(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


def _seconds(ns: int) -> int:
    """What the share shows of a time: whole seconds (SFTP version 3)."""
    return ns - ns % 1_000_000_000


def build_view(
    store: UserStore, manifest: CacheManifest, tree: str, view: Path, never: list[str]
) -> ViewStats:
    """Fill the empty directory ``view`` with the manifest's entries under ``tree``."""
    stats = ViewStats()
    entries = sorted((e for e in manifest.entries if in_tree(e.path, tree)), key=lambda e: e.path)
    made: list[CacheEntry] = []
    incomplete: set[str] = set()  # directories with a file that has no valid copy
    for entry in entries:
        if any(in_tree(entry.path, n) for n in never):
            incomplete.add(os.path.dirname(entry.path))
            continue
        rel = os.path.relpath(entry.path, tree)
        target = view if rel == "." else view / rel
        if rel != "." and not target.parent.is_dir():
            continue  # its directory was not named, or could not be made
        if entry.kind == "d":
            target.mkdir(exist_ok=True)
            made.append(entry)
        elif entry.kind == "l":
            os.symlink(entry.target, target)
            os.lchown(target, entry.uid, entry.gid)
        else:
            stats.files += 1
            obj = store.valid(entry)
            if obj is None:
                stats.missing.append(entry)
                incomplete.add(os.path.dirname(entry.path))
                continue
            try:
                os.link(obj, target)
            except OSError:  # evicted meanwhile
                stats.missing.append(entry)
                incomplete.add(os.path.dirname(entry.path))
                continue
            stats.hits += 1
            stats.hit_bytes += entry.size
    for path in list(incomplete):  # a directory is whole only if all below it is
        while in_tree(path, tree) and path != tree:
            path = os.path.dirname(path)
            incomplete.add(path)
    for entry in reversed(made):  # children first: their times are set before the parent's
        rel = os.path.relpath(entry.path, tree)
        target = view if rel == "." else view / rel
        if entry.whole and entry.path not in incomplete:
            os.setxattr(target, OPAQUE, b"y")
            stats.opaque += 1
        os.chown(target, entry.uid, entry.gid)
        os.chmod(target, stat.S_IMODE(entry.mode) & 0o1777)
        os.utime(target, ns=(_seconds(entry.mtime_ns), _seconds(entry.mtime_ns)))
    return stats


def mount_overlay(view: Path, lower: Path, target: Path) -> None:
    """Mount ``view`` over ``lower`` at ``target``, read-only."""
    target.mkdir(parents=True, exist_ok=True)
    options = f"ro,nosuid,nodev,lowerdir={view}:{lower}"
    done = subprocess.run(
        ["mount", "-t", "overlay", "-o", options, "hwsched-cache", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise OSError(f"overlay mount of {lower} failed: {done.stderr.strip()}")


def unmount_overlay(target: Path) -> bool:
    """Unmount a view's overlay (lazily if busy); whether it is gone."""
    for args in (["umount", str(target)], ["umount", "-l", str(target)]):
        if subprocess.run(args, capture_output=True).returncode == 0:
            return True
    return not os.path.ismount(target)

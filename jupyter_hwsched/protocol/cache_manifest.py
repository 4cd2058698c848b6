"""What the developer machine says about the files a node may serve from its cache.

The share agent takes a manifest when it opens a share: for each file, link and directory of the
developer's hot set under the session's cached trees, what ``lstat`` says on the developer's
machine. A node serves a cached copy only for a manifest entry whose key matches the copy's, so
the manifest is the one round trip that validates the whole cache at the start of a session.

On the wire the entries are a zlib-compressed JSON list, base64-encoded: a few thousand entries
fit in tens of KiB.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jupyter_hwsched.protocol.errors import RequestError

#: the most entries one manifest may carry
MAX_ENTRIES = 50_000
#: the most bytes its compressed entries may take on the wire
MAX_PACKED = 768 * 1024
KINDS = ("f", "d", "l")

#: in a directory a Python module was read from, the other files come too, up to this size
SIBLING_MAX = 8 * 1024 * 1024

# OpenSSH's sftp-server at -l INFO: open "PATH" flags READ mode 0666
_OPEN = re.compile(r'^open "(.*)" flags ([A-Z,]+) mode \d+$')


def opened_for_reading(log: str) -> list[str]:
    """The paths an sftp-server log says were opened read-only, in order, each once."""
    seen: dict[str, None] = {}
    for line in log.splitlines():
        match = _OPEN.match(line.strip())
        if match and match.group(2) == "READ":
            seen.pop(match.group(1), None)
            seen[match.group(1)] = None
    return list(seen)


def with_python_neighbours(read: Iterable[str]) -> tuple[list[str], set[str]]:
    """The files a run that read ``read`` also needs, and the directories worth listing
    whole. An import opens ``pkg/__pycache__/mod.cpython-311.pyc`` but stats ``pkg/mod.py``,
    and lists ``pkg`` to find its modules: so a ``.pyc`` brings its source, and the directory
    of a Python module read (and its ``__pycache__``) comes whole. Other directories (``bin``,
    ``lib``) bring only what was read."""
    files: dict[str, None] = {}
    whole: set[str] = set()
    for path in read:
        files[path] = None
        directory, name = posixpath.split(path)
        if name.endswith(".pyc") and posixpath.basename(directory) == "__pycache__":
            package = posixpath.dirname(directory)
            files[posixpath.join(package, name.split(".", 1)[0] + ".py")] = None
            whole.update((package, directory))
        elif name.endswith(".py"):
            whole.update((directory, posixpath.join(directory, "__pycache__")))
    return list(files), whole


def warm_key(host: str, user: str) -> str:
    """What a node reports of a developer whose files it keeps (so that placement can prefer
    it for them), and the scheduler computes for a session: not their names."""
    return hashlib.sha256(f"{host}\0{user}".encode()).hexdigest()[:16]


def expand_home(paths: Iterable[str], home: str) -> list[str]:
    """``never_cache`` paths as absolute ones: ``~`` is ``home``."""
    home = home.rstrip("/") or "/"
    return [posixpath.normpath(home + p[1:] if p.startswith("~") else p) for p in paths]


#: the most links followed from one path
MAX_LINKS = 8


def link_target(path: str, target: str) -> str:
    """Where the link at ``path`` whose text is ``target`` points, as an absolute path."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(path), target))


def under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def valid_tree(path: str) -> bool:
    """An absolute, normalised directory path other than ``/``, which overlayfs options and
    Docker's bind syntax can carry (no ``:``, ``,``, ``\\`` or control characters)."""
    return (
        isinstance(path, str)
        and path.startswith("/")
        and path != "/"
        and posixpath.normpath(path) == path
        and not any(c in path for c in ":,\\")
        and all(ord(c) >= 32 for c in path)
        and len(path) <= 4096
    )


@dataclass(frozen=True)
class CacheEntry:
    """One path as the developer's machine sees it. ``key`` changes whenever the file's
    content or metadata may have changed: ``ctime`` moves on every change and cannot be set."""

    path: str
    kind: str  # "f" file, "d" directory, "l" symbolic link
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    mode: int
    uid: int
    gid: int
    target: str = ""  # a link's target
    #: a directory whose whole subtree is in the manifest (the node may then hide the share's
    #: copy of it, so that names absent here are absent, with no round trip)
    whole: bool = False

    @property
    def key(self) -> tuple[int, ...]:
        return (self.size, self.mtime_ns, self.ctime_ns, self.ino, self.mode, self.uid, self.gid)

    def row(self) -> list[Any]:
        return [
            self.path,
            self.kind,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.target,
            int(self.whole),
        ]

    @classmethod
    def from_row(cls, row: Any) -> CacheEntry:
        if not isinstance(row, list) or len(row) != 11:
            raise RequestError("a cache manifest entry must be a list of 11 fields")
        path, kind, *numbers, target, whole = row
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise RequestError("a cache manifest path must be absolute")
        if posixpath.normpath(path) != path:
            raise RequestError(f"cache manifest path {path!r} is not normalised")
        if kind not in KINDS:
            raise RequestError(f"cache manifest kind must be one of {KINDS}")
        if not all(isinstance(n, int) and n >= 0 for n in numbers):
            raise RequestError("cache manifest numbers must be non-negative integers")
        if not isinstance(target, str) or "\x00" in target:
            raise RequestError("a cache manifest link target must be a string")
        size, mtime_ns, ctime_ns, ino, mode, uid, gid = numbers
        return cls(path, kind, size, mtime_ns, ctime_ns, ino, mode, uid, gid, target, bool(whole))


@dataclass(frozen=True)
class CacheManifest:
    """The cached trees of one session and the developer machine's view of its hot set."""

    trees: tuple[str, ...]
    entries: tuple[CacheEntry, ...]
    #: the developer machine's clock when it took the manifest (ns since the epoch)
    taken_ns: int
    #: where, through the share, the node can read the paths this session opens ("": nowhere)
    log: str = ""
    #: when the developer last asked nodes to forget their copies (developer's clock; 0: never)
    purge_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        rows = json.dumps([e.row() for e in self.entries], separators=(",", ":"))
        packed = base64.b64encode(zlib.compress(rows.encode(), 6)).decode()
        return {
            "trees": list(self.trees),
            "taken_ns": self.taken_ns,
            "log": self.log,
            "purge_ns": self.purge_ns,
            "entries": packed,
        }

    @classmethod
    def from_json(cls, data: Any) -> CacheManifest:
        if not isinstance(data, dict):
            raise RequestError("cache must be an object")
        trees = data.get("trees")
        if not isinstance(trees, list) or not all(valid_tree(t) for t in trees):
            raise RequestError(
                "cache trees must be absolute, normalised directories other than /, "
                "without ':', ',' or '\\'"
            )
        packed = data.get("entries", "")
        if not isinstance(packed, str) or len(packed) > MAX_PACKED * 4 // 3 + 4:
            raise RequestError(f"cache entries must be at most {MAX_PACKED} packed bytes")
        try:
            raw = zlib.decompressobj().decompress(base64.b64decode(packed), 64 * MAX_PACKED)
            rows = json.loads(raw) if raw else []
        except (ValueError, zlib.error):
            raise RequestError("cache entries are not packed JSON") from None
        if not isinstance(rows, list) or len(rows) > MAX_ENTRIES:
            raise RequestError(f"a cache manifest holds at most {MAX_ENTRIES} entries")
        taken, purge = data.get("taken_ns"), data.get("purge_ns", 0)
        log = data.get("log", "")
        if not (isinstance(taken, int) and isinstance(purge, int) and min(taken, purge) >= 0):
            raise RequestError("cache taken_ns and purge_ns must be non-negative integers")
        if not isinstance(log, str) or (log and not log.startswith("/")):
            raise RequestError("cache log must be an absolute path or empty")
        entries = tuple(CacheEntry.from_row(r) for r in rows)
        return cls(tuple(trees), entries, taken, log, purge)

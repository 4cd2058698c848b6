"""The node's copies of developers' files, one store per (developer machine, user).

A store is a directory of objects, one per path, with an index: for each path, the key the
developer's machine gave it (see :class:`CacheEntry`), or, for a copy made during a session
before any manifest named it, what the share showed (size, whole-second mtime) and the time
on the developer's clock before which the file must have last changed for the copy to hold.
An object carries the attributes the share showed (mode without set-id bits, owner, mtime), so
that a session's view can hard-link it.

Objects linked into a live session's view (more than one link) are never evicted; the rest go
least recently used first once the node's cache is over its bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_hwsched.protocol.cache_manifest import CacheEntry, warm_key

CHUNK = 1 << 20


def object_name(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


def store_name(host: str, user: str, uid: int) -> str:
    """A store's directory name: whose files it holds, not readable from the name; it
    begins with their ``warm_key``."""
    return f"{warm_key(host, user)}-{int(uid)}"


@dataclass
class Record:
    size: int
    mtime_s: int
    #: the developer's key, once a manifest confirmed the copy; None before
    key: list[int] | None
    #: a copy without a key holds for a file whose ctime (developer's clock) is before this
    before_ns: int
    used: float

    def to_json(self) -> list[Any]:
        return [self.size, self.mtime_s, self.key, self.before_ns, self.used]

    @classmethod
    def from_json(cls, row: list[Any]) -> Record:
        size, mtime_s, key, before_ns, used = row
        return cls(int(size), int(mtime_s), key, int(before_ns), float(used))


class CopyAborted(Exception):
    """The copy was stopped (its session ended) or the file changed while it was copied."""


class UserStore:
    """One (developer machine, user)'s objects and index. Thread-safe."""

    def __init__(self, directory: Path, on_bytes: Callable[[int], None]) -> None:
        self.directory = directory
        self.objects = directory / "objects"
        self.index_file = directory / "index.json"
        self.records: dict[str, Record] = {}
        self.lock = threading.Lock()
        #: one save at a time: sessions that end together save from several threads, and
        #: each writes the same temporary file (and the newest snapshot must land last)
        self._save_lock = threading.Lock()
        self._on_bytes = on_bytes  # the node-wide byte count, told of every change
        self._dirty = False
        #: the developer's last request to forget (their clock), already carried out
        self.purged_ns = 0
        #: purged: its directory is gone
        self.removed = False
        self.objects.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        self._load()

    def _load(self) -> None:
        try:
            saved = json.loads(self.index_file.read_text())
            rows, self.purged_ns = dict(saved["records"]), int(saved["purged_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            rows = {}
        for leftover in self.objects.glob("*.part"):
            leftover.unlink(missing_ok=True)
        for path, row in rows.items():
            try:
                record = Record.from_json(row)
            except (TypeError, ValueError):
                continue
            if self.object_path(path).is_file():
                self.records[path] = record
                self._on_bytes(record.size)
        # copies made after the index was last saved (the agent was killed): unaccounted for
        known = {object_name(path) for path in self.records}
        for leftover in self.objects.iterdir():
            if leftover.name not in known:
                leftover.unlink(missing_ok=True)

    def object_path(self, path: str) -> Path:
        return self.objects / object_name(path)

    def valid(self, entry: CacheEntry) -> Path | None:
        """The object for ``entry`` if the copy is of the file the manifest describes."""
        with self.lock:
            record = self.records.get(entry.path)
            if record is None or entry.kind != "f":
                return None
            if record.key is None:
                unchanged_since = (
                    record.size == entry.size
                    and record.mtime_s == entry.mtime_ns // 1_000_000_000
                    and entry.ctime_ns < record.before_ns
                )
                if not unchanged_since:
                    return None
                record.key = list(entry.key)  # confirmed: from now on, the key decides
                self._dirty = True
            elif record.key != list(entry.key):
                return None
            record.used = time.time()
            return self.object_path(entry.path)

    def put(self, path: str, fd: int, before_ns: int, stop: threading.Event) -> int:
        """Copy the open file ``fd`` (``path`` through the share) as ``path``'s object, and
        close it; the bytes copied. Raises OSError, or CopyAborted when stopped or the file
        changed meanwhile."""
        target = self.object_path(path)
        part = target.with_name(target.name + f".{threading.get_ident()}.part")
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise CopyAborted(f"{path} is not a regular file")
            with open(part, "wb") as out:
                while chunk := os.read(fd, CHUNK):
                    if stop.is_set():
                        raise CopyAborted("the session ended")
                    out.write(chunk)
            after = os.fstat(fd)
            out_size = part.stat().st_size
            if (after.st_size, after.st_mtime, out_size) != (
                before.st_size,
                before.st_mtime,
                before.st_size,
            ):
                raise CopyAborted(f"{path} changed while it was copied")
            os.chown(part, before.st_uid, before.st_gid)
            os.chmod(part, stat.S_IMODE(before.st_mode) & 0o1777)  # no set-id bits
            os.utime(part, ns=(before.st_atime_ns, before.st_mtime_ns))
            with self.lock:
                if self.removed:  # purged meanwhile: its directory and its count are gone
                    raise CopyAborted("the copies were purged")
                old = self.records.pop(path, None)
                os.replace(part, target)
                self.records[path] = Record(
                    before.st_size, int(before.st_mtime), None, before_ns, time.time()
                )
                self._dirty = True
            self._on_bytes(out_size - (old.size if old else 0))
            return out_size
        finally:
            os.close(fd)
            part.unlink(missing_ok=True)

    def evictable(self) -> list[tuple[float, str, int]]:
        """(last use, path, size) of objects no live view links."""
        with self.lock:
            out = []
            for path, record in self.records.items():
                try:
                    if self.object_path(path).stat().st_nlink > 1:
                        continue
                except OSError:
                    pass
                out.append((record.used, path, record.size))
            return out

    def drop(self, path: str) -> int:
        """Remove one object; the bytes freed."""
        with self.lock:
            record = self.records.pop(path, None)
            self.object_path(path).unlink(missing_ok=True)
            self._dirty = True
        if record is None:
            return 0
        self._on_bytes(-record.size)
        return record.size

    def save(self) -> None:
        with self._save_lock:
            with self.lock:
                if not self._dirty:
                    return
                rows = {path: r.to_json() for path, r in self.records.items()}
                saved = {"purged_ns": self.purged_ns, "records": rows}
                self._dirty = False
            tmp = self.index_file.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(saved))
                os.replace(tmp, self.index_file)
            except FileNotFoundError:
                if not self.removed:
                    raise
                # purged meanwhile (the operator's DELETE /hwsched/cache): nothing left to keep

    def forget_before(self, purge_ns: int) -> int:
        """The developer asked, at ``purge_ns``, that nodes forget their copies: drop them
        all, once per request; the bytes freed."""
        if purge_ns <= self.purged_ns:
            return 0
        freed = sum(self.drop(path) for path in list(self.records))
        with self.lock:
            self.purged_ns = purge_ns
            self._dirty = True
        self.save()
        return freed

    def purge(self) -> int:
        """Remove everything; the bytes freed. Views already built keep their links."""
        with self.lock:
            freed = sum(r.size for r in self.records.values())
            self.records.clear()
            self.removed = True  # a session's fill may still hold the store: it saves nothing
            shutil.rmtree(self.directory, ignore_errors=True)
        self._on_bytes(-freed)
        return freed

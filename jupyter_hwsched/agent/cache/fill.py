"""Copying into the store while a session runs, so that the next session reads locally.

Two sources: the manifest's files the store had no valid copy of, and the files the session
opens, which the developer's SFTP server logs where the node can read it through the share
(with the other small files of a directory a Python module came from: an import lists it and
stats its sources). Copies go through the share, as the developer, a few at a time;
they stop, and a half-made copy is dropped, when the session ends.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_hwsched.agent.cache.beneath import OutsideShare, open_beneath
from jupyter_hwsched.agent.cache.store import CopyAborted, UserStore
from jupyter_hwsched.protocol.cache_manifest import (
    SIBLING_MAX,
    CacheManifest,
    opened_for_reading,
    under,
    with_python_neighbours,
)

#: the most of a session's log of opened files that is read (its paths, some 100 bytes each)
MAX_LOG_BYTES = 64 << 20
#: seconds between saves of the store's index while a session copies
SAVE_INTERVAL = 10.0


@dataclass
class FillStats:
    copied: int = 0
    bytes: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the log


def _lowest_priority() -> None:
    """A copying thread yields the CPU to the session's own work (nice 19, this thread only)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass


class Filler:
    """One session's copying, on its own threads."""

    def __init__(
        self,
        store: UserStore,
        mountpoint: Path,
        manifest: CacheManifest,
        never: list[str],
        known: set[str],
        workers: int = 2,
        max_file_bytes: int = 2 << 30,
        poll_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.mountpoint = mountpoint
        self.manifest = manifest
        self.never = never
        self.known = set(known)  # paths with a valid copy, or already asked for
        self.dirs_listed: set[str] = set()
        self.max_file_bytes = max_file_bytes
        self.poll_interval = poll_interval
        self.stop_event = threading.Event()
        self.stats = FillStats()
        self._pool = ThreadPoolExecutor(
            max(1, workers), thread_name_prefix="hwsched-fill", initializer=_lowest_priority
        )
        self._thread = threading.Thread(target=self._watch, name="hwsched-fill-log", daemon=True)
        self._log_offset = 0
        self._lock = threading.Lock()

    def start(self, missing: list[str]) -> None:
        for path in missing:
            self._want(path)
        self._thread.start()

    def stop(self) -> FillStats:
        """Stop copying, drop half-made copies; blocks until the threads are done."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        return self.stats

    def _cacheable(self, path: str) -> bool:
        return under(path, self.manifest.trees) and not under(path, self.never)

    def _want(self, path: str) -> None:
        with self._lock:
            if path in self.known or not self._cacheable(path):
                return
            self.known.add(path)
        self._pool.submit(self._copy, path)

    def _copy(self, path: str) -> None:
        if self.stop_event.is_set():
            return
        try:
            fd = open_beneath(self.mountpoint, path)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_file_bytes:
                os.close(fd)
                return
            copied = self.store.put(path, fd, self.manifest.taken_ns, self.stop_event)
        except (CopyAborted, OutsideShare, FileNotFoundError):  # e.g. a .pyc without source
            return
        except OSError as exc:
            with self._lock:
                self.stats.failed += 1
                if len(self.stats.errors) < 5:
                    self.stats.errors.append(f"{path}: {exc}")
            return
        with self._lock:
            self.stats.copied += 1
            self.stats.bytes += copied

    def _neighbours(self, directory: str) -> None:
        """The other small files of a directory a run read from."""
        if directory in self.dirs_listed or not self._cacheable(directory):
            return
        self.dirs_listed.add(directory)
        try:
            fd = open_beneath(self.mountpoint, directory, directory=True)
        except OSError:
            return
        small = []
        try:
            for item in os.scandir(fd):  # stat before the fd closes: they use it
                st = item.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_size <= SIBLING_MAX:
                    small.append(item.name)
        except OSError:
            return
        finally:
            os.close(fd)
        for name in small:
            self._want(f"{directory.rstrip('/')}/{name}")

    def _read_log(self) -> list[str]:
        if not self.manifest.log or self._log_offset > MAX_LOG_BYTES:
            return []
        try:
            fd = open_beneath(self.mountpoint, self.manifest.log)
        except OSError:
            return []
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            data = os.pread(fd, MAX_LOG_BYTES - self._log_offset, self._log_offset)
        except OSError:
            return []
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1  # whole lines only
        self._log_offset += end
        return opened_for_reading(data[:end].decode(errors="replace"))

    def _watch(self) -> None:
        saved = time.monotonic()
        while not self.stop_event.wait(self.poll_interval):
            if time.monotonic() - saved > SAVE_INTERVAL:  # what an agent killed now keeps
                self.store.save()
                saved = time.monotonic()
            read, listed = with_python_neighbours(
                p for p in self._read_log() if p != self.manifest.log
            )
            for path in read:
                self._want(path)
            for directory in listed:
                self._neighbours(directory)

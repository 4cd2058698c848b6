"""Opening a developer's path under the share's mount point, never leaving it.

The share shows the developer's links as they are (``no_contain_symlinks``), and the node
follows them in its own namespace: ``/opt/env -> /etc`` on the developer's side would be the
node's ``/etc`` to anything on the node that walked the path. The node agent runs as root, so
everything it reads through the share for the cache goes through :func:`open_beneath`, one
component at a time, refusing every link (``O_NOFOLLOW``): what it opens is on the share.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path


class OutsideShare(OSError):
    """The path is not a plain path on the share (a link on the way, or not normalised)."""


def open_beneath(mountpoint: Path, path: str, directory: bool = False) -> int:
    """An fd, read-only, for the developer's absolute ``path`` under ``mountpoint`` (a
    directory if ``directory``). Raises OutsideShare for a link on the way."""
    if not path.startswith("/") or posixpath.normpath(path) != path or "\x00" in path:
        raise OutsideShare(f"{path!r} is not an absolute, normalised path")
    parts = [p for p in path.split("/") if p]
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            if directory or not last:
                flags |= os.O_DIRECTORY
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                # a link: ELOOP, or ENOTDIR where a directory was asked for
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                    os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                ):
                    raise OutsideShare(f"{path} goes through a link") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise

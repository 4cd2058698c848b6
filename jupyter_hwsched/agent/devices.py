"""GPU device nodes given to, and taken from, a container that is already running.

A warm lease keeps a developer's container between sessions with no GPU in it; the next
session binds the GPUs the scheduler gave it. Docker fixes a container's devices when it
creates it, so the agent does what ``--device`` does, from the host:

- the node: ``mknod`` in the container's own ``/dev`` (a tmpfs of the engine's), reached as
  ``/proc/PID/root/dev`` of the container's first process, never by running anything inside
  (its root is the developer's share: nothing there may run as the node's root);
- the permission: a ``devices.allow`` line in the container's cgroup (v1), and
  ``devices.deny`` when the GPU is taken back. Under cgroup v2 the engine's device filter is
  a BPF program the agent does not rewrite: binding a real GPU is refused there, and the
  session starts cold instead.

Simulated GPUs are stand-in nodes of ``/dev/null``'s numbers (``c 1 3``, which every
container may open): what the container can see of them is the same, the cgroup is left as
it is. A device entry is ``HOST:CONTAINER`` (``/dev/null:/dev/nvidia1``) or one path for both.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from jupyter_hwsched.protocol.errors import UnavailableError

#: what every container may open anyway: its numbers are never allowed or denied
ALWAYS_ALLOWED = {(1, 3)}


def split_device(entry: str) -> tuple[str, str]:
    """``HOST:CONTAINER`` or one path for both."""
    host, _, inside = entry.partition(":")
    return host, inside or host


def _numbers(host_path: str) -> tuple[int, int]:
    info = os.stat(host_path)
    if not stat.S_ISCHR(info.st_mode):
        raise UnavailableError(f"{host_path} is not a character device")
    return os.major(info.st_rdev), os.minor(info.st_rdev)


def _dev_dir(pid: int) -> int:
    """The container's /dev, opened from the host without following links."""
    return os.open(f"/proc/{pid}/root/dev", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)


def _name(container_path: str) -> str:
    parent, _, name = container_path.rpartition("/")
    if parent != "/dev" or not name or name in (".", ".."):
        raise UnavailableError(f"{container_path}: a bound device lives directly in /dev")
    return name


def _cgroup_rule(pid: int, verb: str, major: int, minor: int) -> None:
    """``devices.allow`` or ``devices.deny`` of the process's cgroup (v1 only)."""
    if (major, minor) in ALWAYS_ALLOWED:
        return
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "devices" in controllers.split(","):
            target = Path("/sys/fs/cgroup/devices") / path.lstrip("/") / f"devices.{verb}"
            target.write_text(f"c {major}:{minor} rwm\n")
            return
    raise UnavailableError(
        "binding a GPU to a running container needs cgroup v1's device controller; this "
        "node has cgroup v2, so sessions here start cold"
    )


def add_device(pid: int, entry: str) -> None:
    """Give the container of ``pid`` the device ``entry``, readable and writable by all in it
    (what Docker's ``--device`` makes)."""
    host, inside = split_device(entry)
    major, minor = _numbers(host)
    name = _name(inside)
    _cgroup_rule(pid, "allow", major, minor)
    dev = _dev_dir(pid)
    try:
        try:
            os.unlink(name, dir_fd=dev)
        except FileNotFoundError:
            pass
        os.mknod(name, 0o600 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev)
        os.chmod(name, 0o666, dir_fd=dev, follow_symlinks=False)
    finally:
        os.close(dev)


def remove_device(pid: int, entry: str) -> None:
    """Take the device back: its node goes, then its permission."""
    host, inside = split_device(entry)
    major, minor = _numbers(host)
    dev = _dev_dir(pid)
    try:
        os.unlink(_name(inside), dir_fd=dev)
    except FileNotFoundError:
        pass
    finally:
        os.close(dev)
    _cgroup_rule(pid, "deny", major, minor)


def devices_in(pid: int, prefix: str = "nvidia") -> list[str]:
    """The names in the container's /dev that start with ``prefix``."""
    dev = _dev_dir(pid)
    try:
        return sorted(n for n in os.listdir(dev) if n.startswith(prefix))
    finally:
        os.close(dev)

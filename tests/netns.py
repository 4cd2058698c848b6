"""Reaching into a test host's network from this process: a thread that enters it, and the
TCP sockets listening in it.

The network namespace belongs to a thread, so a thread that enters one (``setns``) moves
nothing else of the process; the kernel lists a namespace's sockets under any of its
processes' ``/proc/PID/net``.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hosts import NETNS_DIR, Host

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_TCP_LISTEN = "0A"


def enter(netns: str | Path) -> None:
    """Move the calling thread into a network namespace (a name under /run/netns, or a path)."""
    path = Path(netns) if os.sep in str(netns) else NETNS_DIR / str(netns)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def in_netns(host: Host, call: Callable[[], T]) -> T:
    """Run ``call`` in a thread that has entered ``host``'s network namespace (the network
    namespace is per thread, so nothing else of this process moves)."""
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            enter(host.netns)
            result["value"] = call()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{host.name}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket in the network namespace of ``pid``."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != _TCP_LISTEN:
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            if table == "tcp":
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                address = socket.inet_ntop(socket.AF_INET6, words)
            found.append((address, int(hex_port, 16)))
    return sorted(found)

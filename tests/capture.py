"""A packet capture on the test network: what crosses a wire, as an eavesdropper sees it.

:class:`Capture` opens raw packet sockets (``AF_PACKET``, every protocol) on switch ports of a
:class:`hosts.Network` (each port is the far end of one host's veth, so it carries all of that
host's traffic both ways) from a thread inside the switch's network namespace, and keeps every
frame until it is closed. ``seen(b"...")`` says whether some bytes crossed in the clear.
"""

from __future__ import annotations

import select
import socket
import threading
from pathlib import Path
from types import TracebackType

from hosts import NETNS_DIR, Network
from netns import enter

_ETH_P_ALL = 0x0003
_LIMIT = 512 * 1024 * 1024  # bytes kept at most


def port_of(network: Network, host: str) -> str:
    """The switch port (the veth's far end) of one host, as hosts.py names it."""
    index = list(network.names).index(host) + 1
    return f"p{index}-{host}"[:15]


class Capture:
    """Every frame through some switch ports while open."""

    def __init__(self, network: Network, hosts: list[str]) -> None:
        self.netns = Path(NETNS_DIR) / network.switch
        self.ports = [port_of(network, h) for h in hosts]
        self.frames: list[bytes] = []
        self.size = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        sockets: list[socket.socket] = []
        try:
            enter(self.netns)
            for port in self.ports:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
                sock.bind((port, _ETH_P_ALL))
                sock.setblocking(False)
                sockets.append(sock)
        except BaseException as exc:
            self._error = exc
            for sock in sockets:
                sock.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set() or select.select(sockets, [], [], 0)[0]:
                readable, _, _ = select.select(sockets, [], [], 0.05)
                for sock in readable:
                    try:
                        frame = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if self.size < _LIMIT:
                        self.frames.append(frame)
                        self.size += len(frame)
        finally:
            for sock in sockets:
                sock.close()

    def seen(self, data: bytes) -> bool:
        """Whether ``data`` appeared whole within one frame."""
        return any(data in frame for frame in self.frames)

"""The kernel channels websocket of the node agent, with Nagle's algorithm off.

A cell's messages are small and each is waited for; with Nagle's algorithm a reply can sit
in the socket buffer for a delayed ACK (about 40 ms here) before it leaves. Measured with
``benchmarks/kernel_roundtrip.py``: an empty cell took 48 ms before, 6.6 ms after.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


class NoDelayConnection(ZMQChannelsWebsocketConnection):
    def connect(self) -> Any:
        self.websocket_handler.set_nodelay(True)
        return super().connect()

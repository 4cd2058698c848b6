"""The bridge's side of jupyter_server's binary kernel websocket protocol, without a pool:
its framing is jupyter_server's, and what it passes on is checked as ``Session`` checks it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from jupyter_hwsched.developer.kernel.bridge import KernelBridge, frame_v1, unframe_v1

KEY = b"local-key"


async def no_shutdown(msg: dict[str, Any]) -> None:
    return None


def frames_of(session: Session, msg_type: str, buffers: list[bytes]) -> list[bytes]:
    msg = session.msg(msg_type, {"code": "1 + 1", "text": "é"})
    return [
        session.pack(msg["header"]),
        session.pack(msg["parent_header"]),
        session.pack(msg["metadata"]),
        session.pack(msg["content"]),
        *buffers,
    ]


@pytest.mark.parametrize("buffers", [[], [b"\x00\x01", b""], [bytes(range(256)) * 100]])
def test_framing_is_jupyter_servers(buffers: list[bytes]) -> None:
    frames = frames_of(Session(key=KEY), "execute_request", buffers)
    data = frame_v1("shell", frames)
    assert data == serialize_msg_to_ws_v1(frames, "shell")
    assert unframe_v1(data) == ("shell", frames)
    assert deserialize_msg_from_ws_v1(data) == ("shell", frames)
    iopub = serialize_msg_to_ws_v1(frames, "iopub")
    assert unframe_v1(iopub) == ("iopub", frames)


def test_a_message_short_of_frames_is_refused() -> None:
    with pytest.raises(ValueError):
        unframe_v1(frame_v1("shell", [b"{}", b"{}"]))


def test_client_messages_are_checked_as_session_checks_them() -> None:
    async def main() -> None:
        bridge = KernelBridge({"key": KEY.decode()}, no_shutdown)
        try:
            client = Session(key=KEY)
            frames = frames_of(client, "execute_request", [b"buf"])
            signed = [b"ident", b"<IDS|MSG>", client.sign(frames[:4]), *frames]
            assert bridge._verified(signed) == ([b"ident"], frames)
            with pytest.raises(ValueError, match="duplicate"):
                bridge._verified(signed)  # a replayed message
            other = frames_of(client, "execute_request", [])
            with pytest.raises(ValueError, match="invalid"):
                bridge._verified([b"<IDS|MSG>", Session(key=b"other").sign(other[:4]), *other])
            with pytest.raises(ValueError, match="unsigned"):
                bridge._verified([b"<IDS|MSG>", b"", *other])
            with pytest.raises(ValueError, match="malformed"):
                bridge._verified([b"<IDS|MSG>", b"sig", b"{}"])
            header = client.unpack(frames[0])
            msg = bridge._message(header, frames)
            assert msg["content"] == {"code": "1 + 1", "text": "é"}
            assert msg["msg_type"] == "execute_request" and msg["buffers"] == [b"buf"]
        finally:
            bridge.context.term()

    asyncio.run(main())

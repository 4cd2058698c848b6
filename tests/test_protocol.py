"""The protocol layer: records keep their JSON form, and mixed versions fail with one line.

The version tests speak to a real scheduler process (the ``scheduler`` fixture) the way a node
agent or a client of another release would.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import RequestError, VersionError
from jupyter_hwsched.protocol.records import (
    GpuRecord,
    Heartbeat,
    Identity,
    NodeRegistration,
    Placement,
    SessionRecord,
    ShareGrant,
    StartSpec,
)
from jupyter_hwsched.protocol.request import make_request
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION, check_protocol

GPU = GpuRecord(0, "GPU-0", "A100-80GB", "NVIDIA A100", 80 * 1024**3, False, (1,), 0)


def session(state: str, **extra: Any) -> SessionRecord:
    return SessionRecord(
        id="abc123",
        user="ann",
        group="research",
        host="laptop",
        request=make_request(gpus=1, gpu_type="A100"),
        state=state,
        node=None,
        gpu_ids=[],
        created=1.0,
        lease_expires=31.0,
        **extra,
    )


def test_a_queued_session_has_its_place_and_no_placement() -> None:
    queued = session("queued", position=2, waiting_for="GPUs busy", estimated_start=None)
    wire = queued.to_json()
    assert wire["position"] == 2 and wire["waiting_for"] == "GPUs busy"
    assert "estimated_start" in wire and "agent_url" not in wire and "secret" not in wire
    assert SessionRecord.from_json(json.loads(json.dumps(wire))) == queued


def test_a_placed_session_carries_where_it_runs() -> None:
    placed = session("placed", placement=Placement("http://node:8766", True, (GPU,)))
    placed.node, placed.gpu_ids = "node-3", [0]
    wire = placed.to_json()
    assert "position" not in wire
    assert wire["agent_url"] == "http://node:8766" and wire["gpus"][0]["uuid"] == "GPU-0"
    back = SessionRecord.from_json(json.loads(json.dumps(wire)))
    assert back == placed and back.gpus == (GPU,)


def test_a_start_spec_keeps_share_identity_and_command() -> None:
    spec = StartSpec(
        ShareGrant("10.0.0.5", 2222, "ann", "KEY", "ssh-ed25519 AAAA", "/"),
        Identity("ann", 1000, 1000, "ann", "/home/ann", (1000, 27)),
        "/home/ann/project",
        {"PATH": "/usr/bin"},
        "command",
        ["python", "train.py"],
    )
    assert StartSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"cwd": "/tmp/x"}, "under /tmp"),
        ({"kind": "shell"}, "kind must be"),
        ({"share": {"host": "h"}}, "share must give"),
        ({"user": {"uid": "x"}}, "user must give"),
    ],
)
def test_a_bad_start_spec_says_which_field(body: dict[str, Any], message: str) -> None:
    good = {
        "share": None,
        "user": {"uid": 1, "gid": 1, "name": "ann", "home": "/home/ann"},
        "cwd": "/home/ann",
        "env": {},
        "kind": "kernel",
        "argv": ["python"],
    }
    with pytest.raises(RequestError, match=message):
        StartSpec.from_json({**good, **body})


def test_a_registration_and_a_heartbeat_round_trip() -> None:
    node = NodeRegistration("http://n:1", (GPU,), True, ("fast",), PROTOCOL_VERSION)
    assert NodeRegistration.from_json(node.to_json()) == node
    beat = Heartbeat.from_json({"sessions": ["a"], "stats": {"utilization": {"0": 50}}})
    assert beat.stats.utilization == {"0": 50.0} and beat.stats.memory_used == {}


def test_the_version_line_says_which_side_to_upgrade() -> None:
    with pytest.raises(VersionError) as older:
        check_protocol(PROTOCOL_VERSION - 1, "node gpu-3", "this scheduler")
    assert str(older.value) == (
        f"node gpu-3 speaks protocol {PROTOCOL_VERSION - 1}, this scheduler protocol "
        f"{PROTOCOL_VERSION}: upgrade jupyter-hwsched on node gpu-3 so that both speak the "
        "same protocol"
    )
    with pytest.raises(VersionError, match="upgrade jupyter-hwsched on this scheduler"):
        check_protocol(PROTOCOL_VERSION + 1, "node gpu-3", "this scheduler")
    with pytest.raises(VersionError, match="node gpu-3 speaks no protocol version"):
        check_protocol(None, "node gpu-3", "this scheduler")


def _put_node(url: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{url}/api/nodes/node-old",
        method="PUT",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"token {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_scheduler_refuses_a_node_of_another_protocol(scheduler: tuple[str, str]) -> None:
    url, token = scheduler
    gpus = [GPU.to_json()]
    unversioned = {"url": "http://127.0.0.1:1", "gpus": gpus}
    status, body = _put_node(url, token, unversioned)
    assert status == 426
    assert body["message"].startswith("node node-old speaks no protocol version, this scheduler")
    status, body = _put_node(url, token, {**unversioned, "protocol": PROTOCOL_VERSION + 1})
    assert status == 426
    assert f"node node-old speaks protocol {PROTOCOL_VERSION + 1}" in body["message"]
    assert "upgrade jupyter-hwsched on this scheduler" in body["message"]
    nodes = SchedulerClient(url, token)
    try:
        pool = asyncio.run(nodes.pool())
    finally:
        nodes.close()
    assert "node-old" not in [n["name"] for n in pool["nodes"]]


def test_a_client_of_another_protocol_is_told_to_upgrade(scheduler: tuple[str, str]) -> None:
    url, token = scheduler

    class OlderClient(SchedulerClient):
        async def headers(self) -> dict[str, str]:
            return {**await super().headers(), PROTOCOL_HEADER: str(PROTOCOL_VERSION - 1)}

    async def ask() -> None:
        client = OlderClient(url, token)
        try:
            await client.pool()
        finally:
            client.close()

    with pytest.raises(VersionError, match=r"this client speaks protocol .*upgrade"):
        asyncio.run(ask())


def test_a_scheduler_without_a_ca_tells_a_signed_credential_what_to_do() -> None:
    from jupyter_hwsched.protocol.errors import AuthError
    from jupyter_hwsched.scheduler.access import Authenticator

    with pytest.raises(AuthError, match=r"checks no identities .*sign_with_certificate=False"):
        Authenticator("the-token")("eyJhbGciOiJFUzI1NiJ9.e30.c2ln")
    with pytest.raises(AuthError, match="refused the token"):
        Authenticator("the-token")("another-token")
    assert Authenticator("the-token")("the-token").operator

"""Small parts: simulated GPUs, the caller's environment, the status table."""

from __future__ import annotations

import pytest
import zmq

from jupyter_hwsched.agent.gpus import parse_simulated, short_model
from jupyter_hwsched.developer.environment import caller_env
from jupyter_hwsched.developer.render import render_pool
from jupyter_hwsched.protocol.errors import RequestError


def test_simulated_gpus_are_labelled() -> None:
    found = parse_simulated("2xA100-80GB,1xT4-16GB", "n1")
    assert [g.model for g in found] == ["A100-80GB", "A100-80GB", "T4-16GB"]
    assert [g.index for g in found] == [0, 1, 2]
    assert all(g.simulated and "(simulated)" in g.name for g in found)
    assert found[2].memory == 16 * 1024**3


@pytest.mark.parametrize("spec", ["A100", "2xA100", "0xA100-80GB", "2*A100-80GB", ""])
def test_bad_simulation_specs(spec: str) -> None:
    with pytest.raises(RequestError, match="simulate-gpus"):
        parse_simulated(spec, "n1")


def test_short_model_names() -> None:
    assert short_model("NVIDIA H100 80GB HBM3", 80 * 1024**3) == "H100-80GB"
    assert short_model("NVIDIA A100-SXM4-40GB", 40 * 1024**3) == "A100-40GB"
    assert short_model("Tesla T4", 15 * 1024**3) == "T4-15GB"


def test_caller_env_drops_what_only_makes_sense_locally() -> None:
    env = caller_env(
        {
            "PATH": "/usr/bin",
            "DISPLAY": ":0",
            "SSH_AUTH_SOCK": "/s",
            "JPY_PARENT_PID": "1",
            "HWSCHED_TOKEN": "secret",
            "MY_VAR": "x",
        }
    )
    assert env == {"PATH": "/usr/bin", "MY_VAR": "x"}


def test_status_table_marks_simulated_gpus_and_holders() -> None:
    gpu = {
        "index": 0,
        "model": "A100-80GB",
        "memory": 80 * 1024**3,
        "simulated": True,
        "holder": "ann",
        "session": "s1",
        "since": 100.0,
        "utilization": None,
        "memory_used": 12 * 1024**3 + 300 * 1024**2,
    }
    pool = {
        "time": 220.0,
        "nodes": [{"name": "n1", "up": True, "gpus": [gpu]}],
        "queue": [
            {
                "position": 1,
                "user": "bob",
                "request": {"gpus": 1},
                "created": 200.0,
                "waiting_for": "busy",
            }
        ],
    }
    text = render_pool(pool, me="ann")
    assert "A100-80GB [simulated]" in text and "ann" in text and "2m" in text
    assert "12.3G/80G" in text
    gpu["memory_used"] = 615 * 1024**2
    assert "615M/80G" in render_pool(pool, me="ann")
    assert "1. bob wants 1 GPU(s)" in text
    assert "your sessions: s1 on n1 GPU 0" in text


def test_simulated_nvlink_groups() -> None:
    found = parse_simulated("2xH100-80GB:nvlink,2xH100-80GB:nvlink,1xT4-16GB", "n1")
    assert [g.links for g in found] == [(1,), (0,), (3,), (2,), ()]


def test_bridge_takes_another_port_when_its_port_was_taken_meanwhile() -> None:
    import socket

    from jupyter_hwsched.developer.kernel.bridge import KernelBridge

    async def no_shutdown(msg: dict[str, object]) -> None:
        pass

    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    taken = taker.getsockname()[1]
    connection = {"ip": "127.0.0.1", "key": "k", "shell_port": taken}
    bridge = KernelBridge(connection, no_shutdown)
    try:
        sock = bridge._bind("shell", zmq.ROUTER)
        port = bridge.connection["shell_port"]
        assert port != taken
        assert sock.getsockopt_string(zmq.LAST_ENDPOINT).endswith(f":{port}")
    finally:
        for s in bridge.sockets.values():
            s.close()
        bridge.context.term()
        taker.close()


def test_sshfs_options_keep_their_commas() -> None:
    from jupyter_hwsched.agent.mount import _escape

    assert _escape("ProxyCommand=relay --hosts a,b") == "ProxyCommand=relay --hosts a\\,b"
    assert _escape("IdentityFile=C:\\key") == "IdentityFile=C:\\\\key"
    assert _escape("reconnect") == "reconnect"

"""What a node agent writes down of a session for the agent that starts after it
(agent/recovery.py): read back, it is what was written."""

from __future__ import annotations

import json
from pathlib import Path

from jupyter_hwsched.agent import recovery
from jupyter_hwsched.agent.limits import Limits
from jupyter_hwsched.agent.runner import ContainerSpec


def test_an_environment_is_read_back_as_it_was_made() -> None:
    # a restarted kernel's new sandbox is made from it (bubblewrap): every field counts
    spec = ContainerSpec(
        session_id="s1",
        node="node-a",
        root=Path("/var/lib/hwsched/mnt/s1"),
        scratch=Path("/var/lib/hwsched/sessions/s1/tmp"),
        run_dir=Path("/var/lib/hwsched/sessions/s1/run"),
        uid=1000,
        gid=1000,
        groups=[27, 100],
        devices=["/var/lib/hwsched/gpus/0:/dev/nvidia0"],
        extra_binds={"/usr/lib/libcuda.so.1": "/.hwsched/driver/libcuda.so.1"},
        shown={"/var/lib/hwsched/mnt/s1/tmp/venv": "/tmp/venv"},
        cached={"/var/lib/hwsched/cache/view": "/usr"},
        limits=Limits(memory=2**30, cpus=2.0, pids=64, tmp=2**24),
    )
    written = json.loads(json.dumps(recovery._environment(spec)))
    assert recovery._spec_of(written) == spec
    unlimited = ContainerSpec(
        session_id="s2", node="n", root=Path("/"), scratch=Path("/t"), run_dir=Path("/r"),
        uid=0, gid=0,
    )  # fmt: skip
    assert recovery._spec_of(json.loads(json.dumps(recovery._environment(unlimited)))) == unlimited
    assert recovery._spec_of(None) is None

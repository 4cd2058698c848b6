"""Warm leases without a pool: what the wire carries, when a kept container or kernel may
serve a session, and the placement preference (agent/warm.py; e2e: test_warm_e2e.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_hwsched.agent.warm import stale, unvalidated
from jupyter_hwsched.developer.share.hotset import take_manifest
from jupyter_hwsched.protocol.cache_manifest import CacheManifest, warm_key
from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.records import Heartbeat, Identity, LeaseRecord, StartSpec
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.placement import NodeView, PackPlacement

USER = Identity("dev", 1000, 1000, "dev", "/home/dev")


def spec(**changes: object) -> dict[str, object]:
    body = StartSpec(None, USER, "/home/dev", {}, "kernel", ["python"]).to_json()
    body.update(changes)
    return body


def test_a_start_carries_its_keep_warm_and_imports_ahead_and_refuses_bad_ones() -> None:
    made = StartSpec.from_json(spec(keep_warm=600, preload=["torch", "numpy.linalg"]))
    assert made.keep_warm == 600.0 and made.preload == ("torch", "numpy.linalg")
    assert StartSpec.from_json(StartSpec.from_json(spec()).to_json()).keep_warm == 0.0
    for bad, said in (
        ({"keep_warm": -1}, "keep_warm must be seconds"),
        ({"keep_warm": 10**9}, "keep_warm must be seconds"),
        ({"keep_warm": "10"}, "keep_warm must be seconds"),
        ({"preload": ["os; rm -rf /"]}, "is not a module name"),
        ({"preload": ["a"] * 65}, "at most 64"),
    ):
        with pytest.raises(RequestError, match=said):
            StartSpec.from_json(spec(**bad))


def test_a_heartbeat_carries_the_nodes_leases() -> None:
    lease = LeaseRecord("abc123", "dev", "box", warm_key("box", "dev"), 10.0, True, "")
    beat = Heartbeat.from_json(Heartbeat(("s1",), leases=(lease,)).to_json())
    assert beat.leases == (lease,)
    with pytest.raises(RequestError, match="lease id"):
        Heartbeat.from_json({"sessions": [], "leases": [dict(lease.to_json(), id="../x")]})
    with pytest.raises(RequestError, match="needs id, user"):
        Heartbeat.from_json({"sessions": [], "leases": [{"id": "abc"}]})


def test_placement_prefers_the_node_that_keeps_a_lease_for_the_developer() -> None:
    gpus = [{"index": i, "model": "A100-80GB", "memory": 80 << 30} for i in range(2)]
    key = warm_key("box", "dev")
    nodes = [
        NodeView("a", gpus, {0, 1}, warm=frozenset({key})),
        NodeView("b", gpus, {0, 1}, leased=frozenset({key})),
        NodeView("c", gpus, {0}),
    ]
    request = HardwareRequest(gpus=1)
    policy = PackPlacement()
    assert policy.choose(request, nodes, key)[0] == "b"  # type: ignore[index]
    assert policy.choose(request, nodes, "someone-else")[0] == "c"  # type: ignore[index]
    # a lease is no reason to place where the request does not fit
    assert policy.choose(HardwareRequest(gpus=2), nodes[1:], key)[0] == "b"  # type: ignore[index]
    assert policy.choose(HardwareRequest(gpus=2), nodes[2:], key) is None


def manifest_of(tmp_path: Path) -> CacheManifest:
    tree = str(tmp_path / "env")
    return take_manifest([f"{tree}/lib/mod.py", f"{tree}/lib/linked.py"], [tree], [])


@pytest.fixture
def env_tree(tmp_path: Path) -> Path:
    lib = tmp_path / "env" / "lib"
    lib.mkdir(parents=True)
    (lib / "mod.py").write_text("A = 1\n")
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "site.py").write_text("B = 1\n")
    os.symlink("../../etc/site.py", lib / "linked.py")
    return tmp_path


def test_a_kept_container_serves_only_while_its_files_are_unchanged(env_tree: Path) -> None:
    old = manifest_of(env_tree)
    assert stale(old, manifest_of(env_tree)) == ""
    assert stale(None, None) == ""  # nothing cached: nothing to go stale
    assert stale(old, None) == "the cached trees differ"
    (env_tree / "env" / "lib" / "mod.py").write_text("A = 2\n")
    assert stale(old, manifest_of(env_tree)) == "files of the cached trees changed"
    # a file reached through a link out of the trees counts too
    old = manifest_of(env_tree)
    (env_tree / "etc" / "site.py").write_text("B = 2\n")
    assert stale(old, manifest_of(env_tree)) == "files of the cached trees changed"


def test_a_kept_kernel_only_if_the_manifest_vouches_for_every_module(env_tree: Path) -> None:
    manifest = manifest_of(env_tree)
    lib = env_tree / "env" / "lib"
    trees = (str(env_tree / "env"),)
    files = f"{lib}/mod.py\n{lib}/linked.py\n\n<frozen zipimport>"
    assert unvalidated(files, manifest, trees) == []
    away = [f"{env_tree}/work/mine.py", f"{lib}/unread.py"]
    assert unvalidated("\n".join([files, *away]), manifest, trees) == away
    assert unvalidated(files, None, trees) == [f"{lib}/mod.py", f"{lib}/linked.py"]

""" "Run on GPU" runs through the server extension (pytest-jupyter's in-process server) on the
real pool: a run waits in the queue with its phases visible, and cancelling it there, or
ending it once it holds a GPU, leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from harness import Pool, wait_for

import jupyter_hwsched

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pool(each_runner_pool: Pool) -> Pool:
    """These tests pass with each runner that roots work at the share (Docker, bubblewrap)."""
    return each_runner_pool


@pytest.fixture
def jp_root_dir(workspace: Path) -> Path:
    """The server's notebooks, where the node can see them."""
    return workspace


@pytest.fixture
def jp_server_config(
    clean_pool: Pool, monkeypatch: pytest.MonkeyPatch, jp_data_dir: Path
) -> dict[str, Any]:
    # pytest-jupyter gives the server data directories of its own: install the kernelspec there
    spec = jp_data_dir / "kernels" / "hwsched-remote"
    spec.mkdir(parents=True)
    shutil.copy(
        Path(jupyter_hwsched.__file__).parent / "developer/kernel/resources/kernel.json", spec
    )
    for key in ("HWSCHED_URL", "HWSCHED_TOKEN", "HWSCHED_SHARE_SOCKET"):
        monkeypatch.setenv(key, clean_pool.env[key])  # for the kernels' provisioners
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_hwsched": True}},
        "HwschedServerApp": {"scheduler_url": clean_pool.url, "scheduler_token": clean_pool.token},
    }


async def call(jp_fetch: Any, method: str, *parts: str, body: Any = None) -> Any:
    response = await jp_fetch(
        "hwsched", "api", *parts, method=method, body=None if body is None else json.dumps(body)
    )
    return json.loads(response.body)


async def wait_run(jp_fetch: Any, run_id: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        run = await call(jp_fetch, "GET", "runs", run_id)
        if done(run):
            return dict(run)
        assert loop.time() < deadline, f"the run never got there: {run}"
        await asyncio.sleep(0.2)


def hold_every_gpu(pool: Pool) -> list[str]:
    """Two sessions of another user that hold both GPUs. Under Slurm a session is placed
    when Slurm starts its job, so wait for that: until then the holders queue too."""
    holders = [
        pool.api("POST", "/api/sessions", {"request": {"gpus": 1}, "user": "other", "host": "h"})[
            "id"
        ]
        for _ in range(2)
    ]
    wait_for(lambda: len(pool.held_gpus()) == 2, 60, "the other user's sessions to hold both GPUs")
    return holders


async def test_cancelling_a_queued_run_leaves_nothing(
    jp_fetch: Any, jp_serverapp: Any, clean_pool: Pool
) -> None:
    holders = hold_every_gpu(clean_pool)
    try:
        run = await call(jp_fetch, "POST", "runs", body={"path": "a/train.ipynb", "gpus": 1})
        assert run["state"] == "starting" and run["kernel_name"] == "hwsched-remote"
        queued = await wait_run(jp_fetch, run["id"], lambda r: r["events"])
        assert queued["events"][-1]["phase"] == "queued"
        assert queued["events"][-1]["position"] == 1
        [mine] = [s for s in clean_pool.api("GET", "/api/sessions") if s["user"] != "other"]
        assert mine["notebook"] == str(Path(jp_serverapp.root_dir) / "a" / "train.ipynb")

        ended = await call(jp_fetch, "DELETE", "runs", run["id"])
        assert ended["state"] == "ended" and "cancelled" in ended["error"]
        assert [s["user"] for s in clean_pool.api("GET", "/api/sessions")] == ["other", "other"]
        assert run["id"] not in jp_serverapp.kernel_manager
    finally:
        for session_id in holders:
            clean_pool.api("DELETE", f"/api/sessions/{session_id}")


async def test_a_run_holds_a_gpu_until_it_ends(
    jp_fetch: Any, jp_serverapp: Any, clean_pool: Pool
) -> None:
    run = await call(jp_fetch, "POST", "runs", body={"path": "b.ipynb", "gpus": 1})
    ready = await wait_run(jp_fetch, run["id"], lambda r: r["state"] != "starting")
    assert ready["state"] == "ready", ready
    assert [e["phase"] for e in ready["events"]][-1] == "ready"
    assert run["id"] in jp_serverapp.kernel_manager
    [held] = clean_pool.held_gpus()

    def memory_in_use() -> bool:  # simulated GPUs report the memory of the work on them
        [node] = [n for n in clean_pool.pool()["nodes"] if n["name"] == clean_pool.node]
        used = node["gpus"][held]["memory_used"]
        return used is not None and used > 1024**2

    wait_for(memory_in_use, 30, "the held GPU's memory use in the heartbeats")
    sessions = await call(jp_fetch, "GET", "sessions", body=None)
    assert [s["notebook_path"] for s in sessions] == ["b.ipynb"]

    ended = await call(jp_fetch, "DELETE", "runs", run["id"])
    assert ended["state"] == "ended"
    assert run["id"] not in jp_serverapp.kernel_manager
    wait_for(lambda: clean_pool.held_gpus() == [], 30, "the GPU to go back to the pool")
    code = 0
    try:
        await call(jp_fetch, "GET", "runs", run["id"])
    except Exception as exc:  # tornado's HTTPClientError
        code = getattr(exc, "code", 0)
    assert code == 404


async def test_a_run_that_cannot_be_placed_fails_with_the_reason(jp_fetch: Any) -> None:
    run = await call(
        jp_fetch, "POST", "runs", body={"path": "c.ipynb", "gpus": 1, "gpu_type": "H100"}
    )
    failed = await wait_run(jp_fetch, run["id"], lambda r: r["state"] != "starting")
    assert failed["state"] == "failed"
    assert "H100" in failed["error"]
    await call(jp_fetch, "DELETE", "runs", run["id"])

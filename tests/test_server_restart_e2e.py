"""A Jupyter server restarted while a remote GPU kernel runs takes it over again."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pool, Service, call_json, free_port, wait_for

from jupyter_hwsched.developer.gateway import GatewayKernel

pytestmark = pytest.mark.e2e


def jupyter_server(
    pool: Pool, root: Path, runtime: Path, port: int, token: str, log: Path
) -> Service:
    env = {**pool.env, "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_TOKEN": token}
    service = Service(
        "jupyter-server",
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--ServerApp.root_dir={root}",
        ],
        env,
        log,
    )
    # jupyter_server logs "is running at" before it binds its port: wait until it answers
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(url, token), 120, "the Jupyter server to answer")
    return service


def answers(url: str, token: str) -> bool:
    try:
        call_json(url, "GET", "/api/status", token)
    except OSError:
        return False
    return True


async def run_code(url: str, token: str, kernel_id: str, code: str) -> str:
    """Run code through the Jupyter server's kernel websocket; return what it printed to
    stdout (a warning on stderr is not the cell's output)."""
    kernel = GatewayKernel(url, token, kernel_id)
    await kernel.connect()
    out: list[str] = []

    def on_iopub(msg: dict[str, Any]) -> None:
        if msg["header"]["msg_type"] == "stream" and msg["content"].get("name") == "stdout":
            out.append(msg["content"]["text"])

    try:
        await kernel.execute(code, on_iopub)
    finally:
        await kernel.close()
    return "".join(out)


@pytest.fixture(scope="module")
def long_lease_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    # a server restart takes seconds; the lease must outlast it, as it does by default (30 s)
    pool = Pool(tmp_path_factory.mktemp("restart-pool"), lease=30.0)
    try:
        yield pool
    finally:
        pool.stop()


def test_restarted_server_keeps_the_remote_kernel(long_lease_pool: Pool, tmp_path: Path) -> None:
    clean_pool = long_lease_pool
    root = clean_pool.state / "nb-root"
    root.mkdir()
    runtime = tmp_path / "runtime"
    port, token = free_port(), secrets.token_hex(8)
    url = f"http://127.0.0.1:{port}"
    server = jupyter_server(clean_pool, root, runtime, port, token, tmp_path / "s1.log")
    try:
        kernel = call_json(url, "POST", "/api/kernels", token, {"name": "hwsched-remote"})
        progress = call_json(url, "GET", f"/hwsched/api/kernels/{kernel['id']}/progress", token)
        assert [e["phase"] for e in progress["events"]][-1] == "ready"
        assert asyncio.run(run_code(url, token, kernel["id"], "x = 6 * 7\nprint('set')")) == "set\n"
        held = clean_pool.held_gpus()
        assert held
    finally:
        server.stop()
    # the server is gone; within the lease the remote kernel lives on
    server = jupyter_server(clean_pool, root, runtime, port, token, tmp_path / "s2.log")
    try:
        # the extension takes the kernel over once the server is up
        kernels = wait_for(
            lambda: call_json(url, "GET", "/api/kernels", token), 120, "the kernel to be taken over"
        )
        assert [k["id"] for k in kernels] == [kernel["id"]]
        printed = asyncio.run(run_code(url, token, kernel["id"], "print(x)"))
        log = (tmp_path / "s2.log").read_text(errors="replace")[-3000:]
        assert printed == "42\n", f"printed {printed!r}; server log:\n{log}"
        assert clean_pool.held_gpus() == held
        call_json(url, "DELETE", f"/api/kernels/{kernel['id']}", token)
        wait_for(lambda: not clean_pool.held_gpus(), 30, "the GPU to be released")
    finally:
        server.stop()

"""The node agent's REST API against its own OpenAPI description, with schemathesis: no input
may cause a 5xx, and every response must match the description. A kernel session runs on the
node meanwhile, so that the lists of sessions and kernels hold a real one."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness import Pool

from jupyter_hwsched.developer.session import RemoteSession, kernel_argv
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.openapi.agent import SPEC_PATH
from jupyter_hwsched.protocol.request import HardwareRequest

pytestmark = pytest.mark.e2e

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def agent_url(pool: Pool) -> str:
    return f"http://127.0.0.1:{pool.agent_port}"


def agent_log(pool: Pool) -> Path:
    [agent] = [s for s in pool.services if s.name == "agent"]
    return agent.log


def post(pool: Pool, path: str) -> int:
    """A POST with the pool's token; its status."""
    request = urllib.request.Request(
        agent_url(pool) + path, method="POST", headers={"Authorization": f"token {pool.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def test_spec_is_served_without_a_token(pool: Pool) -> None:
    with urllib.request.urlopen(f"{agent_url(pool)}{SPEC_PATH}", timeout=30) as response:
        spec = json.loads(response.read())
    assert spec["openapi"].startswith("3.")
    assert {"/hwsched/sessions/{session_id}", "/api/kernels"} <= set(spec["paths"])
    assert "StartSpec" in spec["components"]["schemas"]


async def schemathesis(url: str, token: str, cwd: Path) -> tuple[int, str]:
    """Its exit status and report; ``cwd`` keeps what it writes (.hypothesis)."""
    proc = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        "run",
        url,
        "--checks",
        CHECKS,
        "-H",
        f"Authorization: token {token}",
        "--max-examples",
        "20",
        "--seed",
        "1",
        "--generation-deterministic",
        "--suppress-health-check",
        "all",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def test_api_matches_its_description(clean_pool: Pool, workspace: Path, tmp_path: Path) -> None:
    log = agent_log(clean_pool)
    before = log.stat().st_size
    settings = HwschedClient(
        url=clean_pool.url, token=clean_pool.token, share_socket=clean_pool.share_socket
    )

    async def scenario() -> tuple[int, str]:
        # the session's client renews its lease on this loop while schemathesis runs
        session = RemoteSession(
            settings, HardwareRequest(gpus=1), "kernel", kernel_argv(), cwd=str(workspace)
        )
        await session.acquire(lambda phase, info: None)
        try:
            # restarts that overlap: one restarts the kernel, the others are told it is busy
            restart = f"/api/kernels/{session.kernel_id}/restart"
            answers = await asyncio.gather(
                *(asyncio.to_thread(post, clean_pool, restart) for _ in range(3))
            )
            assert sorted(answers)[0] == 200 and set(answers) <= {200, 409}, answers
            spec = f"{agent_url(clean_pool)}{SPEC_PATH}"
            return await schemathesis(spec, clean_pool.token, tmp_path)
        finally:
            await session.release()

    code, output = asyncio.run(scenario())
    assert code == 0, output[-6000:]
    with open(log, "rb") as f:
        f.seek(before)
        said = f.read().decode(errors="replace")
    assert "Traceback" not in said, said[-4000:]

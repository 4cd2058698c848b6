"""The server extension's REST API against its own OpenAPI description, with schemathesis,
through a real jupyter_server (pytest-jupyter's, on a loopback port, under a base URL that
needs escaping) and a real scheduler process: no input may cause a 5xx, and every response
must match the description."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import call_json
from tornado.httpclient import AsyncHTTPClient

import jupyter_hwsched
from jupyter_hwsched.protocol.openapi.serverext import SPEC_PATH

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture
def jp_server_config(
    scheduler: tuple[str, str], jp_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    url, token = scheduler
    # the Remote GPU kernelspec, where this server looks, so that a run gets as far as a
    # session the scheduler placed
    spec = jp_data_dir / "kernels" / "hwsched-remote"
    spec.mkdir(parents=True)
    shutil.copy(
        Path(jupyter_hwsched.__file__).parent / "developer/kernel/resources/kernel.json", spec
    )
    monkeypatch.setenv("HWSCHED_URL", url)  # for the kernels' provisioners
    monkeypatch.setenv("HWSCHED_TOKEN", token)
    monkeypatch.delenv("HWSCHED_SHARE_SOCKET", raising=False)
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_hwsched": True}},
        "HwschedServerApp": {"scheduler_url": url, "scheduler_token": token},
    }


@pytest.fixture
def served(jp_serverapp: Any, http_server: Any) -> Any:
    """The server, answering on its loopback port (jp_fetch would ask for this)."""
    return jp_serverapp


def spec_url(port: int, base_url: str) -> str:
    return f"http://127.0.0.1:{port}{base_url.rstrip('/')}{SPEC_PATH}"


async def test_spec_is_served_without_a_token(
    served: Any, jp_http_port: int, jp_base_url: str
) -> None:
    response = await AsyncHTTPClient().fetch(spec_url(jp_http_port, jp_base_url))
    spec = json.loads(response.body)
    assert spec["openapi"].startswith("3.")
    assert "/hwsched/api/runs" in spec["paths"]
    # the paths are the extension's; where the server mounts them is its base URL
    assert spec["servers"] == [{"url": jp_base_url.rstrip("/")}]


async def test_api_matches_its_description(
    served: Any,
    jp_http_port: int,
    jp_base_url: str,
    scheduler: tuple[str, str],
    tmp_path: Path,
) -> None:
    token = served.identity_provider.token
    proc = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        "run",
        spec_url(jp_http_port, jp_base_url),
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
        cwd=tmp_path,  # what it writes (.hypothesis)
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    assert proc.returncode == 0, out.decode(errors="replace")[-6000:]
    # the runs it started got as far as a placed session, and no further (no share agent
    # here, no agent behind the node): each gave its session back, none waits or holds a GPU
    url, token = scheduler
    deadline = time.monotonic() + 120
    while live := [s["id"] for s in call_json(url, "GET", "/api/sessions", token)]:
        assert time.monotonic() < deadline, f"sessions left behind: {live}"
        await asyncio.sleep(0.2)

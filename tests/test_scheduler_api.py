"""The scheduler's REST API against its own OpenAPI description, with schemathesis: no input
may cause a 5xx, and every response must match the description."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_hwsched.testing import Service, free_port

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    work = tmp_path_factory.mktemp("api")
    token = secrets.token_hex(8)
    port = free_port()
    service = Service(
        "scheduler",
        [
            sys.executable,
            "-m",
            "jupyter_hwsched.cli.hwsched",
            "scheduler",
            f"--port={port}",
            f"--db={work / 's.sqlite'}",
            "--node-timeout=100000",
        ],
        {"HWSCHED_TOKEN": token, "PATH": "/usr/bin:/bin"},
        work / "scheduler.log",
    )
    try:
        service.wait_line("HWSCHED_SCHEDULER_READY")
        url = f"http://127.0.0.1:{port}"
        gpus = [{"index": i, "model": "A100-80GB", "memory": 80 * 1024**3} for i in range(4)]
        request = urllib.request.Request(
            f"{url}/api/nodes/node-a",
            method="PUT",
            data=json.dumps({"url": "http://127.0.0.1:1", "gpus": gpus}).encode(),
            headers={"Authorization": f"token {token}"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        yield url, token
    finally:
        service.stop()
        log = (work / "scheduler.log").read_text()
        assert "Traceback" not in log, log[-3000:]


def test_spec_is_served_without_a_token(scheduler: tuple[str, str]) -> None:
    url, _ = scheduler
    with urllib.request.urlopen(f"{url}/api/spec", timeout=10) as response:
        spec = json.loads(response.read())
    assert spec["openapi"].startswith("3.")
    assert "/api/sessions" in spec["paths"]


def test_api_matches_its_description(scheduler: tuple[str, str]) -> None:
    url, token = scheduler
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
        ]
    )
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{url}/api/spec",
            "--checks",
            checks,
            "-H",
            f"Authorization: token {token}",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--generation-deterministic",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]

"""The scheduler's REST API against its own OpenAPI description, with schemathesis: no input
may cause a 5xx, and every response must match the description."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


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

"""Accounting through the real agent: simulated GPUs report the load of the work on them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from harness import Pool

pytestmark = pytest.mark.e2e

HWSCHED = str(Path(sys.executable).parent / "hwsched")


def usage(pool: Pool) -> dict[str, dict[str, float]]:
    out = subprocess.run(
        [HWSCHED, "usage", "--since", "1h", "--json"],
        env=pool.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {row["user"]: row for row in json.loads(out)["users"]}


def test_busy_time_follows_the_work(clean_pool: Pool) -> None:
    before = usage(clean_pool).get("root", {"gpu_seconds_allocated": 0.0, "gpu_seconds_busy": 0.0})
    burn = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    busy = clean_pool.hwrun(["-q", "--gpu", "1", "--", "python3", "-c", burn], cwd="/")
    assert busy.returncode == 0, busy.stderr
    idle = clean_pool.hwrun(["-q", "--gpu", "1", "--", "sleep", "3"], cwd="/")
    assert idle.returncode == 0, idle.stderr
    after = usage(clean_pool)["root"]
    allocated = after["gpu_seconds_allocated"] - before["gpu_seconds_allocated"]
    busy_seconds = after["gpu_seconds_busy"] - before["gpu_seconds_busy"]
    assert allocated >= 6.0  # two sessions of at least 3 s on one GPU each
    # a busy loop keeps one core (= one simulated GPU) near 100% for ~3 s; sleeping adds ~0
    assert 1.0 < busy_seconds < allocated
    table = subprocess.run(
        [HWSCHED, "usage"], env=clean_pool.env, capture_output=True, text=True, check=True
    ).stdout
    assert table.splitlines()[0].split()[:2] == ["USER", "SESSIONS"]


def test_metrics_endpoint(clean_pool: Pool) -> None:
    request = urllib.request.Request(
        clean_pool.url + "/metrics", headers={"Authorization": f"Bearer {clean_pool.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE hwsched_gpus_total gauge" in text
    assert "hwsched_gpus_allocated 0" in text
    assert "hwsched_wait_seconds_count" in text

"""Remote GPU kernel beside a local kernel: the round trip of an empty cell, where its time
goes, and a restart.

Both kernels are started through jupyter_client's AsyncKernelManager, the remote one from the
installed "Remote GPU (shared env)" kernelspec on a real one-node pool (scheduler, node agent,
share agent, dockerd, sshd, sshfs; simulated GPUs where NVML finds none). Measurements
alternate between the two kernels. Loopback, no modelled delay: what is measured is the
processes on the path, not the link.

A cell's time is split with the kernel's own timestamps (the ``date`` of its busy and idle
status messages; one clock, one machine): *to the kernel* is from the client's send to the
kernel's busy, *in the kernel* from busy to idle, *back* from idle to the client having it.
Run as root::

    python benchmarks/kernel_roundtrip.py [--cells 300] [--restarts 5] [--settle 10]

``--settle``: seconds to wait after both kernels are ready, so that the node's cache has
copied what the remote kernel's start read (its copying shares the node's CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dateutil.parser import isoparse
from report import fmt, note, percentile, table

# the test harness (tests/harness.py) is not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Pool
from jupyter_client.manager import AsyncKernelManager

KERNELS = {"local": "python3", "remote": "hwsched-remote"}
PARTS = ("cell", "to the kernel", "in the kernel", "back")


def _when(msg: dict[str, Any]) -> float:
    date = msg["header"]["date"]
    return float((isoparse(date) if isinstance(date, str) else date).timestamp())


async def cell(kc: Any) -> dict[str, float]:
    """One empty cell: its round trip and its parts (seconds)."""
    seen: list[tuple[float, dict[str, Any]]] = []

    def hook(msg: dict[str, Any]) -> None:
        seen.append((time.time(), msg))

    start = time.time()
    await kc.execute_interactive("", timeout=60, output_hook=hook)
    end = time.time()
    states = {  # the cell's busy and idle: when the client had each, when the kernel sent it
        m["content"]["execution_state"]: (at, _when(m))
        for at, m in seen
        if m["msg_type"] == "status"
    }
    busy, idle = states["busy"][1], states["idle"][1]
    return {
        "cell": end - start,
        "to the kernel": busy - start,
        "in the kernel": idle - busy,
        "back": states["idle"][0] - idle,
    }


async def restart(km: AsyncKernelManager, kc: Any) -> float:
    start = time.perf_counter()
    await km.restart_kernel()
    await kc.wait_for_ready(timeout=120)
    return time.perf_counter() - start


async def measure(
    pool: Pool, cwd: str, cells: int, restarts: int, settle: float
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[float]]]:
    os.environ.update(
        HWSCHED_URL=pool.url, HWSCHED_TOKEN=pool.token, HWSCHED_SHARE_SOCKET=pool.share_socket
    )
    kernels = {}
    for where, name in KERNELS.items():
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel(cwd=cwd)
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        await kc.execute_interactive("", timeout=60)  # warm up
        kernels[where] = (km, kc)
    parts: dict[str, dict[str, list[float]]] = {w: {p: [] for p in PARTS} for w in KERNELS}
    restarted: dict[str, list[float]] = {w: [] for w in KERNELS}
    try:
        await asyncio.sleep(settle)
        for _ in range(cells):
            for where, (_, kc) in kernels.items():
                for part, seconds in (await cell(kc)).items():
                    parts[where][part].append(seconds)
        for _ in range(restarts):
            for where, (km, kc) in kernels.items():
                restarted[where].append(await restart(km, kc))
    finally:
        for km, kc in kernels.values():
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
    return parts, restarted


def ms(seconds: float) -> str:
    return fmt(1000 * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--settle", type=float, default=10.0)
    args = parser.parse_args()
    pool = Pool(Path(tempfile.mkdtemp(prefix="hwsched-bench-")))
    cwd = pool.state / "nb"
    cwd.mkdir()
    try:
        parts, restarted = asyncio.run(
            measure(pool, str(cwd), args.cells, args.restarts, args.settle)
        )
    finally:
        pool.stop()
        shutil.rmtree(pool.workdir, ignore_errors=True)
    median = {w: {p: statistics.median(v) for p, v in parts[w].items()} for w in KERNELS}
    rows = [
        [
            f"empty cell, {part}",
            ms(median["local"][part]),
            ms(median["remote"][part]),
            f"{1000 * (median['remote'][part] - median['local'][part]):+.2f}",
            ms(percentile(parts["remote"][part], 90)),
        ]
        for part in PARTS
    ]
    restart_median = {w: statistics.median(v) for w, v in restarted.items()}
    rows.append(
        [
            "restart to ready",
            ms(restart_median["local"]),
            ms(restart_median["remote"]),
            f"{1000 * (restart_median['remote'] - restart_median['local']):+.0f}",
            ms(percentile(restarted["remote"], 90)),
        ]
    )
    print(
        table(["case (medians)", "local ms", "remote ms", "remote - local", "remote p90 ms"], rows)
    )
    cell_ratio = median["remote"]["cell"] / median["local"]["cell"]
    print(
        note(
            f"{platform.node()}, {os.cpu_count()} CPUs; loopback, no modelled delay; "
            f"{args.cells} cells and {args.restarts} restarts each, alternating. Ratio remote / "
            f"local, empty cell: {cell_ratio:.2f} (aim <= 1.2); restart: "
            f"{restart_median['remote'] / restart_median['local']:.2f}"
        )
    )


if __name__ == "__main__":
    main()

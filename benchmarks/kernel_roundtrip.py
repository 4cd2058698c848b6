"""Remote GPU kernel beside a local kernel: the round trip of an empty cell, and a restart.

Both kernels are started through jupyter_client's AsyncKernelManager, the remote one from the
installed "Remote GPU (shared env)" kernelspec on a real one-node pool (scheduler, node agent,
share agent, dockerd, sshd, sshfs; simulated GPUs where NVML finds none). Measurements
alternate between the two kernels. Run as root: ``python benchmarks/kernel_roundtrip.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# the test harness (tests/harness.py) is not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Pool
from jupyter_client.manager import AsyncKernelManager


async def round_trip(kc: Any) -> float:
    start = time.perf_counter()
    await kc.execute_interactive("", timeout=60)
    return time.perf_counter() - start


async def restart(km: AsyncKernelManager, kc: Any) -> float:
    start = time.perf_counter()
    await km.restart_kernel()
    await kc.wait_for_ready(timeout=120)
    return time.perf_counter() - start


async def measure(pool: Pool, cwd: str, cells: int, restarts: int) -> dict[str, list[float]]:
    os.environ.update(
        HWSCHED_URL=pool.url, HWSCHED_TOKEN=pool.token, HWSCHED_SHARE_SOCKET=pool.share_socket
    )
    kernels = {}
    for name in ("python3", "hwsched-remote"):
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel(cwd=cwd)
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        await kc.execute_interactive("", timeout=60)  # warm up
        kernels[name] = (km, kc)
    results: dict[str, list[float]] = {
        k: [] for k in ("cell local", "cell remote", "restart local", "restart remote")
    }
    try:
        for _ in range(cells):
            results["cell local"].append(await round_trip(kernels["python3"][1]))
            results["cell remote"].append(await round_trip(kernels["hwsched-remote"][1]))
        for _ in range(restarts):
            results["restart local"].append(await restart(*kernels["python3"]))
            results["restart remote"].append(await restart(*kernels["hwsched-remote"]))
    finally:
        for km, kc in kernels.values():
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    pool = Pool(Path(tempfile.mkdtemp(prefix="hwsched-bench-")))
    cwd = pool.state / "nb"
    cwd.mkdir()
    try:
        results = asyncio.run(measure(pool, str(cwd), args.cells, args.restarts))
    finally:
        pool.stop()
        shutil.rmtree(pool.workdir, ignore_errors=True)
    print(f"{'case':<16} {'runs':>5} {'median ms':>10} {'p90 ms':>8}")
    for name, values in results.items():
        values = sorted(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        median = 1000 * statistics.median(values)
        print(f"{name:<16} {len(values):>5} {median:>10.2f} {1000 * p90:>8.2f}")
    for what in ("cell", "restart"):
        ratio = statistics.median(results[f"{what} remote"]) / statistics.median(
            results[f"{what} local"]
        )
        aim = " (aim <= 1.2)" if what == "cell" else ""
        print(f"ratio remote / local, {what} (median): {ratio:.2f}{aim}")


if __name__ == "__main__":
    main()

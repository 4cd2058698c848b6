"""Time to first output: ``%%hwrun`` and the Remote GPU kernel, cold and warm, beside local.

All are measured in the same run, interleaved, on a real one-node pool (scheduler, node
agent, share agent, dockerd, sshd, sshfs; simulated GPUs where NVML finds none):

* local:  start a local ipykernel, execute ``print(1)``, stop at the first output;
* remote: in an already running local kernel with the extension loaded (a notebook), execute
  ``%%hwrun --gpu 1`` + ``print(1)``, stop at the remote ``1`` arriving in the cell. This
  includes queueing, the share, the sshfs mount, the container and the remote kernel's start.
* remote, warm: the same from a notebook with ``HWSCHED_KEEP_WARM`` set (README, "Warm
  starts"), after two runs that prime the lease; each run starts ``--gap`` seconds after the
  one before, as cells do, so that the node's kept kernel is ready.
* Remote GPU kernel: the "Remote GPU (shared env)" kernel started from this process as a front
  end starts it, to the output of its first ``print(1)`` (its bridge answers
  ``kernel_info`` at once, so "ready" alone would say nothing), cold and on a warm lease.

Run as root: ``python benchmarks/first_output.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# the test harness (tests/harness.py) is not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Pool
from jupyter_client.manager import KernelManager


def first_output(km: KernelManager, code: str, marker: str) -> float:
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        start = time.perf_counter()
        msg_id = kc.execute(code)
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if is_output(msg, marker):
                elapsed = time.perf_counter() - start
                break
        kc.get_shell_msg(timeout=120)
        return elapsed
    finally:
        kc.stop_channels()


def is_output(msg: dict[str, Any], marker: str) -> bool:
    """The cell's own output: not the status lines a Remote GPU kernel writes to stderr while
    it waits for its GPU."""
    content = msg["content"]
    return (
        msg["msg_type"] == "stream"
        and content.get("name") == "stdout"
        and content["text"].strip() == marker
    )


def local_run(cwd: str, kernel: str = "python3") -> float:
    """A kernel's start, to the output of its first cell (``print(1)``), then its shutdown."""
    start = time.perf_counter()
    km = KernelManager(kernel_name=kernel)
    km.start_kernel(cwd=cwd)
    try:
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        msg_id = kc.execute("print(1)")
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id and is_output(msg, "1"):
                elapsed = time.perf_counter() - start
                break
        kc.stop_channels()
        return elapsed
    finally:
        km.shutdown_kernel()  # as a front end does: a Remote GPU kernel then releases its GPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between warm runs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hwsched-bench-"))
    pool = Pool(workdir)
    notebook_dir = pool.state / "notebook"
    notebook_dir.mkdir()
    cell = "%%hwrun --gpu 1\nprint(1)"
    notebook = notebook_kernel(pool.env, notebook_dir)
    warm = notebook_kernel(dict(pool.env, HWSCHED_KEEP_WARM="600"), notebook_dir)
    local: list[float] = []
    remote: list[float] = []
    kept: list[float] = []
    kernel: list[float] = []
    kernel_kept: list[float] = []
    where = str(notebook_dir)
    # the Remote GPU kernel is started from this process, as a front end would
    os.environ.update({k: v for k, v in pool.env.items() if k.startswith("HWSCHED_")})
    try:
        for _ in range(args.runs):
            local.append(local_run(where))
            remote.append(first_output(notebook, cell, "1"))
            kernel.append(local_run(where, "hwsched-remote"))
        # a kept kernel serves the next session of the same program, directory and
        # environment: each client's runs in a row (two first, to make the lease and a
        # manifest that names the kernel's modules)
        for n in range(2 + args.runs):
            local.append(local_run(where))
            took = first_output(warm, cell, "1")
            kept += [took] if n >= 2 else []
            time.sleep(args.gap)
        os.environ["HWSCHED_KEEP_WARM"] = "600"
        for n in range(2 + args.runs):
            local.append(local_run(where))
            took = local_run(where, "hwsched-remote")
            kernel_kept += [took] if n >= 2 else []
            time.sleep(args.gap)
    finally:
        notebook.shutdown_kernel(now=True)
        warm.shutdown_kernel(now=True)
        pool.stop()
    rows: list[tuple[str, Any, Any, Any]] = [
        ("local ipykernel start + print(1)", statistics.median(local), min(local), max(local)),
        ("%%hwrun --gpu 1 print(1)", statistics.median(remote), min(remote), max(remote)),
        ("%%hwrun, warm lease", statistics.median(kept), min(kept), max(kept)),
        ("Remote GPU kernel start + print(1)", *summary(kernel)),
        ("Remote GPU kernel, warm lease", *summary(kernel_kept)),
    ]
    print(f"time to first output, {args.runs} runs each, interleaved with local (seconds)")
    print(f"{'case':<36} {'median':>8} {'min':>8} {'max':>8}")
    for name, med, lo, hi in rows:
        print(f"{name:<36} {med:>8.3f} {lo:>8.3f} {hi:>8.3f}")
    print(f"{'ratio remote / local (median)':<36} {rows[1][1] / rows[0][1]:>8.2f}")
    print(f"{'ratio warm / local (median)':<36} {rows[2][1] / rows[0][1]:>8.2f}")
    print(f"{'ratio kernel / local (median)':<36} {rows[3][1] / rows[0][1]:>8.2f}")
    print(f"{'ratio kernel, warm / local (median)':<36} {rows[4][1] / rows[0][1]:>8.2f}")


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def notebook_kernel(env: dict[str, str], cwd: Path) -> KernelManager:
    """A local kernel with the extension loaded, as a notebook has it."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(cwd))
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    kc.execute_interactive("%load_ext jupyter_hwsched", timeout=60)
    kc.stop_channels()
    return km


if __name__ == "__main__":
    main()

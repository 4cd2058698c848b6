"""Time to first output: ``%%hwrun --gpu 1`` on ``print(1)`` beside a local kernel.

Both are measured in the same run, interleaved, on a real one-node pool (scheduler, node
agent, share agent, dockerd, sshd, sshfs; simulated GPUs where NVML finds none):

* local:  start a local ipykernel, execute ``print(1)``, stop at the first output;
* remote: in an already running local kernel with the extension loaded (a notebook), execute
  ``%%hwrun --gpu 1`` + ``print(1)``, stop at the remote ``1`` arriving in the cell. This
  includes queueing, the share, the sshfs mount, the container and the remote kernel's start.

Run as root: ``python benchmarks/first_output.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
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
            if msg["msg_type"] == "stream" and marker in msg["content"]["text"]:
                elapsed = time.perf_counter() - start
                break
        kc.get_shell_msg(timeout=120)
        return elapsed
    finally:
        kc.stop_channels()


def local_run(cwd: str) -> float:
    start = time.perf_counter()
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=cwd)
    try:
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        msg_id = kc.execute("print(1)")
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                elapsed = time.perf_counter() - start
                break
        kc.stop_channels()
        return elapsed
    finally:
        km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hwsched-bench-"))
    pool = Pool(workdir)
    notebook_dir = pool.state / "notebook"
    notebook_dir.mkdir()
    notebook = KernelManager(kernel_name="python3")
    notebook.start_kernel(env=pool.env, cwd=str(notebook_dir))
    try:
        kc = notebook.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        kc.execute_interactive("%load_ext jupyter_hwsched", timeout=60)
        kc.stop_channels()
        local: list[float] = []
        remote: list[float] = []
        for _ in range(args.runs):
            local.append(local_run(str(notebook_dir)))
            remote.append(first_output(notebook, "%%hwrun --gpu 1\nprint(1)", "1"))
    finally:
        notebook.shutdown_kernel(now=True)
        pool.stop()
    rows: list[tuple[str, Any, Any, Any]] = [
        ("local ipykernel start + print(1)", statistics.median(local), min(local), max(local)),
        ("%%hwrun --gpu 1 print(1)", statistics.median(remote), min(remote), max(remote)),
    ]
    print(f"time to first output, {args.runs} runs each, interleaved (seconds)")
    print(f"{'case':<36} {'median':>8} {'min':>8} {'max':>8}")
    for name, med, lo, hi in rows:
        print(f"{name:<36} {med:>8.3f} {lo:>8.3f} {hi:>8.3f}")
    print(f"{'ratio remote / local (median)':<36} {rows[1][1] / rows[0][1]:>8.2f}")


if __name__ == "__main__":
    main()

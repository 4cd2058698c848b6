"""Check the real NVML path and a real CUDA run through the agent, on a machine with GPUs.

A one-node pool (scheduler, node agent, share agent as processes) is started on the real NVML
inventory, with the host runner since such machines here have no container engine. Then:
the registered GPUs must be NVML's (same UUIDs, not simulated); ``hwrun --gpu 1`` must see
exactly the allocated GPU and compute on it; NVML utilization and memory in use must show the
work in ``hwsched status`` while it runs; ``%%hwrun`` in a local kernel must reach CUDA; a
request for more GPUs than the node has must fail at once; and nothing may be left held or
running.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the test harness (tests/harness.py) is not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from harness import Pool, wait_for

from jupyter_hwsched.agent.gpus import NvmlInventory

HOST_RUNNER = "--AgentApp.runner_class=jupyter_hwsched.agent.host_runner.HostRunner"
SINGLE_USER = "--HostRunner.single_user=True"  # the lent machine has one developer: us
SINGLE_USER = "--HostRunner.single_user=True"
TORCH_PROBE = """
import os, torch
print("visible", os.environ["CUDA_VISIBLE_DEVICES"])
print("count", torch.cuda.device_count())
print("name", torch.cuda.get_device_name(0))
x = torch.randn(8192, 8192, device="cuda")
for _ in range(int(os.environ.get("LOOPS", "5"))):
    y = x @ x
torch.cuda.synchronize()
print("checksum", float(y[0, 0]) == float(y[0, 0]))
"""


def main(report_path: str) -> int:
    lines: list[str] = []
    failures: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    def check(ok: bool, what: str) -> None:
        say(("PASS " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    inventory = NvmlInventory()
    nvml = inventory.gpus()
    inventory.close()
    for gpu in nvml:
        say(
            f"NVML GPU {gpu.index}: {gpu.name} model={gpu.model} uuid={gpu.uuid} "
            f"memory={gpu.memory / 1024**3:.1f} GiB"
        )
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    check(all(g.uuid in smi for g in nvml), "NVML UUIDs match nvidia-smi -L")

    work = Path(tempfile.mkdtemp(prefix="hwsched-gpu-", dir=str(Path.cwd())))
    pool = Pool(work, simulate="", agent_args=(HOST_RUNNER, SINGLE_USER))
    bin_dir = Path(sys.executable).parent
    try:
        node = next(n for n in pool.pool()["nodes"] if n["name"] == pool.node)
        registered = {g["uuid"]: g for g in node["gpus"]}
        check(set(registered) == {g.uuid for g in nvml}, "the agent registered NVML's GPUs")
        check(not any(g.get("simulated") for g in registered.values()), "no GPU is simulated")

        run = pool.hwrun(
            ["--gpu", "1", "--", sys.executable, "-c", "import time" + TORCH_PROBE], cwd=str(work)
        )
        say("hwrun stdout:\n" + run.stdout + "hwrun stderr:\n" + run.stderr)
        out = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
        check(run.returncode == 0, "hwrun exit status 0")
        check(out.get("count") == "1", "exactly one CUDA device visible")
        check(
            out.get("visible", "") in registered, "CUDA_VISIBLE_DEVICES is the allocated GPU's UUID"
        )
        check(out.get("checksum") == "True", "a matmul ran on the GPU")

        # NVML utilization of the busy GPU reaches the scheduler through heartbeats
        busy = pool.popen_hwrun(
            ["-q", "--gpu", "1", "--", sys.executable, "-c", "import time" + TORCH_PROBE],
            cwd=str(work),
        )
        peak, peak_memory = 0.0, 0
        deadline = time.monotonic() + 60
        while busy.poll() is None and time.monotonic() < deadline:
            for n in pool.pool()["nodes"]:
                for g in n["gpus"]:
                    peak = max(peak, float(g.get("utilization") or 0))
                    peak_memory = max(peak_memory, int(g.get("memory_used") or 0))
            time.sleep(0.3)
        busy.communicate(timeout=120)
        status = subprocess.run(
            [str(bin_dir / "hwsched"), "status"], env=pool.env, capture_output=True, text=True
        ).stdout
        say("hwsched status after the run:\n" + status)
        check(peak > 0, f"NVML utilization seen by the scheduler while busy (peak {peak:.0f}%)")
        check(
            peak_memory > 256 * 1024**2,  # the probe's two 8192x8192 float32 matrices
            f"NVML memory in use seen by the scheduler (peak {peak_memory / 1024**2:.0f} MiB)",
        )

        too_many = pool.hwrun(["--gpu", str(len(nvml) + 1), "--", "true"], cwd=str(work))
        say("too many: " + too_many.stderr.strip())
        check(
            too_many.returncode == 2 and "no node has" in too_many.stderr,
            "asking for more GPUs than the node has fails at once",
        )

        from jupyter_client.manager import KernelManager

        km = KernelManager(kernel_name="python3")
        km.start_kernel(env=pool.env, cwd=str(work))
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        texts: list[str] = []
        kc.execute_interactive("%load_ext jupyter_hwsched", timeout=60)
        reply = kc.execute_interactive(
            "%%hwrun --gpu 1\nimport torch\nprint('cuda', torch.cuda.is_available(), "
            "torch.cuda.device_count(), torch.ones(3, device='cuda').sum().item())",
            timeout=300,
            output_hook=lambda m: (
                texts.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None
            ),
        )
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        say("%%hwrun output: " + "".join(texts).strip())
        check(
            reply["content"]["status"] == "ok" and "cuda True 1 3.0" in "".join(texts),
            "%%hwrun reaches CUDA on the allocated GPU",
        )

        wait_for(lambda: not pool.leftovers(), 60, "the pool to be clean")
        check(True, "nothing held or running afterwards")
    except Exception as exc:  # report what broke, then the logs
        check(False, f"the check itself raised {exc!r}")
        for log in sorted(work.glob("*.log")):
            say(f"--- {log.name}\n{log.read_text()[-4000:]}")
    finally:
        pool.stop()
        shutil.rmtree(work, ignore_errors=True)
    say(f"{len(failures)} failed" if failures else "all GPU checks passed")
    Path(report_path).write_text("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

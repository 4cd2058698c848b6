"""``%%hwrun`` end to end, in a real local ipykernel driven like a notebook drives it."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pool, wait_for
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pool(each_runner_pool: Pool) -> Pool:
    """These tests pass with each runner that roots work at the share (Docker, bubblewrap)."""
    return each_runner_pool


class Notebook:
    """A local kernel with the extension loaded; runs cells and collects their outputs."""

    def __init__(self, pool: Pool, cwd: Path) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=pool.env, cwd=str(cwd))
        self.kc: BlockingKernelClient = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        assert self.run("%load_ext jupyter_hwsched")["status"] == "ok"

    def run(self, code: str, timeout: float = 120, on_output: Any = None) -> dict[str, Any]:
        outputs: list[dict[str, Any]] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] in (
                "stream",
                "display_data",
                "update_display_data",
                "execute_result",
                "error",
            ):
                outputs.append({"type": msg["msg_type"], **msg["content"]})
                if on_output:
                    on_output(msg)

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return {"status": reply["content"]["status"], "outputs": outputs, "reply": reply["content"]}

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def notebook(clean_pool: Pool, workspace: Path) -> Iterator[Notebook]:
    nb = Notebook(clean_pool, workspace)
    yield nb
    nb.close()


def text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(o["text"] for o in outputs if o["type"] == "stream" and o["name"] == name)


def test_outputs_relay_streams_images_and_results(notebook: Notebook, clean_pool: Pool) -> None:
    cell = """%%hwrun --gpu 1
import os, socket, sys
env = os.environ
print("visible", env["CUDA_VISIBLE_DEVICES"], "simulated", env["HWSCHED_SIMULATED_GPUS"])
print("warned", file=sys.stderr)
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [3, 1, 2])
plt.show()
from IPython.display import HTML, display
display(HTML("<b>remote html</b>"))
6 * 7
"""
    result = notebook.run(cell)
    assert result["status"] == "ok", result
    outputs = result["outputs"]
    assert "visible 0 simulated 1" in text(outputs)
    assert "warned" in text(outputs, "stderr")
    images = [o for o in outputs if o["type"] == "display_data" and "image/png" in o["data"]]
    assert images and images[0]["data"]["image/png"].startswith("iVBOR")  # a real PNG
    assert any(
        o["type"] == "display_data" and "<b>remote html</b>" in o["data"].get("text/html", "")
        for o in outputs
    )
    [res] = [o for o in outputs if o["type"] == "execute_result"]
    assert res["data"]["text/plain"] == "42"
    phases = " ".join(
        o["data"]["text/plain"]
        for o in outputs
        if o["type"] in ("display_data", "update_display_data")
        and o["data"].get("text/plain", "").startswith("[hwrun]")
    )
    assert "running on" in phases and "simulated" in phases and "released" in phases


def test_cell_error_fails_the_local_cell(notebook: Notebook) -> None:
    result = notebook.run("%%hwrun --gpu 1\ndef f():\n    raise ValueError('remote trouble')\nf()")
    assert result["status"] == "error"
    assert result["reply"]["evalue"].endswith("remote trouble")
    [err] = [o for o in result["outputs"] if o["type"] == "error"]
    assert any("ValueError" in line for line in err["traceback"])
    assert any("f()" in line for line in err["traceback"])  # the remote traceback, not ours


def test_files_written_in_the_cell_appear_locally(notebook: Notebook, workspace: Path) -> None:
    name = f"out-{uuid.uuid4().hex}.txt"
    result = notebook.run(f"%%hwrun --gpu 1\nopen({name!r}, 'w').write('made remotely')")
    assert result["status"] == "ok", result
    assert (workspace / name).read_text() == "made remotely"


def test_ctrl_c_interrupts_the_remote_cell_and_releases(
    notebook: Notebook, clean_pool: Pool
) -> None:
    started = False

    def on_output(msg: dict[str, Any]) -> None:
        nonlocal started
        if msg["msg_type"] == "stream" and "looping" in msg["content"]["text"]:
            started = True
            notebook.km.interrupt_kernel()  # the notebook's interrupt button

    result = notebook.run(
        "%%hwrun --gpu 1\nprint('looping', flush=True)\nwhile True: pass", on_output=on_output
    )
    assert started
    assert result["status"] == "error"
    assert "KeyboardInterrupt" in result["reply"]["ename"] + " ".join(result["reply"]["traceback"])
    wait_for(lambda: not clean_pool.held_gpus(), 30, "the GPU to be released")
    # the kernel is still usable afterwards
    assert notebook.run("print('still here')")["status"] == "ok"


def test_killed_notebook_kernel_is_reclaimed(notebook: Notebook, clean_pool: Pool) -> None:
    def on_output(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and "holding" in msg["content"]["text"]:
            pid = notebook.km.provisioner.process.pid  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(TimeoutError):
        notebook.run(
            "%%hwrun --gpu 1\nimport time\nprint('holding', flush=True)\ntime.sleep(600)",
            timeout=20,
            on_output=on_output,
        )
    assert not notebook.km.is_alive()
    clean_pool.assert_clean(timeout=60)


def test_usage_errors_are_one_line(notebook: Notebook) -> None:
    for line, says in [
        ("--gpu 0", "asks for no GPU"),
        ("--gpu-type V100", "no node has GPUs of type"),
        ("--gpu 999", "more than one session may hold"),
    ]:
        result = notebook.run(f"%%hwrun {line}\nprint('never')")
        assert result["status"] == "error"
        assert result["reply"]["ename"] == "UsageError"
        assert says in result["reply"]["evalue"]
        assert "never" not in text(result["outputs"])


def test_hwstatus_shows_the_pool(notebook: Notebook, clean_pool: Pool) -> None:
    result = notebook.run("%hwstatus")
    assert result["status"] == "ok", result
    out = text(result["outputs"])
    assert clean_pool.node in out and "A100-80GB [simulated]" in out and "queue: empty" in out
    as_json = notebook.run("%hwstatus --json")
    assert '"nodes"' in text(as_json["outputs"])


def test_queued_cell_shows_its_position(notebook: Notebook, clean_pool: Pool) -> None:
    held = clean_pool.popen_hwrun(
        ["-q", "--gpu", "2", "--", "sh", "-c", "echo up; sleep 4"], cwd="/"
    )
    assert held.stdout is not None and held.stdout.readline() == "up\n"
    result = notebook.run("%%hwrun --gpu 1\nprint('after the wait')")
    held.communicate(timeout=60)
    assert result["status"] == "ok", result
    phases = [
        o["data"]["text/plain"]
        for o in result["outputs"]
        if o["type"] in ("display_data", "update_display_data")
        and o["data"].get("text/plain", "").startswith("[hwrun]")
    ]
    assert any("queued, position 1" in p and "held by root" in p for p in phases), phases
    assert "after the wait" in text(result["outputs"])


def test_keep_push_pull_release(notebook: Notebook, clean_pool: Pool) -> None:
    assert notebook.run("weights = [1, 2, 3]\nscale = 10")["status"] == "ok"
    first = notebook.run(
        "%%hwrun --keep --push weights,scale --pull total\n"
        "import os\nhost_pid = os.getpid()\ntotal = sum(w * scale for w in weights)"
    )
    assert first["status"] == "ok", first
    assert text(notebook.run("print(total)")["outputs"]).strip() == "60"
    held = clean_pool.held_gpus()
    assert len(held) == 1  # kept between cells
    second = notebook.run("%%hwrun --pull same\nsame = host_pid == os.getpid()")
    assert second["status"] == "ok", second
    assert text(notebook.run("print(same)")["outputs"]).strip() == "True"  # the same kernel
    assert clean_pool.held_gpus() == held
    # what cannot be transferred is named
    bad = notebook.run("gen = (i for i in range(3))")
    assert bad["status"] == "ok"
    refused = notebook.run("%%hwrun --push gen\nprint(1)")
    assert refused["status"] == "error" and "--push gen" in refused["reply"]["evalue"]
    missing = notebook.run("%%hwrun --pull nothing_here\nprint(1)")
    assert missing["status"] == "error" and "NameError" in missing["reply"]["evalue"]
    released = notebook.run("%hwrun --release")
    assert "released the kept session" in text(released["outputs"])
    wait_for(lambda: not clean_pool.held_gpus(), 30, "the kept GPU to be released")


def test_a_kept_session_is_released_when_idle(notebook: Notebook, clean_pool: Pool) -> None:
    assert notebook.run("get_ipython().config.HwschedClient.idle_timeout = 2.0")["status"] == "ok"
    assert notebook.run("%%hwrun --keep\nx = 1")["status"] == "ok"
    assert clean_pool.held_gpus()
    wait_for(lambda: not clean_pool.held_gpus(), 60, "the idle kept GPU to be released")
    again = notebook.run("%%hwrun\nprint('x' in globals())")
    assert again["status"] == "ok", again
    phases = " ".join(
        o["data"].get("text/plain", "")
        for o in again["outputs"]
        if o["type"] in ("display_data", "update_display_data")
    )
    assert "the kept session ended" in phases
    assert text(again["outputs"]).strip() == "False"  # a fresh kernel

"""The Remote GPU kernel as front ends start it: the kernelspec's argv run as a process.

VS Code and PyCharm cannot be installed here; what they do is emulated: write a connection
file, run the kernelspec's ``argv`` as a subprocess, and drive it over ZMQ with a blocking
client within a front end's start timeout. ``jupyter run`` (jupyter_client's blocking
manager, as ``jupyter console`` uses) and papermill run for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pool, wait_for
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from jupyter_hwsched.developer.kernel.launcher import MODULE
from jupyter_hwsched.developer.kernelspecs import kernelspec
from jupyter_hwsched.protocol.request import make_request

pytestmark = pytest.mark.e2e

PROBE = "import os, socket, sys; print(socket.gethostname(), os.environ['CUDA_VISIBLE_DEVICES'])"


class Launched:
    """The launcher started the way an IDE starts a kernelspec's argv."""

    def __init__(self, pool: Pool, work: Path, extra: list[str]) -> None:
        self.file, _ = write_connection_file(str(work / f"kernel-{time.time_ns()}.json"))
        argv = [sys.executable, "-m", MODULE, "-f", self.file, *extra]
        self.log = open(work / "launcher.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv, cwd=work, env=pool.client_env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.client = BlockingKernelClient()
        self.client.load_connection_file(self.file)
        self.client.start_channels()

    def run(self, code: str, timeout: float = 120) -> tuple[dict[str, Any], str]:
        """The execute_reply's content and the cell's stdout."""
        out: list[str] = []

        def keep(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=keep)
        return reply["content"], "".join(out)

    def close(self) -> None:
        self.client.stop_channels()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()
        Path(self.file).unlink(missing_ok=True)


@pytest.fixture
def launched(clean_pool: Pool, workspace: Path) -> Iterator[Launched]:
    kernel = Launched(clean_pool, workspace, ["--gpu", "1"])
    try:
        yield kernel
    finally:
        kernel.close()


class Blocker:
    """Every GPU of the pool held by someone else, kept alive until released."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        body = {"request": {"gpus": 2}, "user": "someone-else", "host": "elsewhere"}
        self.id = pool.api("POST", "/api/sessions", body)["id"]

    def renew(self) -> None:
        self.pool.api("POST", f"/api/sessions/{self.id}/renew")

    def release(self) -> None:
        self.pool.api("DELETE", f"/api/sessions/{self.id}")

    def hold_until(self, condition: Any, what: str) -> Any:
        """Keep the GPUs held (its lease renewed) until ``condition()`` holds."""

        def renewed() -> Any:
            self.renew()
            return condition()

        return wait_for(renewed, 120, what)


def test_an_ide_style_launch_answers_while_queued_runs_on_the_gpu_and_interrupts(
    clean_pool: Pool, workspace: Path
) -> None:
    blocker = Blocker(clean_pool)
    launched = Launched(clean_pool, workspace, ["--gpu", "1"])
    try:
        # the kernel answers kernel_info while its request still waits in the queue, so a
        # front end's start timeout (VS Code's is about 60 s) does not run out
        blocker.hold_until(lambda: clean_pool.pool()["queue"], "the kernel's request to queue")
        launched.client.wait_for_ready(timeout=60)
        assert clean_pool.pool()["queue"], "answered only after it stopped waiting"
        msg_id = launched.client.execute(PROBE)
        blocker.hold_until(lambda: launched.proc.poll() is None, "the launcher")
        time.sleep(1.0)
        blocker.release()
        streams: dict[str, str] = {"stdout": "", "stderr": ""}
        while True:
            msg = launched.client.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                streams[msg["content"]["name"]] += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = launched.client.get_shell_msg(timeout=60)["content"]
        assert reply["status"] == "ok", reply
        assert "[hwsched] waiting for a GPU: queued, position 1" in streams["stderr"]
        run_interrupt_and_terminate(launched, clean_pool, streams["stdout"])
    finally:
        launched.close()
        if blocker.id in [s["id"] for s in clean_pool.api("GET", "/api/sessions")]:
            blocker.release()


def test_an_interrupt_while_queued_gives_up_the_request(clean_pool: Pool, workspace: Path) -> None:
    blocker = Blocker(clean_pool)
    launched = Launched(clean_pool, workspace, ["--gpu", "1"])
    try:
        blocker.hold_until(lambda: clean_pool.pool()["queue"], "the kernel's request to queue")
        launched.client.wait_for_ready(timeout=60)
        launched.client.control_channel.send(launched.client.session.msg("interrupt_request", {}))
        blocker.hold_until(lambda: launched.proc.poll() is not None, "the launcher to exit")
        assert launched.proc.returncode == 1
        assert clean_pool.pool()["queue"] == []
        assert b"cancelled while waiting for a GPU" in Path(launched.log.name).read_bytes()
    finally:
        launched.close()
        blocker.release()
    clean_pool.assert_clean(timeout=20)


def run_interrupt_and_terminate(launched: Launched, clean_pool: Pool, out: str) -> None:
    _, gpus = out.split()
    [node] = [n for n in clean_pool.pool()["nodes"] if n["name"] == clean_pool.node]
    assert gpus in [str(g["index"]) for g in node["gpus"]]
    assert clean_pool.held_gpus() == [int(gpus)]
    # an interrupt (the message: interrupt_mode is "message") stops a running cell
    msg_id = launched.client.execute("while True: pass")
    time.sleep(1.5)
    launched.client.control_channel.send(launched.client.session.msg("interrupt_request", {}))
    reply = launched.client.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # SIGTERM: everything goes at once
    launched.proc.send_signal(signal.SIGTERM)
    assert launched.proc.wait(60) == 0
    clean_pool.assert_clean(timeout=20)


def test_a_killed_launcher_loses_its_session_with_the_lease(
    launched: Launched, clean_pool: Pool
) -> None:
    launched.client.wait_for_ready(timeout=60)
    reply, _ = launched.run("x = 1")
    assert reply["status"] == "ok"
    assert clean_pool.held_gpus()
    launched.proc.send_signal(signal.SIGKILL)
    launched.proc.wait(10)
    clean_pool.assert_clean(timeout=60)  # the lease is a few seconds here


@pytest.fixture
def kernels_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_pool: Pool) -> Path:
    """A Jupyter path of the test's own with kernelspecs in it, and the pool's settings."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for key, value in clean_pool.client_env.items():
        if key.startswith("HWSCHED_"):
            monkeypatch.setenv(key, value)
    return tmp_path / "jupyter" / "kernels"


def install_spec(kernels: Path, name: str, gpus: int = 1, python: str | None = None) -> None:
    folder = kernels / name
    folder.mkdir(parents=True)
    spec = kernelspec(make_request(gpus=gpus), python, name)
    (folder / "kernel.json").write_text(json.dumps(spec))


def test_jupyter_run_drives_the_kernel_through_the_blocking_manager(
    kernels_dir: Path, workspace: Path, clean_pool: Pool
) -> None:
    install_spec(kernels_dir, "hwsched-two", gpus=2)
    script = workspace / "probe.py"
    script.write_text(PROBE.replace("print(", "print('ran on', "))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter"), "run", "--kernel=hwsched-two", str(script)],
        cwd=workspace,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = [x for x in done.stdout.splitlines() if x.startswith("ran on")]
    assert line, done.stdout + done.stderr
    assert len(line[0].split()[-1].split(",")) == 2  # the spec's two GPUs
    clean_pool.assert_clean(timeout=30)


def test_papermill_runs_a_notebook_on_the_kernel(
    kernels_dir: Path, workspace: Path, clean_pool: Pool
) -> None:
    import papermill

    install_spec(kernels_dir, "hwsched-pm")
    notebook = {
        "cells": [
            {
                "id": "probe",
                "cell_type": "code",
                "metadata": {},
                "source": PROBE,
                "outputs": [],
                "execution_count": None,
            }
        ],
        "metadata": {
            "kernelspec": {"name": "hwsched-pm", "display_name": "x", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    source, result = workspace / "in.ipynb", workspace / "out.ipynb"
    source.write_text(json.dumps(notebook))
    papermill.execute_notebook(str(source), str(result), kernel_name="hwsched-pm", cwd=workspace)
    outputs = json.loads(result.read_text())["cells"][0]["outputs"]
    text = "".join("".join(o["text"]) for o in outputs if o.get("name") == "stdout")
    # CUDA_VISIBLE_DEVICES exists only where the pool ran the cell
    assert len(text.split()) == 2 and text.split()[1] in ("0", "1"), outputs
    clean_pool.assert_clean(timeout=30)


def test_the_installer_refuses_a_python_without_ipykernel_and_runs_the_one_given(
    kernels_dir: Path, workspace: Path, clean_pool: Pool, tmp_path: Path
) -> None:
    bare = subprocess.run(
        [*HWSCHED, "kernelspec", "install", "--python", "/usr/bin/python3", "--user"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode == 2
    assert "has no ipykernel" in bare.stderr and "-m pip install ipykernel" in bare.stderr
    # an environment of the developer's own: a venv that reaches this one's packages
    env_dir = workspace / "myenv"
    venv.create(env_dir, with_pip=False)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "reach.pth").write_text(ours + "\n")
    python = str(env_dir / "bin" / "python")
    install_spec(kernels_dir, "hwsched-myenv", python=python)
    spec = json.loads((kernels_dir / "hwsched-myenv" / "kernel.json").read_text())
    assert spec["display_name"] == "Remote GPU: 1 GPU (myenv)"
    kernel = Launched(clean_pool, workspace, spec["argv"][5:])
    try:
        kernel.client.wait_for_ready(timeout=60)
        reply, out = kernel.run("import sys; print(sys.prefix)")
        assert reply["status"] == "ok", reply
        assert out.strip() == str(env_dir)
    finally:
        kernel.close()
    clean_pool.assert_clean(timeout=30)


HWSCHED = [sys.executable, "-m", "jupyter_hwsched.cli.hwsched"]

"""The Jupyter kernel conformance suite (``jupyter_kernel_test``) against the Remote GPU kernel,
started the three ways front ends start kernels:

- jupyter_client's blocking manager (``jupyter console``, scripts): the provisioner starts the
  kernelspec's argv, the launcher, as a process;
- the asynchronous manager (JupyterLab, nbclient, papermill): the provisioner relays in the
  Jupyter server's own process;
- a plain subprocess of the kernelspec's argv with a connection file (VS Code, PyCharm).

Each runs the same suite on a kernel placed on the test pool.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, ClassVar

import jupyter_kernel_test
from harness import Pool
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.manager import AsyncKernelManager, start_new_kernel

from jupyter_hwsched.developer.kernelspecs import kernelspec
from jupyter_hwsched.protocol.request import make_request

_state: dict[str, Any] = {}


def setup_module() -> None:
    from conftest import _need_e2e

    _need_e2e()
    work = Path(tempfile.mkdtemp(prefix="conformance-", dir="/var/lib/hwsched-test"))
    pool = Pool(work)
    kernels = work / "jupyter" / "kernels" / "hwsched-conformance"
    kernels.mkdir(parents=True)
    spec = kernelspec(make_request(gpus=1), None, "hwsched-conformance")
    (kernels / "kernel.json").write_text(json.dumps(spec))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", *pool.client_env)}
    os.environ["JUPYTER_PATH"] = str(work / "jupyter")
    os.environ.update({k: v for k, v in pool.client_env.items() if k.startswith("HWSCHED_")})
    workspace = work / "ws"
    workspace.mkdir()
    _state.update(pool=pool, work=work, saved=saved, workspace=workspace, argv=spec["argv"])


def teardown_module() -> None:
    for key, value in _state.get("saved", {}).items():
        if value is None:
            os.environ.pop(key, None)
        elif key == "JUPYTER_PATH" or key.startswith("HWSCHED_"):
            os.environ[key] = value
    pool: Pool | None = _state.get("pool")
    if pool is not None:
        try:
            pool.assert_clean(timeout=60)
        finally:
            pool.stop()
            shutil.rmtree(_state["work"], ignore_errors=True)


class RemoteGpuKernelTests(jupyter_kernel_test.KernelTests):
    """The suite's samples for a Python kernel, as ipykernel's own tests give them."""

    kernel_name = "hwsched-conformance"
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: ClassVar[list[dict[str, Any]]] = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n  return x*2\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class TestBlockingManager(RemoteGpuKernelTests):
    """``start_new_kernel``: jupyter_client's blocking manager, as ``jupyter console``."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.km, cls.kc = start_new_kernel(
            startup_timeout=120, kernel_name=cls.kernel_name, cwd=str(_state["workspace"])
        )


class TestAsyncManager(RemoteGpuKernelTests):
    """The asynchronous manager on an event loop of its own, as a Jupyter server runs it."""

    loop: asyncio.AbstractEventLoop
    manager: AsyncKernelManager

    @classmethod
    def setUpClass(cls) -> None:
        cls.loop = asyncio.new_event_loop()
        threading.Thread(target=cls.loop.run_forever, daemon=True).start()
        cls.manager = AsyncKernelManager(kernel_name=cls.kernel_name)
        cls._on_loop(cls.manager.start_kernel(cwd=str(_state["workspace"])))
        cls.kc = BlockingKernelClient()
        cls.kc.load_connection_info(cls.manager.get_connection_info())
        cls.kc.start_channels()
        cls.kc.wait_for_ready(timeout=120)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.kc.stop_channels()
        cls._on_loop(cls.manager.shutdown_kernel())
        cls.loop.call_soon_threadsafe(cls.loop.stop)

    @classmethod
    def _on_loop(cls, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, cls.loop).result(240)


class TestSubprocessLaunch(RemoteGpuKernelTests):
    """The kernelspec's argv run as a subprocess with a connection file, as VS Code does."""

    proc: subprocess.Popen[bytes]

    @classmethod
    def setUpClass(cls) -> None:
        folder = Path(_state["work"])
        connection, _ = write_connection_file(str(folder / f"ide-{uuid.uuid4().hex}.json"))
        argv = [a.replace("{connection_file}", connection) for a in _state["argv"]]
        cls.proc = subprocess.Popen(
            argv, cwd=_state["workspace"], env=os.environ.copy(), stdin=subprocess.DEVNULL
        )
        cls.kc = BlockingKernelClient()
        cls.kc.load_connection_file(connection)
        cls.kc.start_channels()
        cls.kc.wait_for_ready(timeout=120)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.kc.shutdown()
        cls.kc.stop_channels()
        try:
            cls.proc.wait(60)
        finally:
            if cls.proc.poll() is None:
                cls.proc.kill()
                cls.proc.wait()


del RemoteGpuKernelTests  # the suite runs in the three subclasses only

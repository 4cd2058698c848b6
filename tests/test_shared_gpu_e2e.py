"""Resident kernels sharing one GPU on the real pool: two Remote GPU kernels with
``--shared --gpu-mem``, one simulated GPU. Their cells take turns (the second says it waits),
each keeps its state, a long cell lets the other run beside it after ``slice_after``, a kernel
over its memory is warned and stopped alone, and the GPU time charged is the cells' time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pool
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from jupyter_hwsched.developer.kernelspecs import kernelspec
from jupyter_hwsched.protocol.request import make_request

pytestmark = pytest.mark.e2e

SLICE_AFTER = 6


@pytest.fixture(scope="module")
def shared_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    pool = Pool(
        tmp_path_factory.mktemp("shared-pool"),
        simulate="1xA100-80GB",
        agent_args=(f"--CellGate.slice_after={SLICE_AFTER}", "--SharedGpus.memory_grace=1"),
    )
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """Kernelspecs asking for a share of a GPU, as 'hwsched kernelspec install --shared'
    writes them."""
    folder = tmp_path_factory.mktemp("kernels")
    for name, memory in (("shared-20g", "20G"), ("shared-small", "256M")):
        request = make_request(gpus=1, gpu_mem=memory, shared=True)
        (folder / name).mkdir()
        (folder / name / "kernel.json").write_text(json.dumps(kernelspec(request, None, name)))
    return KernelSpecManager(kernel_dirs=[str(folder)])


class Kernel:
    def __init__(self, name: str, specs: KernelSpecManager, cwd: Path) -> None:
        self.km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=specs)
        self.cwd = cwd

    async def __aenter__(self) -> Kernel:
        await self.km.start_kernel(cwd=str(self.cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=120)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.kc.stop_channels()
        with contextlib.suppress(Exception):  # a kernel the node stopped is gone already
            await self.km.shutdown_kernel(now=True)

    async def run(
        self, code: str, timeout: float = 120, err: list[str] | None = None
    ) -> tuple[dict[str, Any], str, str]:
        """A cell: its reply, its stdout, and its stderr (where the agent's lines go; into
        ``err`` as they come, when given)."""
        out: list[str] = []
        err = [] if err is None else err

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                (out if msg["content"]["name"] == "stdout" else err).append(msg["content"]["text"])

        reply = await self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"], "".join(out), "".join(err)


def use(pool: Pool) -> None:
    os.environ.update(
        HWSCHED_URL=pool.url, HWSCHED_TOKEN=pool.token, HWSCHED_SHARE_SOCKET=pool.share_socket
    )


def test_two_shared_kernels_take_turns_on_one_gpu_and_keep_their_state(
    shared_pool: Pool, specs: KernelSpecManager, workspace: Path
) -> None:
    use(shared_pool)

    async def scenario() -> None:
        async with (
            Kernel("shared-20g", specs, workspace) as a,
            Kernel("shared-20g", specs, workspace) as b,
        ):
            # both on the one GPU, each promised its 20G
            [gpu] = shared_pool.pool()["nodes"][0]["gpus"]
            assert len(gpu["shared_by"]) == 2 and all(
                t["gpu_mem"] == 20 * 1024**3 for t in gpu["shared_by"]
            )
            await a.run("import time; x = 'a'")
            await b.run("import time; x = 'b'")
            cell = "t0 = time.time(); time.sleep(3); print(round(t0, 2), round(time.time(), 2))"
            (ra, oa, ea), (rb, ob, eb) = await asyncio.gather(a.run(cell), b.run(cell))
            assert ra["status"] == rb["status"] == "ok"
            spans = sorted([tuple(map(float, oa.split())), tuple(map(float, ob.split()))])
            assert spans[1][0] >= spans[0][1] - 0.05, spans  # one after the other
            waited = eb if "waiting for the GPU" in eb else ea
            assert "waiting for the GPU: 1 cell ahead (GPU 0, shared)" in waited, (ea, eb)
            assert "the GPU is free after" in waited
            # each kept its state across cells
            assert (await a.run("print(x)"))[1].strip() == "a"
            assert (await b.run("print(x)"))[1].strip() == "b"

    began = time.monotonic()
    asyncio.run(scenario())
    held = 2 * (time.monotonic() - began)  # two kernels, each held for at most this long
    shared_pool.assert_clean(timeout=60)
    # what each user is charged is the time its cells ran, not the time the kernels were held
    usage = shared_pool.api("GET", "/api/usage")["users"]
    charged = sum(row["gpu_seconds_allocated"] for row in usage)
    assert 6.0 <= charged < held / 2, (usage, held)


def test_a_long_cell_lets_the_other_kernel_run_beside_it(
    shared_pool: Pool, specs: KernelSpecManager, workspace: Path
) -> None:
    use(shared_pool)

    async def scenario() -> None:
        async with (
            Kernel("shared-20g", specs, workspace) as a,
            Kernel("shared-20g", specs, workspace) as b,
        ):
            await a.run("import time")
            await b.run("import time")
            long = asyncio.create_task(a.run(f"time.sleep({SLICE_AFTER + 8}); print('long')"))
            await asyncio.sleep(1)
            _, out, err = await b.run("print('short')")
            assert out.strip() == "short"
            assert "waiting for the GPU: 1 cell ahead" in err
            assert "time slicing: this cell runs beside another kernel's cell on GPU 0" in err
            assert not long.done()  # it ran beside the long cell, not after it
            _, out, err = await long
            assert out.strip() == "long"
            assert "another kernel's cell now runs beside it on GPU 0" in err

    asyncio.run(scenario())
    shared_pool.assert_clean(timeout=60)


def test_a_kernel_over_its_memory_is_warned_then_stopped_alone(
    shared_pool: Pool, specs: KernelSpecManager, workspace: Path
) -> None:
    use(shared_pool)

    async def scenario() -> None:
        async with (
            Kernel("shared-20g", specs, workspace) as good,
            Kernel("shared-small", specs, workspace) as greedy,
        ):
            await good.run("y = 42")
            sessions = {s["id"] for s in shared_pool.api("GET", "/api/sessions")}
            assert len(sessions) == 2
            # 600 MB written, past the 256M it asked for (simulated: its container's memory)
            err: list[str] = []
            cell = "big = b'x' * (600 * 2**20); import time; time.sleep(60)"
            running = asyncio.create_task(greedy.run(cell, err=err))

            def ended() -> dict[str, Any] | None:
                for sid in sessions:
                    s = shared_pool.api("GET", f"/api/sessions/{sid}")
                    if s["state"] == "ended":
                        return dict(s)
                return None

            for _ in range(600):  # the node checks every second; the test's pool waits 1 s
                if ended() is not None:
                    break
                await asyncio.sleep(0.1)
            stopped = ended()
            assert stopped is not None, "the greedy kernel was not stopped"
            running.cancel()
            warned = "".join(err)
            assert "warning: this kernel uses" in warned, warned
            assert "over the 256M it asked for" in warned
            assert stopped["end_reason"].startswith("stopped: the kernel used")
            assert "its share of GPU 0 is free again" in stopped["end_reason"]
            [gpu] = shared_pool.pool()["nodes"][0]["gpus"]
            assert len(gpu["shared_by"]) == 1  # the other kernel keeps its share and state
            assert (await good.run("print(y)"))[1].strip() == "42"

    asyncio.run(scenario())
    shared_pool.assert_clean(timeout=60)


def test_a_kept_hwrun_cell_shares_the_gpu_and_waits_its_turn(
    shared_pool: Pool, specs: KernelSpecManager, workspace: Path
) -> None:
    """``%%hwrun --keep --shared``: the magic's kernel (JSON websocket protocol, where the
    Remote GPU kernel speaks the binary one) takes its turn on the same GPU."""
    from test_magic_e2e import Notebook, text

    use(shared_pool)

    async def scenario() -> None:
        async with Kernel("shared-20g", specs, workspace) as a:
            await a.run("import time")
            busy = asyncio.create_task(a.run(f"time.sleep({SLICE_AFTER + 14}); print('a')"))
            notebook = await asyncio.to_thread(Notebook, shared_pool, workspace)
            try:
                cell = "%%hwrun --keep --shared --gpu-mem 20G\nprint('magic')"
                ran = await asyncio.to_thread(notebook.run, cell)
                assert ran["status"] == "ok", ran
                assert text(ran["outputs"]).strip() == "magic"
                assert "waiting for the GPU: 1 cell ahead" in text(ran["outputs"], "stderr")
                [gpu] = shared_pool.pool()["nodes"][0]["gpus"]
                assert len(gpu["shared_by"]) == 2
                await asyncio.to_thread(notebook.run, "%hwrun --release")
                # a share of a GPU is for a kernel that stays: a one-off cell is refused
                refused = await asyncio.to_thread(
                    notebook.run, "%%hwrun --shared --gpu-mem 20G\nprint(1)"
                )
                assert refused["status"] == "error"
                assert "add --keep" in refused["reply"]["evalue"], refused
            finally:
                await asyncio.to_thread(notebook.close)
            assert (await busy)[1].strip() == "a"

    asyncio.run(scenario())
    shared_pool.assert_clean(timeout=60)

"""The "Remote GPU (shared env)" kernelspec through jupyter_client's kernel manager."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from harness import Pool, wait_for
from jupyter_client.manager import AsyncKernelManager

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pool(each_runner_pool: Pool) -> Pool:
    """These tests pass with each runner that roots work at the share (Docker, bubblewrap)."""
    return each_runner_pool


async def run(kc: Any, code: str, timeout: float = 120) -> tuple[dict[str, Any], str]:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], "".join(out)


def test_remote_kernel_lifecycle(clean_pool: Pool, workspace: Path) -> None:
    async def scenario() -> None:
        os.environ.update(
            HWSCHED_URL=clean_pool.url,
            HWSCHED_TOKEN=clean_pool.token,
            HWSCHED_SHARE_SOCKET=clean_pool.share_socket,
        )
        km = AsyncKernelManager(kernel_name="hwsched-remote")
        assert km.kernel_spec is not None
        assert km.kernel_spec.display_name == "Remote GPU (shared env)"
        await km.start_kernel(cwd=str(workspace))
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
            reply, out = await run(
                kc,
                "import os\nprint(os.getcwd(), os.environ['CUDA_VISIBLE_DEVICES'])\n"
                # the working directory's top is the developer's share
                "top = '/' + os.getcwd().split('/')[1]\n"
                "print(any(l.split()[1:3] == [top, 'fuse.sshfs'] for l in open('/proc/mounts')))\n"
                "x = 41",
            )
            assert reply["status"] == "ok", reply
            assert out.split() == [str(workspace), "0", "True"]
            [held] = clean_pool.held_gpus()
            session_before = clean_pool.pool()["nodes"][0]["gpus"][held]["session"]

            # interrupt: a busy loop stops, the kernel stays usable
            msg_id = kc.execute("while True: pass")
            await asyncio.sleep(1.0)
            await km.interrupt_kernel()
            reply = await kc._async_get_shell_msg(timeout=30)
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            reply, out = await run(kc, "print(x + 1)")
            assert out.strip() == "42"

            # restart in place: same allocation, fresh interpreter
            await km.restart_kernel()
            await kc.wait_for_ready(timeout=120)
            reply, out = await run(kc, "print('x' in globals())")
            assert out.strip() == "False"
            assert clean_pool.held_gpus() == [held]
            assert clean_pool.pool()["nodes"][0]["gpus"][held]["session"] == session_before
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
        wait_for(lambda: not clean_pool.held_gpus(), 30, "the GPU to be released")

    asyncio.run(scenario())
    clean_pool.assert_clean()


def test_idle_release_warns_then_frees_the_gpu(clean_pool: Pool, workspace: Path) -> None:
    from traitlets.config import Config

    async def scenario() -> list[str]:
        os.environ.update(
            HWSCHED_URL=clean_pool.url,
            HWSCHED_TOKEN=clean_pool.token,
            HWSCHED_SHARE_SOCKET=clean_pool.share_socket,
        )
        config = Config(
            {
                "RemoteGpuProvisioner": {
                    "idle_timeout": 4.0,
                    "idle_warning": 2.0,
                    "idle_check_interval": 0.2,
                }
            }
        )
        km = AsyncKernelManager(kernel_name="hwsched-remote", config=config)
        await km.start_kernel(cwd=str(workspace))
        kc = km.client()
        kc.start_channels()
        told: list[str] = []
        try:
            await kc.wait_for_ready(timeout=120)
            # a silent computation longer than the idle timeout is not idle
            reply, _ = await run(kc, "import time\ntime.sleep(6)\nprint('done')")
            assert reply["status"] == "ok"
            assert clean_pool.held_gpus()
            deadline = asyncio.get_running_loop().time() + 60
            while asyncio.get_running_loop().time() < deadline:
                try:
                    msg = await kc.get_iopub_msg(timeout=1)
                except Exception:
                    if not clean_pool.held_gpus() and any("shut down" in t for t in told):
                        break
                    continue
                if msg["msg_type"] == "stream":
                    told.append(msg["content"]["text"])
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
        return told

    told = asyncio.run(scenario())
    assert any("unless a cell runs" in t for t in told), told  # the warning came first
    assert any("given back to the pool" in t and "Restart the kernel" in t for t in told), told
    clean_pool.assert_clean()


def test_a_dropped_connection_loses_and_duplicates_nothing(
    clean_pool: Pool, workspace: Path
) -> None:
    async def scenario() -> str:
        os.environ.update(
            HWSCHED_URL=clean_pool.url,
            HWSCHED_TOKEN=clean_pool.token,
            HWSCHED_SHARE_SOCKET=clean_pool.share_socket,
        )
        km = AsyncKernelManager(kernel_name="hwsched-remote")
        await km.start_kernel(cwd=str(workspace))
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
            code = (
                "import time\nfor i in range(60):\n    print(i, flush=True)\n    time.sleep(0.03)"
            )
            task = asyncio.ensure_future(run(kc, code))
            for _ in range(3):  # cut the link to the node three times while lines stream
                await asyncio.sleep(0.4)
                bridge = km.provisioner.bridge  # type: ignore[union-attr]
                assert bridge is not None and bridge.ws is not None
                bridge.ws.close()
            reply, out = await task
            assert reply["status"] == "ok"
            return out
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    out = asyncio.run(scenario())
    assert [int(n) for n in out.split()] == list(range(60))
    clean_pool.assert_clean()

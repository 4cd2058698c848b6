"""``%%hwrun`` and ``%hwstatus``: run a cell on a pooled GPU, show the pool.

The magic runs on IPython's main thread; all network work happens on a private background
loop, and events (phases, output messages) come back through a queue so that every output is
published from the main thread, into the cell that asked for it.
"""

from __future__ import annotations

import concurrent.futures
import queue
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import DisplayHandle, display

from ..errors import HwschedError, SessionEnded
from ..request import HardwareRequest
from .config import HwschedClient
from .kernel import GatewayKernel
from .loop import BackgroundLoop
from .options import request_arguments, request_from_args
from .outputs import OutputRelay, RemoteError, RemoteResult
from .session import RemoteSession, describe_gpus, kernel_argv
from .status import render_pool


class StatusLine:
    """One line above the cell's output that follows the session through its phases."""

    def __init__(self) -> None:
        self.handle: DisplayHandle | None = None

    def show(self, text: str) -> None:
        bundle = {
            "text/plain": f"[hwrun] {text}",
            "text/html": f"<div class='hwsched-status' style='font-family:monospace;color:#555'>"
            f"[hwrun] {_escape(text)}</div>",
        }
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def phase_text(phase: str, info: dict[str, Any], session: RemoteSession) -> str:
    if phase == "queued":
        return f"queued, position {info.get('position')}: {info.get('waiting_for', '')}"
    where = f"{info.get('node')}, {describe_gpus(info)}"
    if phase == "placed":
        return f"placed on {where}; mounting your environment"
    if phase == "sharing":
        return f"placed on {where}; starting the kernel"
    if phase == "ready":
        return f"running on {where} (waited {session.timings.waited():.1f} s)"
    if phase == "released":
        t = session.timings
        return (
            f"released {where} (waited {t.waited():.1f} s, ran {t.ran():.1f} s)"
            if info
            else "released"
        )
    return phase


def run_remote_cell(
    settings: HwschedClient, request: HardwareRequest, code: str, status: StatusLine
) -> RemoteResult | None:
    """Run ``code`` in a fresh remote kernel; relay its output; release; fail like the cell."""
    loop = BackgroundLoop.instance()
    events: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
    relay = OutputRelay()
    session = RemoteSession(settings, request, "kernel", kernel_argv())

    async def work() -> dict[str, Any]:
        kernel: GatewayKernel | None = None
        try:
            await session.acquire(lambda phase, info: events.put(("phase", phase, info)))
            assert session.kernel_id is not None
            kernel = GatewayKernel(session.info["agent_url"], session.secret, session.kernel_id)
            await kernel.connect()
            return await kernel.execute(code, lambda msg: events.put(("iopub", msg, None)))
        except SessionEnded:
            reason = await session.why_ended()
            if reason:
                raise SessionEnded(f"the session ended: {reason}") from None
            raise
        finally:
            try:
                if kernel is not None:
                    await kernel.close()
                await session.release()
            finally:
                events.put(("phase", "released", session.info))

    future = loop.submit(work())
    interrupts = 0
    released = False
    while not released:
        try:
            try:
                kind, first, second = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "iopub":
                relay(first)
            else:
                status.show(phase_text(first, second, session))
                released = first == "released"
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 1 and session.kernel_id and session.agent is not None:
                status.show("interrupting the remote cell")
                loop.submit(session.agent.interrupt(session.kernel_id))
            elif not future.cancelled():
                status.show("cancelling; releasing the GPU")
                future.cancel()
            else:
                status.show("releasing the GPU; nothing will be left behind")
    try:
        reply = future.result(timeout=5)
    except concurrent.futures.CancelledError:
        raise KeyboardInterrupt from None
    except HwschedError as exc:
        raise UsageError(str(exc)) from None
    if reply.get("status") == "error":
        raise relay.error or RemoteError(
            reply.get("ename", "Error"), reply.get("evalue", ""), reply.get("traceback", [])
        )
    return relay.result


@magics_class
class HwschedMagics(Magics):
    """``%%hwrun`` runs a cell on a pooled GPU; ``%hwstatus`` shows the pool."""

    def settings(self) -> HwschedClient:
        return HwschedClient(parent=self.shell, config=self.shell.config if self.shell else None)

    @magic_arguments()
    @request_arguments
    @cell_magic
    def hwrun(self, line: str, cell: str) -> RemoteResult | None:
        """Run this cell on a GPU from the pool, in your own environment, and release it."""
        args = parse_argstring(self.hwrun, line)
        try:
            request = request_from_args(args)
            settings = self.settings()
            settings.check()
        except HwschedError as exc:
            raise UsageError(str(exc)) from None
        status = StatusLine()
        status.show(f"asking for {request.gpus} GPU(s)")
        return run_remote_cell(settings, request, cell, status)

    @magic_arguments()
    @argument("--json", action="store_true", help="print the raw JSON")
    @line_magic
    def hwstatus(self, line: str) -> None:
        """Show the pool: nodes, GPUs, who holds them, the queue, and your sessions."""
        args = parse_argstring(self.hwstatus, line)
        settings = self.settings()
        try:
            settings.check()
            from .api import SchedulerAPI

            async def fetch() -> dict[str, Any]:
                api = SchedulerAPI(settings.url, settings.token)
                try:
                    return await api.pool()
                finally:
                    api.close()

            pool = BackgroundLoop.instance().run(fetch(), timeout=60)
        except HwschedError as exc:
            raise UsageError(str(exc)) from None
        if args.json:
            import json

            print(json.dumps(pool, indent=1))
        else:
            from .environment import caller_identity

            print(render_pool(pool, me=caller_identity()["name"]))

"""``%%hwrun`` and ``%hwstatus``: run a cell on a pooled GPU, show the pool.

The magic runs on IPython's main thread; all network work happens on a private background
loop, and events (phases, output messages) come back through a queue so that every output is
published from the main thread, into the cell that asked for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import DisplayHandle, display

from jupyter_hwsched.developer.environment import caller_identity
from jupyter_hwsched.developer.gateway import GatewayKernel
from jupyter_hwsched.developer.loop import BackgroundLoop
from jupyter_hwsched.developer.options import request_arguments, request_from_args
from jupyter_hwsched.developer.outputs import OutputRelay, RemoteError, RemoteResult
from jupyter_hwsched.developer.render import render_pool
from jupyter_hwsched.developer.session import (
    RemoteSession,
    describe_gpus,
    kernel_argv,
    phase_words,
)
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.developer.transfer import PULL_EXPRESSION, names, pack, pull_expression, unpack
from jupyter_hwsched.protocol.errors import HwschedError, RequestError, SessionEnded
from jupyter_hwsched.protocol.records import SessionRecord
from jupyter_hwsched.protocol.request import HardwareRequest


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


def phase_text(phase: str, info: SessionRecord | None, session: RemoteSession) -> str:
    if info is None:
        return phase
    if phase in ("queued", "placed", "sharing"):
        return phase_words(phase, info)
    where = f"{info.node}, {describe_gpus(info)}"
    if phase == "ready":
        return f"{phase_words(phase, info)} (waited {session.timings.waited():.1f} s)"
    if phase == "kept":
        return f"running on {where} (kept session)"
    if phase == "kept-idle":
        return f"kept {where} for the next %%hwrun cells; %hwrun --release gives it back"
    if phase == "released":
        t = session.timings
        return f"released {where} (waited {t.waited():.1f} s, ran {t.ran():.1f} s)"
    return phase


@dataclass
class KeptKernel:
    """A remote kernel kept for the following cells of this notebook (``--keep``)."""

    session: RemoteSession
    kernel: GatewayKernel
    last_used: float = field(default_factory=time.monotonic)
    idle_task: concurrent.futures.Future[None] | None = None


def run_remote_cell(
    settings: HwschedClient,
    request: HardwareRequest,
    code: str,
    status: StatusLine,
    kept: KeptKernel | None = None,
    keep: bool = False,
    prelude: str | None = None,
    pull: list[str] | None = None,
) -> tuple[RemoteResult | None, dict[str, Any], KeptKernel | None]:
    """Run ``code`` remotely; relay its output; release unless kept; fail like the cell.
    Returns the cell's value, the execute_reply, and the kernel if it is kept."""
    loop = BackgroundLoop.instance()
    events: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
    relay = OutputRelay()
    session = kept.session if kept else RemoteSession(settings, request, "kernel", kernel_argv())
    holder: dict[str, GatewayKernel | None] = {"kernel": kept.kernel if kept else None}

    async def work() -> dict[str, Any]:
        keeping = False
        try:
            kernel = holder["kernel"]
            if kernel is None:
                await session.acquire(lambda phase, info: events.put(("phase", phase, info)))
                placement = session.record.placement
                assert session.kernel_id is not None and placement is not None
                kernel = GatewayKernel(
                    placement.agent_url, session.secret, session.kernel_id, settings.ca_file
                )
                holder["kernel"] = kernel
                await kernel.connect()
            else:
                events.put(("phase", "kept", session.info))
            if prelude:
                pushed = await kernel.execute(prelude, lambda msg: None)
                if pushed.get("status") != "ok":
                    raise RequestError(f"--push failed remotely: {pushed.get('evalue', '')}")
            expressions = {PULL_EXPRESSION: pull_expression(pull)} if pull else None
            reply = await kernel.execute(
                code, lambda msg: events.put(("iopub", msg, None)), expressions
            )
            keeping = keep
            return reply
        except SessionEnded:
            reason = await session.why_ended()
            if reason:
                raise SessionEnded(f"the session ended: {reason}") from None
            raise
        finally:
            if keeping:
                events.put(("phase", "kept-idle", session.info))
            else:
                try:
                    if holder["kernel"] is not None:
                        await holder["kernel"].close()
                    await session.release()
                finally:
                    events.put(("phase", "released", session.info))

    future = loop.submit(work())
    interrupts = 0
    done = None
    while done is None:
        try:
            try:
                kind, first, second = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "iopub":
                relay(first)
            else:
                status.show(phase_text(first, second, session))
                done = first if first in ("released", "kept-idle") else None
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
    if reply.get("status") == "error":
        raise relay.error or RemoteError(
            reply.get("ename", "Error"), reply.get("evalue", ""), reply.get("traceback", [])
        )
    kernel = holder["kernel"]
    handle = kept or (KeptKernel(session, kernel) if done == "kept-idle" and kernel else None)
    return relay.result, reply, handle


@magics_class
class HwschedMagics(Magics):
    """``%%hwrun`` runs a cell on a pooled GPU; ``%hwstatus`` shows the pool."""

    def settings(self) -> HwschedClient:
        return HwschedClient(parent=self.shell, config=self.shell.config if self.shell else None)

    kept: KeptKernel | None = None

    @magic_arguments()
    @request_arguments
    @argument("--keep", action="store_true", help="keep the remote kernel for the next cells")
    @argument("--release", action="store_true", help="(%%hwrun --release) end the kept kernel")
    @argument("--push", default=None, metavar="A,B", help="send these variables first")
    @argument("--pull", default=None, metavar="C", help="bring these variables back after")
    @line_cell_magic
    def hwrun(self, line: str, cell: str | None = None) -> RemoteResult | None:
        """Run this cell on a GPU from the pool, in your own environment, and release it
        (or keep it for the next cells with --keep; %hwrun --release gives it back)."""
        args = parse_argstring(self.hwrun, line)
        if cell is None:
            if not args.release:
                raise UsageError("as a line magic, write %hwrun --release; run cells with %%hwrun")
            self.release_kept("released by %hwrun --release", say=True)
            return None
        with usage_errors():
            return self._run_cell(args, cell)

    def _run_cell(self, args: Any, cell: str) -> RemoteResult | None:
        request = request_from_args(args)
        if request.shared and not (args.keep or self.kept is not None):
            raise UsageError(
                "--shared keeps a kernel resident on a share of a GPU: add --keep "
                "(%%hwrun --keep --shared --gpu-mem 20G)"
            )
        settings = self.settings()
        settings.check()
        prelude = pack(self.namespace(), names(args.push)) if args.push else None
        pull = names(args.pull)
        status = StatusLine()
        kept = self.kept
        if kept is not None and (kept.session.ended_reason or kept.session.releasing):
            # ended under us, or being released right now (the idle watcher): start afresh
            why = kept.session.ended_reason or "it is being released"
            status.show(f"the kept session ended ({why}); asking anew")
            self.kept = kept = None
        if kept is None:
            status.show(f"asking for {request.gpus} GPU(s)")
        else:
            kept.last_used = time.monotonic()
        try:
            result, reply, handle = run_remote_cell(
                settings,
                request,
                cell,
                status,
                kept=kept,
                keep=args.keep or kept is not None,
                prelude=prelude,
                pull=pull,
            )
        except BaseException:
            self.kept = None if kept is None or kept.session.releasing else kept
            raise
        if handle is not None and handle is not kept:
            self.kept = handle
            self._watch_idle(handle, settings.idle_timeout)
        if handle is not None:
            handle.last_used = time.monotonic()
        if pull:
            self.namespace().update(unpack(reply, pull))
        return result

    def namespace(self) -> dict[str, Any]:
        assert self.shell is not None, "magics are registered on a shell"
        ns: dict[str, Any] = self.shell.user_ns
        return ns

    def _watch_idle(self, handle: KeptKernel, timeout: float) -> None:
        async def watch() -> None:
            while not handle.session.releasing:
                left = handle.last_used + timeout - time.monotonic()
                if left <= 0:
                    # said before the release starts: a cell run meanwhile asks anew
                    handle.session.ended_reason = f"released after {timeout:g} s idle"
                    await handle.kernel.close()
                    await handle.session.release(f"idle for {timeout:g} s after its last cell")
                    return
                await asyncio.sleep(min(left, 5.0))

        handle.idle_task = BackgroundLoop.instance().submit(watch())

    def release_kept(self, reason: str, say: bool = False) -> None:
        kept, self.kept = self.kept, None
        if kept is None:
            if say:
                print("[hwrun] no kept session to release")
            return

        async def release() -> None:
            await kept.kernel.close()
            await kept.session.release(reason)

        BackgroundLoop.instance().run(release(), timeout=120)
        if say:
            print(f"[hwrun] released the kept session on {kept.session.record.node}")

    @magic_arguments()
    @argument("--json", action="store_true", help="print the raw JSON")
    @line_magic
    def hwstatus(self, line: str) -> None:
        """Show the pool: nodes, GPUs, who holds them, the queue, and your sessions."""
        args = parse_argstring(self.hwstatus, line)
        with usage_errors():
            pool = BackgroundLoop.instance().run(fetch_pool(self.settings()), timeout=60)
        if args.json:
            print(json.dumps(pool, indent=1))
        else:
            print(render_pool(pool, me=caller_identity().name))


async def fetch_pool(settings: HwschedClient) -> dict[str, Any]:
    async with settings.scheduler() as api:
        return await api.pool()


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The package's errors as IPython's UsageError: one line that says what to change,
    not a traceback of this package's insides."""
    try:
        yield
    except HwschedError as exc:
        raise UsageError(str(exc)) from None

"""The "Remote GPU" kernel as a process of its own: what a kernelspec's ``argv`` starts.

``python -m jupyter_hwsched.developer.kernel -f CONNECTION_FILE [--gpu N ...] [--python P]``
serves the connection file's ports at once (so a front end with a start timeout gets its
``kernel_info`` reply while the request waits in the queue), asks the pool for the GPUs,
and connects the ports to the kernel on the node through the same bridge the provisioner
uses. Every front end that starts a local kernel (VS Code, PyCharm, ``jupyter console``,
papermill, scripts) can start this one.

Interrupts (the message, or SIGINT) reach the remote kernel; while the kernel is still
waiting for its GPU they cancel the request instead. A shutdown, SIGTERM or SIGHUP releases
everything; a launcher killed outright loses its session when its lease lapses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

from jupyter_hwsched.developer.environment import caller_env
from jupyter_hwsched.developer.kernel.bridge import KernelBridge
from jupyter_hwsched.developer.options import add_request_arguments, request_from_args
from jupyter_hwsched.developer.session import RemoteSession, kernel_argv, phase_words
from jupyter_hwsched.developer.settings import HwschedClient
from jupyter_hwsched.protocol.errors import HwschedError
from jupyter_hwsched.protocol.records import SessionRecord

log = logging.getLogger("hwsched.kernel")

#: the module front ends run; kernelspecs name it in their argv
MODULE = "jupyter_hwsched.developer.kernel"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="A Jupyter kernel that runs on a GPU from the pool, in your own environment.",
    )
    p.add_argument("-f", dest="connection_file", required=True, help="the connection file")
    add_request_arguments(p)
    p.add_argument(
        "--python",
        default=None,
        help="the interpreter the kernel runs on the node (default: this one)",
    )
    return p


def launcher_args(argv: list[str]) -> argparse.Namespace | None:
    """The launcher's options in a kernelspec's argv (None for a spec that does not run it)."""
    if MODULE not in argv:
        return None
    return parser().parse_known_args(argv[argv.index(MODULE) + 1 :])[0]


def phase_line(phase: str, info: SessionRecord) -> str:
    """One line for the launcher's log and the waiting cell, per start phase."""
    waiting = "waiting for a GPU: " if phase == "queued" else ""
    return f"[hwsched] {waiting}{phase_words(phase, info)}"


class Launcher:
    """One remote kernel behind local ports, for the life of this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        with open(args.connection_file) as f:
            self.connection: dict[str, Any] = json.load(f)
        self.settings = HwschedClient()
        self.remote = RemoteSession(
            self.settings,
            request_from_args(args),
            "kernel",
            kernel_argv(args.python),
            cwd=os.getcwd(),
            env=caller_env(),
        )
        self.bridge = KernelBridge(
            self.connection,
            self.on_shutdown,
            ca_file=self.settings.ca_file,
            on_interrupt=self.on_interrupt_message,
        )
        self.done = asyncio.Event()
        self.exit_code = 0
        self.acquiring: asyncio.Task[SessionRecord] | None = None
        self.watcher: asyncio.Future[None] | None = None
        self.interrupting: asyncio.Future[None] | None = None

    def progress(self, phase: str, info: SessionRecord) -> None:
        line = phase_line(phase, info)
        log.info("%s", line)
        self.bridge.waiting = line  # what a cell asked for meanwhile is told first
        if self.bridge.held:
            self.bridge.notify(line)  # into the cell that waits

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.done.set)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        self.bridge.bind()
        try:
            if await self._acquire():
                await self.done.wait()
        finally:
            await self.bridge.stop()
            await self.remote.release("the kernel was shut down")
        return self.exit_code

    async def _acquire(self) -> bool:
        self.acquiring = asyncio.ensure_future(self.remote.acquire(self.progress))
        waiting = asyncio.ensure_future(self.done.wait())
        await asyncio.wait([self.acquiring, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not self.acquiring.done():  # shut down while queued
            self.acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError, HwschedError):
                await self.acquiring
            return False
        try:
            placed = self.acquiring.result()
        except asyncio.CancelledError:
            self._fail("[hwsched] cancelled while waiting for a GPU; nothing is held")
            return False
        except HwschedError as exc:
            self._fail(f"[hwsched] the remote kernel could not start: {exc}")
            return False
        assert placed.placement is not None and self.remote.kernel_id is not None
        await self.bridge.attach(
            placed.placement.agent_url, self.remote.kernel_id, self.remote.secret
        )
        self.watcher = asyncio.ensure_future(self._watch_bridge())
        return True

    def _fail(self, line: str) -> None:
        log.error("%s", line)
        self.bridge.notify(line, state="dead" if self.bridge.held else None)
        self.exit_code = 1

    async def _watch_bridge(self) -> None:
        """The node went away for good (the bridge gave up reconnecting): end the kernel."""
        await self.bridge.closed.wait()
        if not self.done.is_set():
            reason = await self.remote.why_ended()
            self._fail(f"[hwsched] the remote kernel ended: {reason or 'the node went away'}")
            self.done.set()

    def _on_sigint(self) -> None:
        self.interrupting = asyncio.ensure_future(self.interrupt())

    async def interrupt(self) -> None:
        """SIGINT: interrupt the remote kernel, or give up the wait for a GPU."""
        if self.acquiring is not None and not self.acquiring.done():
            self.acquiring.cancel()
        elif self.remote.agent is not None and self.remote.kernel_id:
            with contextlib.suppress(HwschedError):
                await self.remote.agent.interrupt(self.remote.kernel_id)

    async def on_interrupt_message(self, msg: dict[str, Any]) -> None:
        """An interrupt_request before the kernel exists: give up the wait for a GPU."""
        await self.interrupt()

    async def on_shutdown(self, msg: dict[str, Any]) -> None:
        """A front end asks the kernel to shut down (or to restart: in place, same GPUs)."""
        restart = bool((msg.get("content") or {}).get("restart"))
        self.bridge.reply("control", msg, "shutdown_reply", {"status": "ok", "restart": restart})
        if restart and self.remote.agent is not None and self.remote.kernel_id:
            await self.remote.agent.restart(self.remote.kernel_id)
            return
        self.done.set()


def main(argv: list[str] | None = None) -> int:
    # like ipykernel, take what front ends add to the kernelspec's argv (jupyter run passes
    # its file names on) without failing the start over it
    args, extra = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if extra:
        log.info("[hwsched] ignoring arguments the kernel does not take: %s", " ".join(extra))
    try:
        launcher = Launcher(args)
    except (OSError, ValueError, HwschedError) as exc:
        print(f"[hwsched] the remote kernel cannot start: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(launcher.run())

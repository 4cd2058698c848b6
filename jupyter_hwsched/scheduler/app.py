"""``hwsched scheduler``: the scheduler as a tornado service."""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from tornado import web
from tornado.netutil import bind_sockets
from traitlets import Bool, Enum, Float, Integer, List, Unicode, default

from jupyter_hwsched.protocol import settings as env
from jupyter_hwsched.protocol.appconfig import ConfigFileApp
from jupyter_hwsched.protocol.identity import Verifier
from jupyter_hwsched.protocol.serving import LimitSettings, limited_server
from jupyter_hwsched.protocol.settings import DEFAULT_SCHEDULER_PORT
from jupyter_hwsched.protocol.tls import is_loopback, server_context
from jupyter_hwsched.scheduler.access import (
    Authenticator,
    Revocations,
    end_revoked,
    end_unowned,
)
from jupyter_hwsched.scheduler.commits import GroupCommit
from jupyter_hwsched.scheduler.core import Scheduler, SettingsError
from jupyter_hwsched.scheduler.handlers import NotFoundHandler, handlers
from jupyter_hwsched.scheduler.slurm.backend import SlurmBackend
from jupyter_hwsched.scheduler.store import SYNCHRONOUS, Store

#: after a change Slurm should act on (a job submitted), look this often, for this long
QUICK_LOOK_INTERVAL, QUICK_LOOK_SECONDS = 0.1, 3.0


class SchedulerApp(ConfigFileApp, LimitSettings):
    name = "hwsched-scheduler"
    description = "Serve the GPU pool's queue and placement over HTTP."

    ip = Unicode("127.0.0.1", config=True, help="Address to listen on.")
    port = Integer(
        DEFAULT_SCHEDULER_PORT, config=True, help="Port to listen on (0 picks a free one)."
    )
    db = Unicode(config=True, help="SQLite file with the scheduler's state.")
    token = Unicode(
        config=True,
        help="The pool token: the operators' (env HWSCHED_TOKEN, or --token-file). Never put "
        "it on a command line.",
    )
    token_file = Unicode("", config=True, help="A file (0600) whose first line is the token.")
    tick_interval = Float(1.0, config=True, help="Seconds between lease and node checks.")
    synchronous = Enum(
        list(SYNCHRONOUS),
        "full",
        config=True,
        help="SQLite's synchronous setting for the state: 'full' makes every change the "
        "scheduler answered for durable across a power cut (the write-ahead log is synced at "
        "each commit); 'normal' is faster but may lose the last changes on a power cut (not "
        "on a crash of the process). benchmarks/scheduler.py measures both.",
    )
    group_commit = Bool(
        True,
        config=True,
        help="Commit the state once per turn of the event loop, for every request of that "
        "turn, and answer each request once its changes are committed (see "
        "scheduler/commits.py); False commits each write as it is made, which syncs more "
        "often, and a write that fails then leaves the working set ahead of the store until "
        "a restart. benchmarks/scheduler.py measures both.",
    )
    certfile = Unicode(
        "", config=True, help="Host certificate to serve HTTPS with (from 'hwsched pki issue')."
    )
    keyfile = Unicode("", config=True, help="The host certificate's key.")
    ca_file = Unicode(
        "",
        config=True,
        help="The pool CA's certificate. Set, callers have identities: users through their "
        "machine's credentials, nodes through theirs, and the token is the operator's alone. "
        "Unset, the one token is everything (a pool on one machine).",
    )
    revoked = List(
        Unicode(),
        [],
        config=True,
        help="Names whose credentials no longer count: a user (ann@dev-1), a developer "
        "machine (dev-1), a node (gpu-3).",
    )
    revoked_file = Unicode(
        "",
        config=True,
        help="A file of revoked names, one a line; read again whenever it changes, so that a "
        "revocation takes effect at once. Live sessions of a revoked user or machine end.",
    )

    aliases = {
        "config": "SchedulerApp.config_file",
        "ip": "SchedulerApp.ip",
        "port": "SchedulerApp.port",
        "db": "SchedulerApp.db",
        "token-file": "SchedulerApp.token_file",
        "certfile": "SchedulerApp.certfile",
        "keyfile": "SchedulerApp.keyfile",
        "ca-file": "SchedulerApp.ca_file",
        "lease": "Scheduler.lease_seconds",
        "node-timeout": "Scheduler.node_timeout",
    }
    classes = [Scheduler, SlurmBackend]

    @default("db")
    def _db_default(self) -> str:
        return str(Path(jupyter_data_dir()) / "hwsched" / "scheduler.sqlite")

    @default("token")
    def _token_default(self) -> str:
        if self.token_file:
            return env.read_secret(self.token_file)
        return env.scheduler_token() or secrets.token_hex(16)

    def start(self) -> None:
        if not self.certfile and not is_loopback(self.ip) and not env.allow_insecure():
            self.log.critical(
                "refusing to serve plain HTTP on %s: set --certfile and --keyfile (see "
                "'hwsched pki'), or %s=1 on a network you trust",
                self.ip,
                env.INSECURE_VARIABLE,
            )
            self.exit(2)
        asyncio.run(self.serve())

    async def serve(self, started: asyncio.Future[Any] | None = None) -> None:
        store = Store(self.db, self.synchronous)
        try:
            scheduler = Scheduler(store, parent=self)
        except SettingsError as exc:
            self.log.critical("%s", exc)
            self.exit(2)
        revocations = Revocations(self.revoked, self.revoked_file)
        verifier = (
            Verifier(self.ca_file, operator_token=self.token, revoked=revocations)
            if self.ca_file
            else None
        )
        authenticate = Authenticator(self.token, verifier)
        commits = (
            GroupCommit(store, lambda: scheduler.load(replan=False), self.log)
            if self.group_commit
            else None
        )
        if verifier is not None:
            end_unowned(scheduler)
        app = web.Application(
            handlers(scheduler, authenticate, commits), default_handler_class=NotFoundHandler
        )
        tls = server_context(self.certfile, self.keyfile) if self.certfile else None
        server = limited_server(app, self.server_limits(), ssl_options=tls)
        socks = bind_sockets(self.port, self.ip)
        server.add_sockets(socks)
        port = socks[0].getsockname()[1]
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        self.log.info("hwsched scheduler listening on %s (state in %s)", url, self.db)

        def tick() -> None:
            if verifier is not None:
                end_revoked(scheduler, revocations())
            scheduler.tick()

        ticker = asyncio.create_task(self.tick_loop(scheduler, tick))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if started is not None:
            started.set_result(port)
        print(f"HWSCHED_SCHEDULER_READY {url}", flush=True)
        await stop.wait()
        ticker.cancel()
        server.stop()
        if commits is not None:
            commits.close()
        store.close()

    async def tick_loop(self, scheduler: Scheduler, tick: Callable[[], None]) -> None:
        """The periodic duties, every ``tick_interval``; under Slurm each round first asks
        Slurm (off the event loop) what it did, and more often just after a change, since
        Slurm often starts a job the moment it is submitted."""
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake_soon() -> None:
            loop.call_soon_threadsafe(wake.set)

        scheduler.wake = wake_soon
        quick_until = 0.0
        while True:
            if scheduler.slurm is not None:
                asked, placed = scheduler.slurm_jobs()
                seen = await loop.run_in_executor(None, scheduler.slurm.look, asked, placed)
                scheduler.take_slurm_view(seen, asked)
            try:
                tick()
            except Exception:  # a duty that fails must not stop the others for good
                self.log.exception("scheduler tick failed")
            now = loop.time()
            if wake.is_set():
                wake.clear()
                quick_until = now + QUICK_LOOK_SECONDS
            interval = QUICK_LOOK_INTERVAL if now < quick_until else self.tick_interval
            try:
                await asyncio.wait_for(wake.wait(), interval)
            except asyncio.TimeoutError:
                pass


def main(argv: list[str]) -> None:
    """``hwsched scheduler``."""
    SchedulerApp.launch_instance(argv)

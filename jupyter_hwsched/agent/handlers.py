"""The agent's own endpoints, beside the Kernel Gateway API that jupyter_server serves.

``/hwsched/cache``: the node's cache of read-mostly trees, for the operator (GET, DELETE).
``/hwsched/sessions/{id}``: POST starts a placed session (mount, container, kernel), DELETE
ends it. ``/hwsched/sessions/{id}/command``: a websocket that runs a command session's command
and streams its output (binary frames: one byte 1 or 2 for stdout or stderr, then the bytes),
ending with a text frame ``{"exit": code}``; the client sends ``{"signal": N}`` to signal it,
and ``{"received": N}`` to say it has N bytes of the output. The output is relayed losslessly
with a bound on what the agent holds for a client that does not read
(``c.CommandRelay.max_unsent_bytes``, 8 MiB): past it the command is paused, blocked on its
write, until the client reads (see relay.py). Where the runner spools a command's output on
the node (spool.py: Docker's), a client that connects with ``?resume=0`` keeps the output it
has not acknowledged spooled (past the same bound, the command is paused), and after a
dropped connection (the agent restarted) connects again with ``?resume=N`` and reads on from
byte N; without it, the spool drops what was relayed. A client frame that is none of
these, or is over ``COMMAND_MAX_MESSAGE`` bytes, closes the stream (1007, or tornado's 1009)
with a reason, which hangs up the command as any close does.

``/hwsched/spec``: the OpenAPI description of this API (public, as the scheduler's), from
:mod:`jupyter_hwsched.protocol.openapi.agent`. Of the Kernel Gateway API that jupyter_server
serves, two verbs are answered here instead: starting a kernel (403: kernels start with a
session), and interrupting or restarting one that does not exist (404) or is busy starting,
restarting or shutting down (409), where jupyter_server says 500. Any other path under
``/api`` or ``/hwsched`` that no route takes is a JSON 404 (:func:`json_not_found`), not
jupyter_server's HTML page.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any, TypeGuard

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.services.kernels.handlers import KernelActionHandler, MainKernelHandler
from jupyter_server.utils import url_path_join
from tornado import web, websocket
from tornado.routing import PathMatches, Rule

from jupyter_hwsched.agent.authorizer import ADMIN, session_of
from jupyter_hwsched.agent.relay import CommandRelay, OutputWindow
from jupyter_hwsched.agent.runner import SpooledExec
from jupyter_hwsched.agent.service import NodeService
from jupyter_hwsched.agent.sessions import NodeSession
from jupyter_hwsched.agent.spool import trim
from jupyter_hwsched.protocol.errors import ForbiddenError, NotFoundError, RequestError
from jupyter_hwsched.protocol.handler import ErrorMapping
from jupyter_hwsched.protocol.openapi.agent import SPEC_PATH, agent_spec
from jupyter_hwsched.protocol.records import SESSION_ID_PATTERN, StartSpec

STREAM_CODES = {"stdout": 1, "stderr": 2}
#: the largest frame a command's client may send ({"signal": N} or {"received": N})
COMMAND_MAX_MESSAGE = 4096
#: jupyter_server's route of a kernel id
KERNEL_ID = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"


def node_of(handler: web.RequestHandler) -> NodeService:
    node: NodeService = handler.settings["hwsched_node"]
    return node


class AgentHandler(ErrorMapping, APIHandler):
    """The agent's JSON endpoints, through the package's one error mapping."""

    surface = "this node agent"

    @property
    def agent(self) -> NodeService:
        return node_of(self)


def admin_only(handler: JupyterHandler) -> None:
    user = handler.current_user
    if user is None or user.username != ADMIN:
        raise ForbiddenError("only the pool's token may list this node's sessions")


class NodeHandler(AgentHandler):
    @web.authenticated
    def get(self) -> None:
        admin_only(self)
        self.finish(json.dumps(self.agent.describe()))


class CacheHandler(AgentHandler):
    """The node's cache of read-mostly trees, for the operator: GET describes it, DELETE
    purges it (every user's copies; one user's with ``?user=NAME&uid=N&host=MACHINE``)."""

    @web.authenticated
    def get(self) -> None:
        admin_only(self)
        cache = self.agent.cache
        self.finish(json.dumps(cache.describe() if cache else {"enabled": False}))

    @web.authenticated
    async def delete(self) -> None:
        admin_only(self)
        cache = self.agent.cache
        if cache is None:
            raise NotFoundError("this node keeps no cache")
        user = self.get_query_argument("user", None)
        host = self.get_query_argument("host", "")
        try:
            uid = int(self.get_query_argument("uid", "-1"))
        except ValueError:
            raise RequestError("uid must be a number") from None
        if user is not None and (uid < 0 or not host):
            raise RequestError("to purge one user's copies give user, uid and host")
        loop = asyncio.get_running_loop()
        freed = await loop.run_in_executor(None, cache.purge, host, user, uid)
        self.finish(json.dumps({"freed_bytes": freed, **cache.describe()}))


class SessionsHandler(AgentHandler):
    @web.authenticated
    def get(self) -> None:
        admin_only(self)
        self.finish(json.dumps([s.describe() for s in self.agent.sessions.values()]))


def own_session(handler: JupyterHandler, session_id: str) -> None:
    """The cluster token may act on any session; a session's secret only on that session."""
    user = handler.current_user
    if user is None:
        raise web.HTTPError(403, "a valid token is required")
    if user.username != ADMIN and session_of(user) != session_id:
        raise ForbiddenError(f"your credential does not cover session {session_id}")


class SessionHandler(AgentHandler):
    async def post(self, session_id: str) -> None:
        """Start a placed session. Not yet known here, so its client is checked against the
        scheduler's record of the secret instead of the live sessions."""
        self.check_protocol()
        user = self.current_user
        secret = None if user is not None and user.username == ADMIN else self.token_shown()
        if not secret and (user is None or user.username != ADMIN):
            raise web.HTTPError(403, "a token or the session's secret is required")
        placed = await self.agent.placed_session(session_id, secret)  # credential first
        spec = StartSpec.from_json(self.json_body())
        session = await self.agent.start_session(spec, placed)
        self.set_status(201)
        self.finish(json.dumps(session.describe()))

    def check_xsrf_cookie(self) -> None:
        # XSRF rides on cookies a browser sends by itself; a request that carries its own
        # Authorization header (checked in post) cannot be forged that way
        if self.token_shown():
            return None
        return super().check_xsrf_cookie()

    def token_shown(self) -> str:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        return value.strip() if scheme.lower() in ("token", "bearer") else ""

    @web.authenticated
    async def delete(self, session_id: str) -> None:
        self.check_protocol()
        own_session(self, session_id)
        if session_id not in self.agent.sessions:
            raise NotFoundError(f"no session {session_id} on this node")
        reason = self.get_argument("reason", "released by the client")
        warm = self.get_argument("warm", "") == "1"  # keep it warm, as its start asked
        kept = await self.agent.end_session(session_id, reason[:500], warm=warm)
        self.finish(json.dumps({"ended": session_id, "kept_warm": kept}))


class CommandHandler(websocket.WebSocketHandler, JupyterHandler):
    """Runs a command session's command and streams its output."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        own_session(self, args[0] if args else "")
        await super().get(*args, **kwargs)

    def check_origin(self, origin_to_satisfy_tornado: str = "") -> bool:
        return True  # token-authenticated API, not a browser page

    session: NodeSession
    window: OutputWindow | None = None

    async def open(self, session_id: str) -> None:
        session = node_of(self).sessions.get(session_id)
        if session is None or session.spec.kind != "command":
            self.close(4004, f"no command session {session_id} on this node")
            return
        try:
            resume = int(self.get_query_argument("resume", "-1"))
        except ValueError:
            resume = -1
        command = session.command
        if command is not None and not (resume >= 0 and isinstance(command, SpooledExec)):
            self.close(4009, "the command of this session has already run")
            return
        self.session = session
        session_client = session.client
        session.client = self  # the one its output goes to
        if session_client is not None:
            session_client.close(4009, "another connection took this command's output over")
        relay = CommandRelay(config=self.config)
        window = self.window = OutputWindow(relay.max_unsent_bytes)
        loop = asyncio.get_running_loop()

        def on_output(stream: str, data: bytes) -> None:
            # in a pump thread: waiting here leaves the rest of the output unread, so the
            # command blocks on its next write until the client has read this far
            frame = bytes([STREAM_CODES[stream]]) + data
            window.reserve(len(frame), lambda: session.torn_down)
            loop.call_soon_threadsafe(self._send_output, frame)

        def on_exit(code: int) -> None:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._finish(code)))

        def unwanted() -> bool:
            # a client that does not say what it received cannot read on after a drop
            return resume < 0 or window.closed

        if command is None:
            try:
                await loop.run_in_executor(
                    None, session.exec_command, on_output, on_exit, relay.max_unsent_bytes, unwanted
                )
            except Exception as exc:  # the engine, the sandbox or the keeper failed to start it
                reason = f"the node could not start the command: {exc}"
                self.log.error("session %s: %s", session.id, reason)
                self.close(1011, reason[:120])  # a close reason holds 123 bytes
                await node_of(self).end_session(session.id, reason)
                return
            node_of(self).record(session)  # now with its command, for a restarted agent
            return
        self.log.info(
            "session %s: its client reads its output again from byte %d", session.id, resume
        )
        try:
            session.relay_output(resume, on_output, on_exit, unwanted)
        except ValueError as exc:
            self.close(4010, str(exc))

    def _send_output(self, frame: bytes) -> None:
        assert self.window is not None
        window, size = self.window, len(frame)
        sent = self._send(frame, True)
        if sent is None:
            window.sent(size)
            return

        def flushed(future: asyncio.Future[None]) -> None:
            _retrieve(future)
            window.sent(size)

        sent.add_done_callback(flushed)

    def _send(self, message: bytes | str, binary: bool = False) -> asyncio.Future[None] | None:
        """Write a frame; the future is done once the frame reached the socket."""
        try:
            return self.write_message(message, binary=binary)
        except websocket.WebSocketClosedError:
            return None

    async def _finish(self, code: int) -> None:
        reason = self.session.end_reason
        mount = self.session.mount
        if reason is None and code != 0 and mount is not None:
            # a dropped share can kill the command first (SIGBUS on a mapped binary, EIO):
            # then the exit status is not the command's own doing, so say what happened
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, mount.responsive):
                reason = "the connection to the developer's share was lost"
        # a command killed because its session ended did not exit on its own: say why
        last = self._send(json.dumps({"ended": reason} if reason else {"exit": code}))
        # close only once the client has taken everything (tornado drops a connection whose
        # client has not answered a close within 5 s), or once the session is gone
        if last is not None:
            last.add_done_callback(_retrieve)
            while not last.done() and not self.session.torn_down:
                await asyncio.wait([last], timeout=0.5)
        self.close(1000)

    @property
    def max_message_size(self) -> int:
        return COMMAND_MAX_MESSAGE

    def on_message(self, message: str | bytes) -> None:
        try:
            body = json.loads(message)
            if not isinstance(body, dict):
                raise ValueError
            received = body.get("received")
            if _natural(received) and len(body) == 1:
                # the client has the output up to there: the spool need not keep it
                if isinstance(self.session.command, SpooledExec):
                    trim(self.session.command.spool, received)
                return
            signum = body.get("signal")
            if not _natural(signum) or len(body) != 1:
                raise ValueError
            signal.Signals(signum)
        except ValueError:  # not JSON, not UTF-8, not an object with a signal's number
            self.close(1007, 'expected {"signal": N}, N a signal number, or {"received": N}')
            return
        if self.session.command is not None:
            self.log.info(
                "session %s: %s to its command, from its client",
                self.session.id,
                signal.Signals(signum).name,
            )
            self.session.command.signal(signum)

    def on_close(self) -> None:
        if self.window is not None:
            self.window.close()  # a pump waiting for this client goes on (and hangs up)
        # like ssh: a client that goes away hangs up its command (not one whose output
        # another connection took over)
        session = getattr(self, "session", None)
        if session is None or session.client is not self:
            return
        session.client = None
        if session.command is not None:
            session.command.signal(signal.SIGHUP)


def _natural(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _retrieve(future: asyncio.Future[None]) -> None:
    """A write to a connection that closed failed: nothing more to do about it."""
    if not future.cancelled():
        future.exception()


class SpecHandler(AgentHandler):
    """This API's OpenAPI description; public, like the scheduler's."""

    @allow_unauthenticated
    def get(self) -> None:
        self.finish(json.dumps(agent_spec(self.base_url)))


class KernelsHandler(MainKernelHandler):
    """``/api/kernels``: the list as jupyter_server gives it; no kernel starts here but a
    session's (jupyter_server would answer the provisioner's refusal with a 500)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        raise web.HTTPError(
            403,
            "a node starts a kernel only for a session the scheduler placed here: ask the "
            "scheduler for a kernel session, whose client starts it with "
            "POST /hwsched/sessions/{id}",
        )


class KernelActionsHandler(KernelActionHandler):
    """Interrupt and restart: a kernel that does not exist is a 404 for both, one that is
    still starting, restarting or shutting down a 409 (jupyter_server answers both with a
    500)."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str, action: str) -> None:
        if kernel_id not in self.kernel_manager:
            raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")
        ready = getattr(self.kernel_manager.get_kernel(kernel_id), "ready", None)
        if ready is not None and not ready.done():
            raise web.HTTPError(
                409, f"kernel {kernel_id} is starting, restarting or shutting down: try again"
            )
        done = super().post(kernel_id, action)
        if done is not None:
            await done


class NotFoundHandler(ErrorMapping):
    """What no route takes under ``/api`` or ``/hwsched``: a JSON 404."""

    def check_xsrf_cookie(self) -> None:
        return None  # nothing here acts on a request, so nothing can be forged

    def prepare(self) -> None:
        raise NotFoundError(f"no such endpoint: {self.request.method} {self.request.path}")


def json_not_found(web_app: web.Application, base_url: str) -> None:
    """Answer an unknown path under ``/api`` and ``/hwsched`` with a JSON 404, where
    jupyter_server's catch-all answers an HTML page. Goes last among jupyter_server's own
    routes, just before that catch-all, so that it shadows none of them."""
    pattern = url_path_join(base_url, r"(?:api|hwsched)(?:/.*)?")
    router = web_app.wildcard_router
    router.rules.insert(len(router.rules) - 1, Rule(PathMatches(pattern), NotFoundHandler))


def handlers() -> list[tuple[str, type]]:
    return [
        (SPEC_PATH, SpecHandler),
        (r"/hwsched/node", NodeHandler),
        (r"/hwsched/cache", CacheHandler),
        (r"/hwsched/sessions", SessionsHandler),
        (rf"/hwsched/sessions/({SESSION_ID_PATTERN})", SessionHandler),
        (rf"/hwsched/sessions/({SESSION_ID_PATTERN})/command", CommandHandler),
        (r"/api/kernels", KernelsHandler),
        (rf"/api/kernels/{KERNEL_ID}/(?P<action>restart|interrupt)", KernelActionsHandler),
    ]

"""The one error mapping of every HTTP surface, and the JSON handler built on it.

:class:`ErrorMapping` is mixed into the handlers of the scheduler, the share agent, the node
agent (jupyter_server handlers) and the server extension. A :class:`HwschedError` becomes its
status with ``{"message": ...}``; a surface that reports some errors differently says so in
:meth:`ErrorMapping.error_reply`, not in a ``write_error`` of its own. Anything else is left
to the base handler (a 500 whose body hides the traceback, which is logged).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from tornado import web
from tornado.log import app_log

from jupyter_hwsched.protocol.errors import AuthError, HwschedError, RequestError
from jupyter_hwsched.protocol.identity import Principal
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, check_protocol, header_version


class ErrorMapping(web.RequestHandler):
    """Mixin for a tornado handler: the package's errors as JSON, request bodies as JSON.

    Put it first among the bases (``class H(ErrorMapping, APIHandler)``) so that its
    ``write_error`` is the one tornado calls.
    """

    #: what this surface calls itself in a version mismatch ("this scheduler")
    surface = "this service"

    def error_reply(self, exc: HwschedError) -> tuple[int, dict[str, Any]]:
        """The status and body that report ``exc`` on this surface."""
        return exc.status, {"message": exc.message}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, HwschedError):
            super().write_error(status_code, **kwargs)
            return
        status, body = self.error_reply(exc)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HwschedError):
            app_log.info(
                "%s %s -> %s: %s", self.request.method, self.request.path, value.status, value
            )
        else:
            super().log_exception(typ, value, tb)

    def check_protocol(self) -> None:
        """A client that says which protocol it speaks must speak ours."""
        theirs = header_version(self.request.headers.get(PROTOCOL_HEADER))
        if theirs is not None:
            check_protocol(theirs, "this client", self.surface)

    def json_body(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except ValueError:
            raise RequestError("the request body is not valid JSON") from None

    def body_object(self) -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body


class JsonHandler(ErrorMapping):
    """Base of the plain tornado services: JSON in and out, who is asking."""

    #: checks the request's credential and says who made it; ``None`` turns the check off
    #: (unix-socket services, which learn the caller from the socket)
    authenticate: Callable[[str], Principal] | None = None
    principal: Principal | None = None

    def initialize(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)

    def prepare(self) -> None:
        if self.authenticate is not None:
            self.principal = self.authenticate(bearer(self.request.headers.get("Authorization")))
        self.check_protocol()

    def who(self) -> Principal:
        """The checked caller (only on a service that authenticates)."""
        assert self.principal is not None, "prepare() authenticated the request"
        return self.principal

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HwschedError):
            super().write_error(status_code, **kwargs)
        elif isinstance(exc, web.HTTPError):
            self.finish(json.dumps({"message": exc.log_message or self._reason}))
        else:
            self.finish(json.dumps({"message": "internal error; see the service's log"}))


def bearer(header: str | None) -> str:
    """The credential of ``Authorization: token X`` or ``Bearer X`` ('' if none)."""
    scheme, _, value = (header or "").partition(" ")
    return value.strip() if scheme.lower() in ("token", "bearer") else ""


def check_token(given: str, token: str) -> None:
    """The shared token of a pool without a CA: whoever holds it may do anything."""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise AuthError(
            "the scheduler refused the token: set HWSCHED_TOKEN (or c.HwschedClient.token) "
            "to the token the pool was started with"
        )

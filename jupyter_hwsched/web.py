"""The JSON request handler that the scheduler and the share agent build on.

Errors are mapped here and only here: a :class:`HwschedError` becomes its status with
``{"message": ...}``; anything else becomes a 500 whose body hides the traceback (it is logged).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from tornado import web

from .errors import AuthError, HwschedError, RequestError


class JsonHandler(web.RequestHandler):
    """Base handler: JSON in and out, token check, one error mapping."""

    #: the token every request must carry; ``None`` turns the check off (unix-socket services)
    token: str | None = None

    def initialize(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)

    def prepare(self) -> None:
        if self.token is not None:
            check_token(self.request.headers.get("Authorization", ""), self.token)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def json_body(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except ValueError:
            raise RequestError("the request body is not valid JSON") from None

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HwschedError):
            self.set_status(exc.status)
            message = exc.message
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "internal error; see the service's log"
        self.finish(json.dumps({"message": message}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HwschedError):
            self.log_request_error(value)
        else:
            super().log_exception(typ, value, tb)

    def log_request_error(self, exc: HwschedError) -> None:
        from tornado.log import app_log

        app_log.info("%s %s -> %s: %s", self.request.method, self.request.path, exc.status, exc)


def check_token(header: str, token: str) -> None:
    """Accept ``Authorization: token X`` or ``Bearer X``."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() not in ("token", "bearer") or not hmac.compare_digest(
        value.strip().encode(), token.encode()
    ):
        raise AuthError(
            "the scheduler refused the token: set HWSCHED_TOKEN (or c.HwschedClient.token) "
            "to the token the pool was started with"
        )

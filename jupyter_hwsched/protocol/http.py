"""JSON over HTTP to the scheduler, a node agent, or the local share agent's unix socket.

Every call carries the protocol version. Error responses come back as the package's
exceptions with the service's own message; a service that cannot be reached becomes
:class:`UnavailableError` naming what to check.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import DefaultLoopResolver, Resolver

from jupyter_hwsched.protocol import settings as env
from jupyter_hwsched.protocol.errors import HwschedError, UnavailableError, error_for_status
from jupyter_hwsched.protocol.tls import check_url, client_context, not_trusted
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION

UNIX_HOST = "unix-socket"
#: gives the credential for one request: a fixed token, or a fresh signed credential
Credential = Callable[[], Awaitable[str]]
C = TypeVar("C", bound="JsonClient")


class UnixSocketResolver(Resolver):
    """Resolves the placeholder host ``unix-socket`` to a unix socket path."""

    def initialize(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.fallback = DefaultLoopResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        if host == UNIX_HOST:
            return [(socket.AF_UNIX, self.socket_path)]
        resolved: list[tuple[int, Any]] = await self.fallback.resolve(host, port, family)
        return resolved


class JsonClient:
    """A small JSON client for one service."""

    def __init__(
        self,
        base_url: str,
        token: str | Credential | None = None,
        *,
        what: str,
        hint: str = "",
        unix_socket: str | None = None,
        timeout: float = 30.0,
        ca_file: str | None = None,
    ) -> None:
        self.what = what
        self.hint = hint
        self._credential = token if callable(token) else fixed(token or "")
        self.timeout = timeout
        self.unix_socket = unix_socket
        self.ssl: ssl.SSLContext | None = None
        if not unix_socket and check_url(base_url, what):
            self.ssl = client_context(env.ca_file() if ca_file is None else ca_file)
        if unix_socket:
            self.base_url = f"http://{UNIX_HOST}"
            self.http = AsyncHTTPClient(
                force_instance=True, resolver=UnixSocketResolver(socket_path=unix_socket)
            )
        else:
            self.base_url = base_url.rstrip("/")
            self.http = AsyncHTTPClient(force_instance=True)

    def close(self) -> None:
        self.http.close()

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str, **query: str) -> str:
        url = self.base_url + path
        if query:
            url += "?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())
        return url

    async def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        credential = await self._credential()
        if credential:
            headers["Authorization"] = f"token {credential}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        **query: str,
    ) -> Any:
        request = HTTPRequest(
            self.url(path, **query),
            method=method,
            headers=await self.headers(),
            body=json.dumps(body)
            if body is not None
            else (b"" if method in ("POST", "PUT") else None),
            connect_timeout=min(10.0, timeout or self.timeout),
            request_timeout=timeout or self.timeout,
            allow_nonstandard_methods=True,
            ssl_options=self.ssl,
        )
        try:
            response = await self.http.fetch(request)
        except HTTPClientError as exc:
            if exc.code == 599 or exc.response is None:
                raise self._unreachable(exc) from None
            raise _error_from_response(exc.code, exc.response.body, self.what) from None
        except ssl.SSLCertVerificationError as exc:
            raise not_trusted(self.what, self.base_url, exc) from None
        except OSError as exc:
            raise self._unreachable(exc) from None
        return json.loads(response.body) if response.body else None

    def _unreachable(self, exc: BaseException) -> UnavailableError:
        where = self.unix_socket or self.base_url
        detail = getattr(exc, "strerror", None) or str(exc)
        message = f"cannot reach {self.what} at {where} ({detail})"
        return UnavailableError(message + (f": {self.hint}" if self.hint else ""))


def _error_from_response(code: int, body: bytes, what: str) -> HwschedError:
    try:
        message = json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        message = f"{what} answered HTTP {code}"
    return error_for_status(code, str(message))


def fixed(token: str) -> Credential:
    """The same token for every request ('' sends none)."""

    async def credential() -> str:
        return token

    return credential

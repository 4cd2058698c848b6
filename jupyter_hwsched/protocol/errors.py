"""The package's exceptions: one base, each kind carrying the HTTP status it maps to.

Services turn these into a JSON body ``{"message": ...}`` in one place
(:class:`jupyter_hwsched.protocol.handler.ErrorMapping`); clients turn such a body back into
the same class (:mod:`jupyter_hwsched.protocol.http`), so a user's mistake reads the same
wherever it is reported.
"""

from __future__ import annotations


class HwschedError(Exception):
    """Base of every error this package raises on purpose."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RequestError(HwschedError):
    """The user asked for something malformed or impossible; the message says what to change."""

    status = 400


class AuthError(HwschedError):
    """A missing or wrong token."""

    status = 401


class ForbiddenError(HwschedError):
    """The caller may not act on this object."""

    status = 403


class NotFoundError(HwschedError):
    """No such node, session or share."""

    status = 404


class ConflictError(HwschedError):
    """The object is in a state that does not allow the action."""

    status = 409


class TooLargeError(HwschedError):
    """A request body over the service's limit; the message says the limit."""

    status = 413


class TooManyRequestsError(HwschedError):
    """The caller already has as much waiting as one caller may; the message says how much."""

    status = 429


class UnavailableError(HwschedError):
    """A service could not be reached, or could not do the work now."""

    status = 503


class VersionError(HwschedError):
    """The peer speaks another protocol version; the message says which side to upgrade."""

    status = 426


class SessionEnded(HwschedError):
    """The session ended (released, expired, failed) while the caller was using it."""

    status = 410


class KernelStartError(SessionEnded):
    """The session's kernel or command could not start; the message carries its own first
    lines. Its session has ended, its GPUs are back."""


_BY_STATUS: dict[int, type[HwschedError]] = {
    cls.status: cls
    for cls in (
        RequestError,
        AuthError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        SessionEnded,
        TooLargeError,
        TooManyRequestsError,
        UnavailableError,
        VersionError,
    )
}


def error_for_status(status: int, message: str) -> HwschedError:
    """The exception a client raises for an error response with this status and message."""
    return _BY_STATUS.get(status, HwschedError)(message)

"""TLS for every link between machines: contexts for servers and clients, and the rule that
no credential travels in the clear off this machine.

A client verifies the server against the pool CA (``HWSCHED_CA``, or the client's own
setting). Plain ``http``/``ws`` is allowed to a loopback address only, where nothing crosses
a network, unless the deployment says otherwise (``HWSCHED_ALLOW_INSECURE=1``, for a network
it trusts).
"""

from __future__ import annotations

import ipaddress
import ssl
from urllib.parse import urlsplit

from jupyter_hwsched.protocol import settings as env
from jupyter_hwsched.protocol.errors import RequestError


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """What a service serves TLS with: its host certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


def client_context(ca_file: str) -> ssl.SSLContext:
    """What a client verifies servers with: the pool CA, and the names in their certificates."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise RequestError(
            f"the pool CA file {ca_file} cannot be read as a certificate ({exc}): set "
            f"{env.CA_VARIABLE} to the pool's ca.pem"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def not_trusted(what: str, where: str, exc: BaseException) -> RequestError:
    """A server whose certificate the pool CA did not issue, or not for that name."""
    reason = getattr(exc, "verify_message", "") or str(exc)
    return RequestError(
        f"{what} at {where} presents a certificate this client does not trust ({reason}): "
        f"set {env.CA_VARIABLE} to the pool's ca.pem, and use the name or address its "
        "certificate was issued for"
    )


def is_loopback(host: str) -> bool:
    if host in ("localhost", "unix-socket"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str, allow_insecure: bool | None = None) -> bool:
    """Whether ``url`` is TLS; refuse plain text to anything but loopback unless allowed."""
    parts = urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    if secure or is_loopback(parts.hostname or ""):
        return secure
    if allow_insecure is None:
        allow_insecure = env.allow_insecure()
    if not allow_insecure:
        raise RequestError(
            f"refusing plain {parts.scheme} to {what} at {parts.netloc}: tokens and code would "
            "cross the network in the clear. Use its https:// address with the pool CA "
            f"(set {env.CA_VARIABLE}), or set {env.INSECURE_VARIABLE}=1 on a network you trust"
        )
    return False

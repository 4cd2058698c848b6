"""Who makes a request: credentials signed by keys the pool CA certified, and their check.

A credential is a short-lived JSON Web Token (ES256) whose header carries the certificate of
the key that signed it (``x5c``). The certificate says who vouches: a developer **machine**
(its root share agent signs for the OS user it learned from ``SO_PEERCRED``), a **node**
(signing for itself), or an **operator**. So root on a developer machine can speak for that
machine's users only: a credential for ``ann`` signed with the key of ``dev-1`` makes
``ann@dev-1``, never ``ann@dev-2``, a node or an operator. The pool's shared token, where a
deployment still sets one, is the operator's and nobody else's.

:class:`Signer` makes credentials, :class:`Verifier` checks them against the CA, the
certificate's role and the revocation list, and gives the :class:`Principal` that asked.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jupyter_hwsched.protocol.errors import AuthError, RequestError
from jupyter_hwsched.protocol.http import Credential
from jupyter_hwsched.protocol.pki import holder
from jupyter_hwsched.protocol.records import Identity

AUDIENCE = "hwsched"
ALGORITHM = "ES256"
#: how long a credential is good for; clients fetch a new one before it runs out
CREDENTIAL_SECONDS = 300
#: clock difference between machines that a check forgives
LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, once its credential is checked."""

    kind: str  # "user", "node" or "operator"
    name: str  # the user's, node's or operator's name
    machine: str = ""  # for a user: the developer machine that vouched for them
    user: Identity | None = None  # for a user: their account on that machine

    @property
    def label(self) -> str:
        """``ann@dev-1``, ``node gpu-3``, ``operator ops``: for messages and logs."""
        return f"{self.name}@{self.machine}" if self.kind == "user" else f"{self.kind} {self.name}"

    @property
    def operator(self) -> bool:
        return self.kind == "operator"

    def is_user(self, name: str, machine: str) -> bool:
        return self.kind == "user" and (self.name, self.machine) == (name, machine)

    def is_node(self, name: str | None) -> bool:
        return self.kind == "node" and self.name == name


OPERATOR = Principal("operator", "pool-token")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Signer:
    """Makes credentials with a certificate and key that the pool CA issued."""

    def __init__(self, cert_file: str | Path, key_file: str | Path) -> None:
        pem = Path(cert_file).read_bytes()
        self.name, self.role = holder(pem)
        self.cert_der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AuthError(f"{key_file} is not an EC key from 'hwsched pki issue'")
        self.key = key

    def _sign(self, claims: dict[str, Any], seconds: int) -> str:
        now = int(time.time())
        body = {
            **claims,
            "iss": self.name,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + seconds,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(
            body, self.key, algorithm=ALGORITHM, headers={"x5c": [_b64(self.cert_der)]}
        )

    def for_user(self, user: Identity, seconds: int = CREDENTIAL_SECONDS) -> str:
        """A credential for one OS user of this machine (machine certificates only)."""
        if self.role != "machine":
            raise AuthError(f"a {self.role} certificate cannot vouch for users")
        return self._sign({"sub": user.name, "user": user.to_json()}, seconds)

    def for_self(self, seconds: int = CREDENTIAL_SECONDS) -> str:
        """A credential for the holder itself (a node, an operator)."""
        return self._sign({"sub": self.name}, seconds)


class Verifier:
    """Checks credentials against the pool CA, the certificate's role and revocations."""

    def __init__(
        self,
        ca_file: str | Path,
        operator_token: str = "",
        revoked: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes())
        self.operator_token = operator_token
        self.revoked = revoked

    def verify(self, token: str) -> Principal:
        """The principal a credential (or the operator's token) stands for, or AuthError."""
        if self.operator_token and hmac.compare_digest(
            token.encode(), self.operator_token.encode()
        ):
            return OPERATOR
        try:
            header = jwt.get_unverified_header(token)
            cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
        except (jwt.PyJWTError, KeyError, IndexError, TypeError, ValueError):
            raise AuthError(
                "the credential is not one this pool issues: clients get theirs from the "
                "share agent on their machine (HWSCHED_SHARE_SOCKET), nodes sign with their "
                "certificate from 'hwsched pki issue'"
            ) from None
        name, role = self._certified(cert)
        try:
            claims = jwt.decode(
                token,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(
                "the credential has expired: ask the share agent for a new one"
            ) from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the credential does not check out ({exc})") from None
        if claims["iss"] != name:
            raise AuthError(f"the credential names {claims['iss']!r}, its certificate {name!r}")
        if role == "machine":
            user = _user_claim(claims)
            principal = Principal("user", user.name, name, user)
            self._not_revoked(f"{user.name}@{name}")
            return principal
        if claims["sub"] != name:
            raise AuthError(f"a {role} certificate speaks only for {name}, not {claims['sub']!r}")
        return Principal("operator" if role == "operator" else "node", name)

    def _certified(self, cert: x509.Certificate) -> tuple[str, str]:
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, Exception) as exc:  # InvalidSignature has no message
            raise AuthError(
                "the credential's certificate was not issued by this pool's CA "
                f"({type(exc).__name__}): use a certificate from this pool's 'hwsched pki issue'"
            ) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AuthError(
                "the credential's certificate has expired: have the operator reissue it"
            )
        name, role = holder(cert.public_bytes(serialization.Encoding.PEM))
        if role not in ("machine", "node", "operator"):
            raise AuthError(f"a {role or 'role-less'} certificate cannot make credentials")
        self._not_revoked(name)
        return name, role

    def _not_revoked(self, name: str) -> None:
        if name in self.revoked():
            raise AuthError(f"the credential of {name} has been revoked by the pool's operator")


def _user_claim(claims: dict[str, Any]) -> Identity:
    try:
        user = Identity.from_json(claims.get("user"))
    except RequestError:
        raise AuthError("the credential does not say which account it is for") from None
    if user.name != claims["sub"]:
        raise AuthError("the credential's user does not match its subject")
    return user


def cached(make: Callable[[], Awaitable[str]], seconds: int = CREDENTIAL_SECONDS) -> Credential:
    """A credential source that asks ``make`` for a new credential only when the last one is
    within a minute of expiring."""
    held: dict[str, Any] = {"token": "", "until": 0.0}

    async def credential() -> str:
        if time.monotonic() >= held["until"]:
            held["token"] = await make()
            held["until"] = time.monotonic() + max(1, seconds - 60)
        return str(held["token"])

    return credential


def signed(signer: Signer, user: Identity | None = None) -> Credential:
    """Credentials this signer makes: for ``user`` (a machine's), or for itself (a node's)."""

    async def make() -> str:
        return signer.for_user(user) if user is not None else signer.for_self()

    return cached(make)

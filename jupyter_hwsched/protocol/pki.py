"""The pool's certificate authority: a CA, and certificates it issues to the pool's hosts.

Every link between machines is TLS with certificates of one pool CA: the scheduler and each
node agent serve with a host certificate whose names are the addresses clients use, and
clients verify against the CA. An operator makes the CA once (``hwsched pki init``) and
issues a certificate per host (``hwsched pki issue``); ``hwsched up`` does both for the
one-machine pool. Keys are written 0600; the CA key never leaves the operator's directory.

Certificates name their holder in the subject's common name and its role (``scheduler``,
``node``, ``machine``, ``operator``) in the organizational unit, so that a credential checked
against the CA also says what its holder is.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jupyter_hwsched.protocol.errors import RequestError

ROLES = ("scheduler", "node", "machine", "operator")
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
CA_DAYS, HOST_DAYS = 3650, 365


@dataclass(frozen=True)
class Issued:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """A key: readable by its owner alone (its directory may hold certificates for all)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def init_ca(directory: Path, name: str = "hwsched pool CA") -> Issued:
    """Make the pool's CA in ``directory`` (an existing one is kept as it is)."""
    issued = Issued(directory / CA_CERT, directory / CA_KEY)
    if issued.cert.exists() and issued.key.exists():
        return issued
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(issued.key, _key_pem(key))
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return issued


def issue(
    ca_dir: Path,
    name: str,
    role: str,
    out_dir: Path,
    addresses: tuple[str, ...] = (),
    days: int = HOST_DAYS,
) -> Issued:
    """Issue a certificate for ``name`` in ``role``, valid for the host names and IP
    addresses in ``addresses`` (and ``name`` itself); write it and its key to ``out_dir``."""
    if role not in ROLES:
        raise RequestError(f"role {role!r} is not one of {', '.join(ROLES)}")
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise RequestError(f"{ca_dir / CA_KEY} is not the pool CA's key")
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for entry in dict.fromkeys((name, *addresses)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(out_dir / f"{name}.pem", out_dir / f"{name}-key.pem")
    _write_private(issued.key, _key_pem(key))
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return issued


def holder(cert_pem: bytes) -> tuple[str, str]:
    """(name, role) that a certificate names."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return (str(cn[0].value) if cn else "", str(ou[0].value) if ou else "")

"""Versions: the package's, and the protocol's that the machines of a pool speak.

The protocol version changes whenever a message between machines changes shape. Node
registration carries it in its body and every client call in the ``Hwsched-Protocol`` header,
so that a pool of mixed versions fails with one line that says what to upgrade, rather than
in odd ways further on.
"""

from __future__ import annotations

from jupyter_hwsched.protocol.errors import VersionError

__version__ = "0.1.0"

#: the version of the messages between scheduler, node agents and clients
PROTOCOL_VERSION = 1
#: the header every client call carries its protocol version in
PROTOCOL_HEADER = "Hwsched-Protocol"


def check_protocol(theirs: object, who: str, me: str) -> None:
    """Refuse a peer that speaks another protocol version, naming both and what to do.

    ``who`` names the peer ("node gpu-3", "this client"), ``me`` this side ("this scheduler").
    """
    if theirs == PROTOCOL_VERSION:
        return
    spoken = f"protocol {theirs}" if theirs not in (None, "") else "no protocol version"
    newer = isinstance(theirs, int) and theirs > PROTOCOL_VERSION
    upgrade = me if newer else who
    raise VersionError(
        f"{who} speaks {spoken}, {me} protocol {PROTOCOL_VERSION}: upgrade jupyter-hwsched "
        f"on {upgrade} so that both speak the same protocol"
    )


def header_version(value: str | None) -> int | str | None:
    """The version a ``Hwsched-Protocol`` header gives (None: no header)."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else value

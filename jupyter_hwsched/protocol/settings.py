"""Where every part finds the scheduler by default: one reading of the environment.

Each part has traits of its own (``c.HwschedClient.url``, ``c.AgentApp.scheduler_url``, ...)
whose defaults come from here, read when the trait is first used, never at import time.
Developer machines also look for the pool of ``hwsched up`` when these are unset.
"""

from __future__ import annotations

import os

URL_VARIABLE = "HWSCHED_URL"
TOKEN_VARIABLE = "HWSCHED_TOKEN"
SHARE_SOCKET_VARIABLE = "HWSCHED_SHARE_SOCKET"
CA_VARIABLE = "HWSCHED_CA"
INSECURE_VARIABLE = "HWSCHED_ALLOW_INSECURE"
#: the scheduler's port where none is given ('hwsched scheduler', 'hwsched up')
DEFAULT_SCHEDULER_PORT = 8765


def scheduler_url() -> str:
    """The scheduler's URL from the environment, or ''."""
    return os.environ.get(URL_VARIABLE, "")


def scheduler_token() -> str:
    """The scheduler's token from the environment, or ''."""
    return os.environ.get(TOKEN_VARIABLE, "")


def read_secret(path: str) -> str:
    """A secret kept in a file (its first line): secrets never go on a command line, where
    every user of the machine can read them."""
    with open(path) as f:
        return f.readline().strip()


def share_socket() -> str:
    """The local share agent's unix socket from the environment, or ''."""
    return os.environ.get(SHARE_SOCKET_VARIABLE, "")


def ca_file() -> str:
    """The pool CA's certificate file from the environment, or '' (the system's CAs)."""
    return os.environ.get(CA_VARIABLE, "")


def allow_insecure() -> bool:
    """Whether plain http/ws to a non-loopback address is allowed (a trusted network)."""
    return os.environ.get(INSECURE_VARIABLE, "") in ("1", "true", "yes")

"""Client settings: where the scheduler and the share agent are, and the token.

Each setting is a trait, so ``c.HwschedClient.url = ...`` in a Jupyter or IPython config file
works; environment variables are the defaults, and with neither, the pool that ``hwsched up``
started for this user is found through its discovery file.
"""

from __future__ import annotations

import os

from traitlets import Float, List, Unicode, default
from traitlets.config import LoggingConfigurable

from jupyter_hwsched.developer.discovery import read_discovery
from jupyter_hwsched.protocol import settings as env
from jupyter_hwsched.protocol.clients import SchedulerClient, ShareClient
from jupyter_hwsched.protocol.errors import UnavailableError
from jupyter_hwsched.protocol.http import Credential
from jupyter_hwsched.protocol.identity import cached

KEEP_WARM_VARIABLE = "HWSCHED_KEEP_WARM"
PRELOAD_VARIABLE = "HWSCHED_PRELOAD"


class HwschedClient(LoggingConfigurable):
    """Where a client finds the pool."""

    url = Unicode(config=True, help="The scheduler's URL (env HWSCHED_URL).")
    token = Unicode(config=True, help="The scheduler's token (env HWSCHED_TOKEN).")
    share_socket = Unicode(
        config=True, help="The local share agent's unix socket (env HWSCHED_SHARE_SOCKET)."
    )
    ca_file = Unicode(
        config=True,
        help="The pool CA's certificate, to verify the scheduler and the node agents over TLS "
        "(env HWSCHED_CA; '' with an http:// scheduler on this machine).",
    )
    poll_interval = Float(0.25, config=True, help="Seconds between queue position checks.")
    idle_timeout = Float(
        900.0,
        config=True,
        help="Seconds after its last cell that a session kept with %%hwrun --keep is released.",
    )

    keep_warm = Float(
        config=True,
        help="Seconds a node keeps your container, your share's mount and a ready kernel after "
        "a session ends, so that your next session there starts warm (env HWSCHED_KEEP_WARM; "
        "0, the default: nothing is kept). Your share stays open to that node meanwhile; "
        "'hwsched warm end' ends it.",
    )
    preload = List(
        Unicode(),
        config=True,
        help="Modules a kept kernel imports ahead, e.g. ['torch'] (env HWSCHED_PRELOAD, "
        "comma-separated).",
    )

    @default("keep_warm")
    def _keep_warm_default(self) -> float:
        value = os.environ.get(KEEP_WARM_VARIABLE, "").strip()
        try:
            return float(value) if value else 0.0
        except ValueError:
            raise UnavailableError(
                f"{KEEP_WARM_VARIABLE}={value!r} is not a number of seconds"
            ) from None

    @default("preload")
    def _preload_default(self) -> list[str]:
        value = os.environ.get(PRELOAD_VARIABLE, "")
        return [name.strip() for name in value.split(",") if name.strip()]

    @default("url")
    def _url_default(self) -> str:
        return env.scheduler_url() or str(read_discovery().get("url", ""))

    @default("token")
    def _token_default(self) -> str:
        return env.scheduler_token() or str(read_discovery().get("token", ""))

    @default("share_socket")
    def _share_socket_default(self) -> str:
        return env.share_socket() or str(read_discovery().get("share_socket", ""))

    def check(self) -> None:
        """Fail early, saying what to set, when the pool cannot be found at all."""
        if not self.url:
            raise UnavailableError(
                "no GPU pool configured: start one with 'hwsched up', or set HWSCHED_URL "
                "and HWSCHED_TOKEN to your cluster's scheduler"
            )

    @default("ca_file")
    def _ca_file_default(self) -> str:
        return env.ca_file() or str(read_discovery().get("ca_file", ""))

    def credential(self) -> str | Credential:
        """What requests to the scheduler carry: the token where one is set (a pool without
        identities, or an operator), else credentials this machine's share agent signs for
        this OS user."""
        if self.token or not self.share_socket:
            return self.token
        socket_path = self.share_socket

        async def from_share_agent() -> str:
            async with ShareClient(socket_path) as share:
                return await share.credential()

        return cached(from_share_agent)

    def scheduler(self) -> SchedulerClient:
        """A client of the scheduler these settings name (close it, or use ``async with``)."""
        self.check()
        return SchedulerClient(self.url, self.credential(), self.ca_file)

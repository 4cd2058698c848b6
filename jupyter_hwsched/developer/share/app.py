"""``hwsched share``: the share agent, serving a unix socket on the developer machine.

A local client asks it to open a share for a session; the agent learns who asks from the
socket's peer credentials (``SO_PEERCRED``), so a user can only ever export as themselves. It
closes a share when the client says so, and also on its own once the scheduler reports the
session ended or gone, so a client killed mid-run leaves no share open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from jupyter_core.paths import jupyter_runtime_dir
from tornado import ioloop, web
from tornado.netutil import bind_unix_socket
from traitlets import Bool, Float, List, Unicode, default

from jupyter_hwsched.developer.environment import identity_of
from jupyter_hwsched.developer.share.hotset import HotSets, take_manifest
from jupyter_hwsched.developer.share.sftp import SftpShare, check_share_user
from jupyter_hwsched.protocol import settings as env
from jupyter_hwsched.protocol.appconfig import ConfigFileApp
from jupyter_hwsched.protocol.cache_manifest import (
    CacheManifest,
    expand_home,
    under,
    valid_tree,
)
from jupyter_hwsched.protocol.clients import SchedulerClient
from jupyter_hwsched.protocol.errors import (
    ForbiddenError,
    HwschedError,
    NotFoundError,
    RequestError,
    UnavailableError,
)
from jupyter_hwsched.protocol.handler import JsonHandler
from jupyter_hwsched.protocol.identity import Signer, signed
from jupyter_hwsched.protocol.records import HOLDING_STATES, MAX_KEEP_WARM, ShareGrant
from jupyter_hwsched.protocol.serving import ServerLimits, limited_server


def peer_uid(handler: web.RequestHandler) -> int:
    sock = handler.request.connection.stream.socket  # type: ignore[union-attr]
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ShareHandlerBase(JsonHandler):
    agent: ShareAgent
    surface = "this share agent"

    def caller(self) -> pwd.struct_passwd:
        uid = peer_uid(self)
        if os.geteuid() != 0 and uid != os.geteuid():
            raise ForbiddenError(
                "this share agent runs as another user and can only share as that user: "
                "start your own with 'hwsched share'"
            )
        return pwd.getpwuid(uid)


class SharesHandler(ShareHandlerBase):
    def get(self) -> None:
        """Every open share: those of live sessions, and those kept for warm leases (with
        ``warm_lease``, the lease's id)."""
        uid = peer_uid(self)
        lease_of = {id(lease.share): lease.id for lease in self.agent.leases.values()}
        shares = [*self.agent.shares.values(), *(x.share for x in self.agent.leases.values())]
        unique = {id(share): share for share in shares}  # a lease's share may be in use
        self.write_json(
            [
                dict(share.describe(), warm_lease=lease_of.get(key))
                for key, share in unique.items()
                if uid in (0, share.user.pw_uid)
            ]
        )

    async def post(self) -> None:
        body = self.json_body()
        session_id = body.get("session_id")
        if not isinstance(session_id, str) or not session_id.isalnum():
            raise RequestError("session_id must be the scheduler's session id")
        trees = body.get("cache_trees", [])
        if not isinstance(trees, list) or not all(valid_tree(t) for t in trees):
            raise RequestError(
                "cache_trees must list absolute, normalised directories other than /, "
                "without ':', ',' or '\\'"
            )
        keep_warm = body.get("keep_warm", 0)
        if not isinstance(keep_warm, (int, float)) or not 0 <= keep_warm <= MAX_KEEP_WARM:
            raise RequestError(f"keep_warm must be seconds from 0 to {MAX_KEEP_WARM}")
        grant = await self.agent.open(session_id, self.caller(), trees, float(keep_warm))
        self.write_json(grant.to_json(), status=201)


class CredentialsHandler(ShareHandlerBase):
    """A credential for the calling OS user, signed with this machine's certificate: how a
    client proves to the scheduler who it is (the user comes from the socket, not a claim)."""

    def post(self) -> None:
        self.write_json({"credential": self.agent.credential_for(self.caller())}, status=201)


class HotSetHandler(ShareHandlerBase):
    """DELETE: forget the caller's hot set, and have nodes drop their copies of the caller's
    files the next time they serve them ('hwsched cache forget')."""

    def delete(self) -> None:
        user = self.caller()
        purge_ns = self.agent.hot_sets.forget(user.pw_uid)
        self.write_json({"user": user.pw_name, "purge_ns": purge_ns})


class ShareHandler(ShareHandlerBase):
    async def delete(self, session_id: str) -> None:
        share = self.agent.shares.get(session_id)
        if share is None:
            raise NotFoundError(f"no open share for session {session_id}")
        uid = peer_uid(self)
        if uid not in (0, share.user.pw_uid):
            raise ForbiddenError("this share belongs to another user")
        keep = self.get_argument("keep", "") == "1"
        await self.agent.close(session_id, "closed by the client", keep=keep)
        self.write_json({"closed": session_id, "kept": session_id in self.agent.kept()})


class LeasesHandler(ShareHandlerBase):
    """GET: the caller's warm leases (all of them for root)."""

    def get(self) -> None:
        uid = peer_uid(self)
        self.write_json(
            [lease.describe() for lease in self.agent.leases.values() if uid in (0, lease.uid)]
        )


class LeaseHandler(ShareHandlerBase):
    """DELETE: end a warm lease ('hwsched warm end'): its share closes, so the node drops
    what it kept when it next checks the mount."""

    async def delete(self, lease_id: str) -> None:
        lease = self.agent.leases.get(lease_id)
        if lease is None:
            raise NotFoundError(f"no warm lease {lease_id}")
        if peer_uid(self) not in (0, lease.uid):
            raise ForbiddenError("this warm lease belongs to another user")
        await self.agent.end_lease(lease, "ended by the developer")
        self.write_json({"ended": lease_id})


class ShareAgent:
    """The open shares, and the watcher that closes those whose session has ended."""

    def __init__(self, app: ShareAgentApp) -> None:
        self.app = app
        self.log = app.log
        self.shares: dict[str, SftpShare] = {}
        self.signer = Signer(app.machine_cert, app.machine_key) if app.machine_cert else None
        self._schedulers: dict[int, SchedulerClient] = {}
        self.hot_sets = HotSets(Path(app.hot_dir))
        self.trees: dict[str, list[str]] = {}  # the cached trees of each open share
        self.leases: dict[str, ShareLease] = {}  # warm leases, by id

    def credential_for(self, user: pwd.struct_passwd) -> str:
        if self.signer is None:
            raise NotFoundError(
                "this share agent has no machine certificate, so the pool has no identities: "
                "clients use the pool token (HWSCHED_TOKEN)"
            )
        return self.signer.for_user(identity_of(user))

    def scheduler(self, user: pwd.struct_passwd) -> SchedulerClient:
        """The scheduler, asked as ``user`` (the pool token where there are no identities)."""
        client = self._schedulers.get(user.pw_uid)
        if client is None:
            credential = signed(self.signer, identity_of(user)) if self.signer else self.app.token
            client = SchedulerClient(self.app.scheduler_url, credential, self.app.ca_file)
            self._schedulers[user.pw_uid] = client
        return client

    async def open(
        self,
        session_id: str,
        user: pwd.struct_passwd,
        trees: list[str] | None = None,
        keep_warm: float = 0,
    ) -> ShareGrant:
        if session_id in self.shares:
            raise RequestError(f"session {session_id} already has a share")
        session = await self.scheduler(user).session(session_id)
        if session.state not in HOLDING_STATES:
            raise RequestError(
                f"session {session_id} is {session.state}: a share opens once it is placed"
            )
        if user.pw_uid != 0 and session.user != user.pw_name:
            raise ForbiddenError(f"session {session_id} belongs to another user")
        check_share_user(user)
        if session.placement is None:
            raise RequestError(f"session {session_id} has no node to share with")
        # a session that asks to be kept warm may start in what a lease keeps
        lease = self._free_lease(user, session.placement.agent_url) if keep_warm > 0 else None
        if lease is not None:
            return await self._reuse(lease, session_id, trees, keep_warm)
        node_addresses = await addresses_of(session.placement.agent_url)
        share = SftpShare(
            session_id=session_id,
            user=user,
            directory=Path(self.app.state_dir) / session_id,
            ip=self.app.listen_ip,
            root=self.app.root,
            sshd_path=self.app.sshd_path,
            allowed_from=node_addresses,
            sftp_server_path=self.app.sftp_server_path,
            log_opens=self.caching(trees),
        )
        self.shares[session_id] = share
        loop = asyncio.get_running_loop()
        try:
            creds = await loop.run_in_executor(None, share.open)
            if self.caching(trees):
                assert trees is not None
                self.trees[session_id] = trees
                log = str(share.opens_log) if share.sftp_command != "internal-sftp" else ""
                manifest = await loop.run_in_executor(None, self.manifest, user, trees, log)
                creds = replace(creds, cache=manifest)
        except BaseException:
            self.shares.pop(session_id, None)
            await asyncio.get_running_loop().run_in_executor(None, share.close)
            raise
        self.log.info(
            "share for session %s opened as %s on port %d", session_id, user.pw_name, share.port
        )
        if keep_warm > 0 and self.app.keep_warm_max > 0:
            keep = min(keep_warm, self.app.keep_warm_max)
            lease = ShareLease(session_id, share, session.placement.agent_url, creds, keep)
            lease.in_use = session_id
            lease.trees = list(trees or [])
            self.leases[session_id] = lease
            creds = replace(creds, lease=session_id)
        return creds

    def _free_lease(self, user: pwd.struct_passwd, node_url: str) -> ShareLease | None:
        """The user's warm lease with that node that no session uses, if any."""
        for lease in self.leases.values():
            if lease.uid == user.pw_uid and lease.node_url == node_url and not lease.in_use:
                return lease
        return None

    async def _reuse(
        self, lease: ShareLease, session_id: str, trees: list[str] | None, keep_warm: float
    ) -> ShareGrant:
        """The lease's share for a new session: the same credentials, a fresh manifest (by
        which the node checks what it kept), the lease named."""
        lease.in_use, lease.ended = session_id, 0.0
        lease.keep = min(keep_warm, self.app.keep_warm_max) if keep_warm else lease.keep
        self.shares[session_id] = lease.share
        # the manifest of the trees this session asks for: where they are not those the
        # node's views serve, or a file of them changed, the node starts the session cold
        wanted = list(trees or [])
        manifest = None
        if self.caching(wanted):
            share = lease.share
            log = str(share.opens_log) if share.sftp_command != "internal-sftp" else ""
            loop = asyncio.get_running_loop()
            manifest = await loop.run_in_executor(None, self.manifest, share.user, wanted, log)
        lease.trees = wanted
        creds = replace(lease.creds, lease=lease.id, cache=manifest)
        self.log.info("session %s uses warm lease %s", session_id, lease.id)
        return creds

    def kept(self) -> set[str]:
        """The sessions whose shares are kept, idle, for their leases."""
        return {lease.id for lease in self.leases.values() if not lease.in_use}

    async def end_lease(self, lease: ShareLease, why: str) -> None:
        """Close a lease's share (any session still on it loses its share too)."""
        self.leases.pop(lease.id, None)
        for session_id, share in list(self.shares.items()):
            if share is lease.share:
                self.shares.pop(session_id, None)
        await asyncio.get_running_loop().run_in_executor(None, lease.share.close)
        self.log.info("warm lease %s ended: %s", lease.id, why)

    def caching(self, trees: list[str] | None) -> bool:
        """Whether a share with these trees keeps a hot set and sends a manifest: the
        manifest's paths are the developer's, so the share must export the whole root."""
        return bool(trees) and self.app.cache and self.app.root == "/"

    def manifest(self, user: pwd.struct_passwd, trees: list[str], log: str) -> CacheManifest | None:
        """The manifest of the user's hot set under ``trees``, taken as that user (blocking).
        None, logged, where it cannot be taken: the session then runs without the cache."""
        hot, never = self.hot_sets.load(user.pw_uid), expand_home(self.app.never_cache, user.pw_dir)
        purge_ns = self.hot_sets.purge_ns(user.pw_uid)
        if os.geteuid() != 0 or user.pw_uid == 0:
            return take_manifest(hot, trees, never, log, purge_ns)
        request = {"hot": hot, "trees": trees, "never": never, "log": log, "purge_ns": purge_ns}
        try:
            child = subprocess.run(
                [sys.executable, "-m", "jupyter_hwsched.developer.share.hotset"],
                input=json.dumps(request).encode(),
                capture_output=True,
                timeout=120,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=os.getgrouplist(user.pw_name, user.pw_gid),
                env={"PATH": os.defpath, "LANG": "C.UTF-8"},
                cwd="/",
            )
            if child.returncode != 0:
                raise ValueError(child.stderr.decode(errors="replace")[-400:])
            return CacheManifest.from_json(json.loads(child.stdout))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.log.warning("no cache manifest for %s: %s", user.pw_name, exc)
            return None

    async def close(self, session_id: str, why: str, keep: bool = False) -> None:
        """Close a session's share; ``keep``: its client ended it asking to keep it warm, so
        a share that is a lease's stays open for that lease's node until its idle time."""
        share = self.shares.get(session_id)
        lease = next((x for x in self.leases.values() if x.share is share), None)
        if share is not None and lease is not None and lease.in_use == session_id:
            if keep:
                self.shares.pop(session_id, None)
                self.trees.pop(session_id, None)
                lease.in_use, lease.expires, lease.ended = "", time.time() + lease.keep, 0.0
                if lease.trees:
                    read = [p for p in share.opened_paths() if under(p, lease.trees)]
                    self.hot_sets.record(share.user.pw_uid, read)
                self.log.info("share of session %s kept for warm lease %s", session_id, lease.id)
                return
            self.leases.pop(lease.id, None)
        share = self.shares.pop(session_id, None)
        trees = self.trees.pop(session_id, None) or (lease.trees if lease else None)
        if share is not None:
            if trees:
                read = [p for p in share.opened_paths() if under(p, trees)]
                self.hot_sets.record(share.user.pw_uid, read)
            await asyncio.get_running_loop().run_in_executor(None, share.close)
            self.log.info("share for session %s closed: %s", session_id, why)

    async def watch(self) -> None:
        """Close shares whose session the scheduler reports ended or unknown, and warm leases
        past their idle time."""
        now = time.time()
        for lease in list(self.leases.values()):
            if not lease.in_use and lease.expires <= now:
                await self.end_lease(lease, "idle for its keep-warm time")
        for session_id, share in list(self.shares.items()):
            kept = next((x for x in self.leases.values() if x.in_use == session_id), None)
            if kept is not None and kept.ended and now - kept.ended < LEASE_GRACE:
                continue  # its client is about to say whether the node kept the session
            try:
                session = await self.scheduler(share.user).session(session_id)
            except NotFoundError:
                await self.close(session_id, "the scheduler does not know the session")
                continue
            except HwschedError as exc:
                self.log.warning("cannot check session %s: %s", session_id, exc)
                continue
            if session.state == "ended":
                if kept is not None and not kept.ended:
                    # the node reports the end before the client closes the share, keeping
                    # it or not: wait for the client that long, no longer
                    kept.ended = now
                    continue
                await self.close(session_id, f"session ended ({session.end_reason})")

    async def close_all(self) -> None:
        for lease in list(self.leases.values()):
            await self.end_lease(lease, "the share agent is stopping")
        for session_id in list(self.shares):
            await self.close(session_id, "the share agent is stopping")
        for client in self._schedulers.values():
            client.close()


#: how long a share kept for a warm lease waits, after its session ended, for its client to
#: say whether the node kept the session (the node tells the scheduler first)
LEASE_GRACE = 10.0


@dataclass
class ShareLease:
    """A share kept open, to one node only, between its developer's sessions there."""

    id: str  # the session it was opened for
    share: SftpShare
    node_url: str
    creds: ShareGrant
    keep: float  # seconds it stays after the session that used it last
    in_use: str = ""  # the session using it now
    expires: float = 0.0
    ended: float = 0.0  # when the scheduler first said its session ended (see watch)
    trees: list[str] = field(default_factory=list)

    @property
    def uid(self) -> int:
        return self.share.user.pw_uid

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "user": self.share.user.pw_name,
            "node": self.node_url,
            "in_use": self.in_use,
            "expires": self.expires if not self.in_use else None,
            "keep_warm": self.keep,
        }


async def addresses_of(url: str) -> tuple[str, ...]:
    """The addresses a node agent's URL names: the only ones its share will accept."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        return (host,)
    except ValueError:
        pass
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError as exc:
        raise UnavailableError(f"cannot resolve the placed node {host!r}: {exc}") from None
    return tuple(sorted({str(info[4][0]) for info in found}))


class ShareAgentApp(ConfigFileApp):
    name = "hwsched-share"
    description = "Export this machine's root over SFTP to GPU nodes, one session at a time."

    socket_path = Unicode(config=True, help="Unix socket that local clients ask for shares on.")
    state_dir = Unicode(config=True, help="Directory for the per-session keys and sshd configs.")
    listen_ip = Unicode(
        "127.0.0.1",
        config=True,
        help="Address the per-session sshd listens on (nodes connect here).",
    )
    root = Unicode("/", config=True, help="Directory exported as the container root.")
    sshd_path = Unicode("/usr/sbin/sshd", config=True, help="Absolute path of OpenSSH's sshd.")
    scheduler_url = Unicode(config=True, help="Scheduler URL, to close shares of ended sessions.")
    token = Unicode(config=True, help="Scheduler token (env HWSCHED_TOKEN).")
    ca_file = Unicode(
        config=True, help="The pool CA's certificate, to verify the scheduler (env HWSCHED_CA)."
    )
    machine_cert = Unicode(
        "",
        config=True,
        help="This machine's certificate from the pool CA ('hwsched pki issue --role machine'): "
        "with it the agent vouches for the machine's users. Keep its key readable by the "
        "agent alone.",
    )
    machine_key = Unicode("", config=True, help="The machine certificate's key.")
    check_interval = Float(2.0, config=True, help="Seconds between checks of the open sessions.")
    sftp_server_path = Unicode(
        "/usr/lib/openssh/sftp-server",
        config=True,
        help="OpenSSH's sftp-server: it serves shares with cached trees, and logs the files "
        "it opens so that nodes learn what to cache (internal-sftp keeps no such log).",
    )
    cache = Bool(
        True,
        config=True,
        help="Learn each user's hot set and send nodes a manifest of it, so that they serve "
        "the files of the cached trees from their cache.",
    )
    hot_dir = Unicode(
        config=True,
        help="Directory of the users' hot sets, one file per uid (default: 'hot' beside "
        "state_dir).",
    )
    keep_warm_max = Float(
        3600.0,
        config=True,
        help="The longest a share stays open for a warm lease after the session that used it "
        "last (a client's keep_warm is cut to it); 0 grants no warm leases.",
    )
    never_cache = List(
        Unicode(),
        ["~/.ssh", "~/.gnupg"],
        config=True,
        help="Paths no manifest names, so that no node caches them (~ is the user's home).",
    )

    aliases = {
        "config": "ShareAgentApp.config_file",
        "socket": "ShareAgentApp.socket_path",
        "state-dir": "ShareAgentApp.state_dir",
        "listen-ip": "ShareAgentApp.listen_ip",
        "root": "ShareAgentApp.root",
        "scheduler-url": "ShareAgentApp.scheduler_url",
    }

    @default("socket_path")
    def _socket_default(self) -> str:
        return env.share_socket() or str(Path(jupyter_runtime_dir()) / "hwsched-share.sock")

    @default("state_dir")
    def _state_default(self) -> str:
        if os.geteuid() == 0:
            return "/var/lib/hwsched/share"
        return str(Path.home() / ".local" / "state" / "hwsched" / "share")

    @default("hot_dir")
    def _hot_dir_default(self) -> str:
        # beside the state directory, whose contents go at every start
        return str(Path(self.state_dir).parent / "hot")

    @default("scheduler_url")
    def _url_default(self) -> str:
        return env.scheduler_url()

    @default("token")
    def _token_default(self) -> str:
        return env.scheduler_token()

    @default("ca_file")
    def _ca_file_default(self) -> str:
        return env.ca_file()

    def start(self) -> None:
        if not self.scheduler_url:
            # without the scheduler no share could be checked against its session, nor closed
            # when a killed client leaves it open
            self.log.critical("set --scheduler-url (or HWSCHED_URL): the share agent needs it")
            self.exit(2)
        asyncio.run(self.serve())

    def remove_leftovers(self) -> None:
        """Shares of a previous run of this agent (it was killed): stop their sshd, drop keys."""
        state = Path(self.state_dir)
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if not ("sshd" in cmd and f"{state}/" in cmd and "sshd_config" in cmd):
                continue
            self.log.warning("stopping a leftover share server: %s", cmd)
            try:
                victims = [*proc.children(recursive=True), proc]
            except psutil.Error:
                continue  # gone already
            for victim in victims:
                with contextlib.suppress(psutil.Error):  # gone with its parent
                    victim.kill()
        for leftover in state.glob("*"):
            shutil.rmtree(leftover, ignore_errors=True)

    async def serve(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True, mode=0o711)
        self.remove_leftovers()
        agent = ShareAgent(self)
        kw = {"agent": agent}
        app = web.Application(
            [
                (r"/shares", SharesHandler, kw),
                (r"/shares/(\w+)", ShareHandler, kw),
                (r"/credentials", CredentialsHandler, kw),
                (r"/hot", HotSetHandler, kw),
                (r"/leases", LeasesHandler, kw),
                (r"/leases/(\w+)", LeaseHandler, kw),
            ]
        )
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.state_dir).mkdir(parents=True, exist_ok=True, mode=0o711)
        sock = bind_unix_socket(self.socket_path, mode=0o666 if os.geteuid() == 0 else 0o600)
        server = limited_server(app, ServerLimits())  # requests and answers are small
        server.add_socket(sock)
        watcher = ioloop.PeriodicCallback(agent.watch, self.check_interval * 1000)
        watcher.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.log.info("hwsched share agent on %s, exporting %s", self.socket_path, self.root)
        print(f"HWSCHED_SHARE_READY {self.socket_path}", flush=True)
        await stop.wait()
        watcher.stop()
        server.stop()
        await agent.close_all()
        Path(self.socket_path).unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    """``hwsched share``."""
    ShareAgentApp.launch_instance(argv)

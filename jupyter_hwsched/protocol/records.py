"""Typed records for everything that crosses a machine boundary, each with its JSON form.

One class per thing: a GPU, a developer's identity, a share grant, what a client sends a node
agent to start a session, a session as the scheduler describes it (with its placement), a node's
registration and heartbeat. ``from_json`` validates untrusted input and raises
:class:`RequestError` naming the field; ``to_json`` writes exactly what goes on the wire.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, TypeGuard

from jupyter_hwsched.protocol.cache_manifest import CacheManifest
from jupyter_hwsched.protocol.errors import RequestError
from jupyter_hwsched.protocol.request import HardwareRequest

MAX_NAME = 200
MAX_PATH = 4096
#: Linux's limit on one argument or environment string of a program (MAX_ARG_STRLEN, less
#: the NUL), and what the argv and environment of a session's program may come to in all
#: (well under the kernel's ARG_MAX of a quarter of the stack, 2 MiB with 8 MiB)
MAX_ARG_BYTES = 128 * 1024 - 1
MAX_EXEC_BYTES = 1024 * 1024
#: the largest private key a share grant carries (an RSA-16384 key in OpenSSH's format is
#: about 12 KiB)
MAX_KEY = 16 * 1024
#: what a share's host, its account and its pinned host key look like: nothing that ssh or
#: sshfs could read as an option (a leading '-') or a shell could expand (in a ProxyCommand)
SHARE_HOST_PATTERN = r"[A-Za-z0-9:\[][A-Za-z0-9_.:%\[\]\-]{0,253}"
SHARE_USER_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.@\-]{0,199}\$?"
HOST_KEY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9@.\-]{0,99} [A-Za-z0-9+/=]{1,16384}( [ -~]{0,200})?"
#: ids are 32-bit, and (uid_t)-1 means "no change" to the kernel
MAX_ID = 2**32 - 1
#: Linux's NGROUPS_MAX
MAX_GROUPS = 65536
#: a name in a program's environment: anything but '=' and NUL
ENV_NAME_PATTERN = r"[^=\x00]{1,1024}"
#: what session ids and node names look like in URLs (the scheduler's routes, its OpenAPI)
SESSION_ID_PATTERN = r"[A-Za-z0-9_]{1,64}"
NODE_NAME_PATTERN = r"[A-Za-z0-9_.\-]{1,200}"
KINDS = ("kernel", "command")
LIVE_STATES = ("queued", "placed", "running")
HOLDING_STATES = ("placed", "running")


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RequestError(f"{what} must be a JSON object")
    return data


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def text_field(
    body: dict[str, Any], name: str, default: str | None = None, limit: int = MAX_NAME
) -> str:
    """A string field; without a default it must be present and non-empty."""
    value = body.get(name, default)
    if not isinstance(value, str) or (default is None and not value) or len(value) > limit:
        raise RequestError(f"field {name!r} must be a non-empty string of at most {limit}")
    return value


def _quoted(value: Any) -> str:
    """A value in an error message: quoted, and cut short if long."""
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:100]}... ({len(str(value))} characters)"


def _control_free(value: str) -> bool:
    return not any(ord(c) < 32 or ord(c) == 127 for c in value)


def checked_path(value: Any, what: str) -> str:
    """An absolute path as the node will use it: no NUL byte, no '..' (a path that climbs
    out of the directory it is looked up under), at most MAX_PATH long."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise RequestError(
            f"{what} must be an absolute path (starting with /), got {_quoted(value)}"
        )
    if len(value) > MAX_PATH:
        raise RequestError(f"{what} is {len(value)} characters long: at most {MAX_PATH}")
    if "\x00" in value:
        raise RequestError(f"{what} {_quoted(value)} holds a NUL byte, which no path can")
    if ".." in value.split("/"):
        raise RequestError(f"{what} {_quoted(value)} has a '..' in it: give the path without it")
    return value


def _exec_string(value: str, what: str) -> int:
    """A string that becomes an argument or environment string of a program: its size."""
    if "\x00" in value:
        raise RequestError(
            f"{what} holds a NUL byte, which a program cannot be given: {_quoted(value)}"
        )
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ARG_BYTES:
        raise RequestError(f"{what} is {size} bytes long: a program takes at most {MAX_ARG_BYTES}")
    return size


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise RequestError(f"{what} must be a list of strings")
    return list(value)


@dataclass(frozen=True)
class GpuRecord:
    """One GPU of a node, as its agent reports it (from NVML, or simulated)."""

    index: int
    uuid: str
    model: str  # short model, e.g. "A100-80GB"; what --gpu-type matches
    name: str  # the full name NVML reports, e.g. "NVIDIA A100-SXM4-80GB"
    memory: int  # bytes
    simulated: bool
    links: tuple[int, ...] = ()  # indices of the GPUs this one reaches over NVLink
    minor: int | None = None  # N of /dev/nvidiaN, which need not equal the NVML index

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["links"] = list(self.links)
        return out

    @classmethod
    def from_json(cls, gpu: Any) -> GpuRecord:
        if not isinstance(gpu, dict):
            raise RequestError("each GPU must be an object with index, model and memory")
        index, model, memory = gpu.get("index"), gpu.get("model"), gpu.get("memory")
        if not (_whole(index) and index >= 0):
            raise RequestError("a GPU's index must be a whole number, 0 or more")
        if not isinstance(model, str) or not model or len(model) > MAX_NAME:
            raise RequestError("a GPU's model must be a non-empty string")
        if not (_whole(memory) and memory > 0):
            raise RequestError("a GPU's memory must be a positive number of bytes")
        links = gpu.get("links", [])
        if not isinstance(links, (list, tuple)) or not all(_whole(x) for x in links):
            raise RequestError("a GPU's links must be a list of GPU indices")
        minor = gpu.get("minor")
        return cls(
            index=index,
            uuid=str(gpu.get("uuid") or ""),
            model=model,
            name=str(gpu.get("name") or ""),
            memory=memory,
            simulated=bool(gpu.get("simulated", False)),
            links=tuple(links),
            minor=minor if _whole(minor) else None,
        )


@dataclass(frozen=True)
class Identity:
    """The developer a session runs as: their account on their own machine."""

    name: str
    uid: int
    gid: int
    group: str
    home: str
    groups: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "name": self.name,
            "home": self.home,
        }

    @classmethod
    def from_json(cls, user: Any) -> Identity:
        try:
            return cls(
                name=str(user["name"]),
                uid=int(user["uid"]),
                gid=int(user["gid"]),
                group=str(user.get("group") or ""),
                home=str(user["home"]),
                groups=tuple(int(g) for g in user.get("groups", [])),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            raise RequestError("user must give uid, gid, name and home") from None

    def checked(self) -> Identity:
        """This identity, once it is one a node can run work as (a client's, untrusted)."""
        ids = (self.uid, self.gid, *self.groups)
        if not all(0 <= i < MAX_ID for i in ids) or len(self.groups) > MAX_GROUPS:
            raise RequestError(
                f"user's uid, gid and groups must be ids from 0 to {MAX_ID - 1} "
                f"(at most {MAX_GROUPS} groups)"
            )
        for what, text in (("user's name", self.name), ("user's group", self.group)):
            if len(text) > MAX_NAME or not _control_free(text):
                raise RequestError(
                    f"{what} must be at most {MAX_NAME} characters, none of them control "
                    f"characters, got {_quoted(text)}"
                )
        checked_path(self.home, "user's home")
        return self


@dataclass(frozen=True)
class ShareGrant:
    """Credentials for one session's share: the node mounts ``user@host:root`` with them."""

    host: str
    port: int
    user: str
    private_key: str
    host_key: str  # pinned: the node accepts no other
    root: str = "/"
    #: the files the node may serve from its cache, validated on the developer's machine
    cache: CacheManifest | None = None
    #: the warm lease this share belongs to: the node may run the session in what it kept
    #: under that lease (see agent/warm.py); "" for a share of this session alone
    lease: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "root": self.root,
            "private_key": self.private_key,
            "host_key": self.host_key,
        }
        if self.cache is not None:
            out["cache"] = self.cache.to_json()
        if self.lease:
            out["lease"] = self.lease
        return out

    @classmethod
    def from_json(cls, share: Any) -> ShareGrant:
        needed = {"host", "port", "user", "private_key", "host_key"}
        if not isinstance(share, dict) or not needed <= set(share):
            raise RequestError("share must give host, port, user, private_key and host_key")
        try:
            port = int(share["port"])
        except (TypeError, ValueError, OverflowError):
            raise RequestError("share's port must be a number") from None
        if not 0 < port < 65536:
            raise RequestError(f"share's port must be from 1 to 65535, got {port}")
        for name, pattern, example in (
            ("host", SHARE_HOST_PATTERN, "a host name or an IP address"),
            ("user", SHARE_USER_PATTERN, "an account name"),
            ("host_key", HOST_KEY_PATTERN, "one line 'TYPE BASE64 [COMMENT]'"),
        ):
            value = share[name]
            if not (isinstance(value, str) and re.fullmatch(pattern, value)):
                raise RequestError(f"share's {name} must be {example}, got {_quoted(value)}")
        key = share["private_key"]
        if not isinstance(key, str) or len(key) > MAX_KEY or "\x00" in key:
            raise RequestError(f"share's private_key must be a key file's text, at most {MAX_KEY}")
        root = share.get("root") or "/"
        checked_path(root, "share's root")
        if not _control_free(root):
            raise RequestError(f"share's root {_quoted(root)} holds control characters")
        return cls(
            host=share["host"],
            port=port,
            user=share["user"],
            private_key=key,
            host_key=share["host_key"],
            root=root,
            cache=CacheManifest.from_json(share["cache"]) if share.get("cache") else None,
            lease=lease_id(share.get("lease") or "", "share's lease"),
        )


#: the longest a node keeps a developer's session warm after it ends (a day)
MAX_KEEP_WARM = 86400
#: the most modules a kept kernel imports ahead
MAX_PRELOAD = 64
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LEASE_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")


def lease_id(value: Any, what: str = "lease") -> str:
    """A warm lease's id ("" for none): letters and digits, as a session id."""
    if value == "":
        return ""
    if not isinstance(value, str) or not _LEASE_RE.match(value):
        raise RequestError(f"{what} must be a lease id (letters and digits)")
    return value


#: the most paths under /tmp one run may have the node show from its share
MAX_SHOWN = 16
_SHOWN_RE = re.compile(r"^/tmp/(?!\.\.?$)[^/\x00]{1,255}$")


@dataclass(frozen=True)
class StartSpec:
    """What a client sends a node agent to start its placed session."""

    share: ShareGrant | None  # None where the node runs sessions on its own root
    user: Identity
    cwd: str
    env: dict[str, str]
    kind: str  # "kernel" or "command"
    argv: list[str]
    #: paths /tmp/NAME of the developer's that the run needs (its /tmp is the node's own):
    #: the node shows them from the share at the same paths
    shown: tuple[str, ...] = ()
    #: seconds the node keeps the session's container, mount and a kernel ready in them
    #: after the client ends it, under the share's warm lease (0: nothing is kept)
    keep_warm: float = 0.0
    #: modules the kept kernel imports before it is needed
    preload: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "keep_warm": self.keep_warm,
            "preload": list(self.preload),
            "share": self.share.to_json() if self.share else None,
            "user": self.user.to_json(),
            "cwd": self.cwd,
            "env": self.env,
            "kind": self.kind,
            "argv": self.argv,
            "shown": list(self.shown),
        }

    @classmethod
    def from_json(cls, data: Any) -> StartSpec:
        data = _object(data, "the session spec")
        share = data.get("share")
        grant = ShareGrant.from_json(share) if share is not None else None
        user = Identity.from_json(data.get("user") or {}).checked()
        env = data.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise RequestError("env must map names to strings")
        size = 0
        for name, value in env.items():
            if not re.fullmatch(ENV_NAME_PATTERN, name):
                raise RequestError(
                    f"env: {_quoted(name)} is not a variable name: it must be 1 to 1024 "
                    "characters, with no '=' and no NUL byte"
                )
            size += _exec_string(f"{name}={value}", f"env: variable {name}")
        cwd = checked_path(data.get("cwd"), "cwd")
        shown = data.get("shown") or []
        if not isinstance(shown, list) or len(shown) > MAX_SHOWN:
            raise RequestError(f"shown must be a list of at most {MAX_SHOWN} paths")
        for path in shown:
            if not (isinstance(path, str) and _SHOWN_RE.match(path)):
                raise RequestError(f"shown: {path!r} is not a path /tmp/NAME")
        if (cwd == "/tmp" or cwd.startswith("/tmp/")) and not any(
            cwd == p or cwd.startswith(p + "/") for p in shown
        ):
            raise RequestError(
                f"the current directory {cwd} is under /tmp, which stays private to each GPU "
                "node: run from a directory outside /tmp (your home or a project directory)"
            )
        kind = data.get("kind")
        argv = data.get("argv")
        if kind not in KINDS:
            raise RequestError("kind must be 'kernel' or 'command'")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise RequestError("argv must be a non-empty list of strings")
        size += sum(_exec_string(arg, f"argv[{i}]") for i, arg in enumerate(argv))
        if size > MAX_EXEC_BYTES:
            raise RequestError(
                f"argv and env come to {size} bytes: a session's program takes at most "
                f"{MAX_EXEC_BYTES}; pass large data in a file"
            )
        keep_warm = data.get("keep_warm", 0)
        if not isinstance(keep_warm, (int, float)) or not 0 <= keep_warm <= MAX_KEEP_WARM:
            raise RequestError(f"keep_warm must be seconds from 0 to {MAX_KEEP_WARM}")
        preload = data.get("preload") or []
        if not isinstance(preload, list) or len(preload) > MAX_PRELOAD:
            raise RequestError(f"preload must list at most {MAX_PRELOAD} module names")
        for name in preload:
            if not (isinstance(name, str) and _MODULE_RE.match(name)):
                raise RequestError(f"preload: {name!r} is not a module name such as numpy.linalg")
        return cls(
            grant, user, cwd, env, kind, argv, tuple(shown), float(keep_warm), tuple(preload)
        )


@dataclass(frozen=True)
class Placement:
    """Where a placed session runs: its node agent's address and the GPUs it holds there."""

    agent_url: str
    share_needed: bool  # False: the node runs work on its own root, no share is mounted
    gpus: tuple[GpuRecord, ...]


@dataclass
class SessionRecord:
    """A session as the scheduler describes it to clients, share agents and node agents."""

    id: str
    user: str
    group: str
    host: str
    request: HardwareRequest
    state: str  # queued | placed | running | ended
    node: str | None
    gpu_ids: list[int]
    created: float
    lease_expires: float
    placed: float | None = None
    started: float | None = None
    ended: float | None = None
    end_reason: str | None = None
    secret_sha256: str = ""
    notebook: str = ""  # the notebook the work comes from, or ''
    owner: Identity | None = None  # the verified account it runs as (pools with identities)
    # while queued: its place, what holds it back, when it may start
    position: int | None = None
    waiting_for: str | None = None
    estimated_start: float | None = None
    # once its node is known
    placement: Placement | None = None
    # only in the answer to its creation: the credential its client shows the node agent
    secret: str | None = None

    @property
    def queued(self) -> bool:
        return self.state == "queued"

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def gpus(self) -> tuple[GpuRecord, ...]:
        return self.placement.gpus if self.placement else ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "user": self.user,
            "group": self.group,
            "host": self.host,
            "request": self.request.to_json(),
            "state": self.state,
            "node": self.node,
            "gpu_ids": list(self.gpu_ids),
            "created": self.created,
            "placed": self.placed,
            "started": self.started,
            "ended": self.ended,
            "lease_expires": self.lease_expires,
            "end_reason": self.end_reason,
            "secret_sha256": self.secret_sha256,
            "notebook": self.notebook,
            "owner": self.owner.to_json() if self.owner else None,
        }
        if self.queued:
            out["position"] = self.position
            out["waiting_for"] = self.waiting_for
            out["estimated_start"] = self.estimated_start
        if self.placement is not None:
            out["agent_url"] = self.placement.agent_url
            out["share_needed"] = self.placement.share_needed
            out["gpus"] = [g.to_json() for g in self.placement.gpus]
        if self.secret is not None:
            out["secret"] = self.secret
        return out

    @classmethod
    def from_json(cls, data: Any) -> SessionRecord:
        """Read the scheduler's answer (trusted, but checked for shape)."""
        data = _object(data, "a session")
        placement = None
        if data.get("agent_url"):
            placement = Placement(
                agent_url=str(data["agent_url"]),
                share_needed=bool(data.get("share_needed", True)),
                gpus=tuple(GpuRecord.from_json(g) for g in data.get("gpus") or []),
            )
        try:
            return cls(
                id=str(data["id"]),
                user=str(data["user"]),
                group=str(data.get("group") or ""),
                host=str(data["host"]),
                request=HardwareRequest.from_json(data["request"]),
                state=str(data["state"]),
                node=data.get("node"),
                gpu_ids=[int(i) for i in data.get("gpu_ids") or []],
                created=float(data["created"]),
                lease_expires=float(data["lease_expires"]),
                placed=data.get("placed"),
                started=data.get("started"),
                ended=data.get("ended"),
                end_reason=data.get("end_reason"),
                secret_sha256=str(data.get("secret_sha256") or ""),
                notebook=str(data.get("notebook") or ""),
                owner=Identity.from_json(data["owner"]) if data.get("owner") else None,
                position=data.get("position"),
                waiting_for=data.get("waiting_for"),
                estimated_start=data.get("estimated_start"),
                placement=placement,
                secret=data.get("secret"),
            )
        except (KeyError, TypeError, ValueError):
            raise RequestError("the scheduler's description of a session is malformed") from None


@dataclass(frozen=True)
class SessionSubmission:
    """A client's request for a session: the hardware, and who and where it comes from."""

    request: HardwareRequest
    user: str
    host: str
    group: str = ""
    notebook: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request.to_json(),
            "user": self.user,
            "host": self.host,
            "group": self.group,
            "notebook": self.notebook,
        }

    @classmethod
    def from_json(cls, data: Any) -> SessionSubmission:
        body = _object(data, "the request body")
        return cls(
            request=HardwareRequest.from_json(body.get("request", {})),
            user=text_field(body, "user"),
            host=text_field(body, "host"),
            group=text_field(body, "group", ""),
            notebook=text_field(body, "notebook", "", limit=MAX_PATH),
        )


@dataclass(frozen=True)
class NodeRegistration:
    """A node agent's registration with the scheduler."""

    url: str  # where clients reach the agent
    gpus: tuple[GpuRecord, ...]
    share: bool = True  # False: work runs on the node's own root (host runner)
    labels: tuple[str, ...] = ()
    protocol: int | None = None  # the protocol version the agent speaks

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "gpus": [g.to_json() for g in self.gpus],
            "share": self.share,
            "labels": list(self.labels),
            "protocol": self.protocol,
        }

    @classmethod
    def from_json(cls, data: Any) -> NodeRegistration:
        body = _object(data, "the request body")
        gpus = body.get("gpus")
        if not isinstance(gpus, list):
            raise RequestError("field 'gpus' must be a list of GPUs")
        records = tuple(GpuRecord.from_json(g) for g in gpus)
        if len({g.index for g in records}) != len(records):
            raise RequestError("GPU indices must be unique")
        share = body.get("share", True)
        if not isinstance(share, bool):
            raise RequestError("field 'share' must be true or false")
        protocol = body.get("protocol")
        return cls(
            url=text_field(body, "url"),
            gpus=records,
            share=share,
            labels=tuple(_strings(body.get("labels", []), "field 'labels'")),
            protocol=protocol if _whole(protocol) else None,
        )


@dataclass(frozen=True)
class NodeStats:
    """A node's last samples per GPU index (as a string, JSON's object keys)."""

    utilization: dict[str, float] = field(default_factory=dict)  # percent busy
    memory_used: dict[str, int] = field(default_factory=dict)  # bytes
    #: seconds each shared kernel's cells have run, by session id (agent/sharing.py)
    cell_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "utilization": self.utilization,
            "memory_used": self.memory_used,
            "cell_seconds": self.cell_seconds,
        }

    @classmethod
    def from_json(cls, stats: Any) -> NodeStats:
        found: dict[str, dict[str, Any]] = {}
        for key, unit in (("utilization", "percentages"), ("memory_used", "bytes")):
            per_gpu = stats.get(key, {}) if isinstance(stats, dict) else None
            if not isinstance(per_gpu, dict) or not all(is_number(v) for v in per_gpu.values()):
                raise RequestError(f"field 'stats.{key}' must map GPU indices to {unit}")
            found[key] = per_gpu
        cells = stats.get("cell_seconds", {})
        if not isinstance(cells, dict) or not all(is_number(v) for v in cells.values()):
            raise RequestError("field 'stats.cell_seconds' must map session ids to seconds")
        return cls(
            {k: float(v) for k, v in found["utilization"].items()},
            {k: int(v) for k, v in found["memory_used"].items()},
            {str(k): float(v) for k, v in cells.items()},
        )


@dataclass(frozen=True)
class Heartbeat:
    """A node agent's heartbeat: the sessions it runs, and its GPUs' use."""

    sessions: tuple[str, ...]
    stats: NodeStats = field(default_factory=NodeStats)
    #: ``warm_key``s of the developers whose files the node's cache keeps
    warm: tuple[str, ...] = ()
    #: the warm leases the node holds (see agent/warm.py)
    leases: tuple[LeaseRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": list(self.sessions),
            "stats": self.stats.to_json(),
            "warm": list(self.warm),
            "leases": [lease.to_json() for lease in self.leases],
        }

    @classmethod
    def from_json(cls, data: Any) -> Heartbeat:
        body = _object(data, "the request body")
        live = body.get("sessions")
        if not isinstance(live, list) or not all(isinstance(x, str) for x in live):
            raise RequestError("field 'sessions' must be a list of session ids")
        warm = body.get("warm", [])
        if not isinstance(warm, list) or not all(isinstance(k, str) and len(k) <= 64 for k in warm):
            raise RequestError("field 'warm' must be a list of keys")
        leases = body.get("leases", [])
        if not isinstance(leases, list) or len(leases) > 10_000:
            raise RequestError("field 'leases' must be a list of warm leases")
        return cls(
            tuple(live),
            NodeStats.from_json(body.get("stats", {})),
            tuple(warm[:10_000]),
            tuple(LeaseRecord.from_json(lease) for lease in leases),
        )


@dataclass(frozen=True)
class LeaseRecord:
    """A warm lease as a node reports it: whose it is, until when, and what it keeps."""

    id: str
    user: str
    host: str
    warm_key: str  # protocol.cache_manifest.warm_key(host, user): what placement matches
    expires: float  # the node's clock; renewed by each session that uses it
    kernel: bool  # a kernel is ready in it
    in_use: str = ""  # the session running in it now, if any

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "host": self.host,
            "warm_key": self.warm_key,
            "expires": self.expires,
            "kernel": self.kernel,
            "in_use": self.in_use,
        }

    @classmethod
    def from_json(cls, data: Any) -> LeaseRecord:
        body = _object(data, "a warm lease")
        try:
            return cls(
                id=lease_id(body["id"]),
                user=str(body["user"])[:256],
                host=str(body["host"])[:256],
                warm_key=str(body["warm_key"])[:64],
                expires=float(body["expires"]),
                kernel=bool(body.get("kernel")),
                in_use=str(body.get("in_use") or "")[:64],
            )
        except (KeyError, TypeError, ValueError):
            raise RequestError(
                "a warm lease needs id, user, host, warm_key and expires (seconds)"
            ) from None


@dataclass(frozen=True)
class HeartbeatReply:
    """The scheduler's answer to a heartbeat: the sessions the node must end, and why."""

    end: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"end": list(self.end), "reasons": self.reasons}

    @classmethod
    def from_json(cls, data: Any) -> HeartbeatReply:
        body = _object(data, "a heartbeat reply")
        return cls(tuple(body.get("end") or []), dict(body.get("reasons") or {}))

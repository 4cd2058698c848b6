"""The OpenAPI 3 description of a node agent's REST API, served at ``/hwsched/spec``.

Two parts: the agent's own endpoints under ``/hwsched`` (start and end sessions, the node's
state and cache, for the pool's token or a session's own secret), and the part of the Jupyter
Kernel Gateway API that jupyter_server serves here for the sessions' kernels. Not described:
the websockets, which OpenAPI cannot (``/api/kernels/{kernel_id}/channels``, Jupyter's kernel
protocol; ``/hwsched/sessions/{session_id}/command``, a command's output, see
:mod:`jupyter_hwsched.agent.handlers`).
"""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.protocol.openapi.common import (
    BOOLEAN,
    GPU,
    INTEGER,
    NUMBER,
    OBJECT,
    SESSION_ID,
    STRING,
    TOKEN_HEADER,
    WARM_LEASE,
    document,
    errors,
    json_body,
    json_response,
    nullable,
    operation,
    query,
    ref,
    spec_operation,
)
from jupyter_hwsched.protocol.records import (
    ENV_NAME_PATTERN,
    HOST_KEY_PATTERN,
    KINDS,
    MAX_ARG_BYTES,
    MAX_GROUPS,
    MAX_ID,
    MAX_KEEP_WARM,
    MAX_KEY,
    MAX_NAME,
    MAX_PATH,
    MAX_PRELOAD,
    MAX_SHOWN,
    SHARE_HOST_PATTERN,
    SHARE_USER_PATTERN,
)
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION

SPEC_PATH = "/hwsched/spec"

#: an absolute path (what records.checked_path accepts)
PATH: dict[str, Any] = {
    "type": "string",
    "pattern": r"^/[^\x00]*$",
    "maxLength": MAX_PATH,
    "description": "absolute, with no '..' in it and no NUL byte",
}
#: a string a program is given (an argument, an environment value): at most MAX_ARG_BYTES
#: bytes in UTF-8, which these many characters always fit in
EXEC_STRING: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[^\x00]*$",
    "maxLength": MAX_ARG_BYTES // 4,
}
ID: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_ID - 1}

SHARE = {
    "type": "object",
    "description": "the developer's share, which the node mounts for the session",
    "required": ["host", "port", "user", "private_key", "host_key"],
    "properties": {
        "host": {"type": "string", "pattern": f"^{SHARE_HOST_PATTERN}$"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "user": {"type": "string", "pattern": f"^{SHARE_USER_PATTERN}$"},
        "private_key": {"type": "string", "pattern": r"^[^\x00]*$", "maxLength": MAX_KEY},
        "host_key": {"type": "string", "pattern": f"^{HOST_KEY_PATTERN}$"},
        "root": PATH,
        "cache": {**OBJECT, "description": "the files the node may serve from its cache"},
        "lease": {"type": "string", "pattern": "^[A-Za-z0-9]{0,64}$"},
    },
}
IDENTITY = {
    "type": "object",
    "description": "the account the work runs as (where the pool has identities, the one "
    "the scheduler verified, whatever this says)",
    "required": ["name", "uid", "gid", "home"],
    "properties": {
        "name": {"type": "string", "maxLength": MAX_NAME, "pattern": r"^[^\x00-\x1f\x7f]*$"},
        "uid": ID,
        "gid": ID,
        "group": {"type": "string", "maxLength": MAX_NAME, "pattern": r"^[^\x00-\x1f\x7f]*$"},
        "home": PATH,
        "groups": {"type": "array", "items": ID, "maxItems": MAX_GROUPS},
    },
}
START = {
    "type": "object",
    "description": "what a client sends to start its placed session; strings that reach a "
    f"program (argv, env) hold no NUL byte and are at most {MAX_ARG_BYTES} bytes each",
    "required": ["user", "cwd", "kind", "argv"],
    "properties": {
        "share": nullable(SHARE),
        "user": IDENTITY,
        "cwd": {**PATH, "description": "where the work starts (not under /tmp unless shown)"},
        "env": {
            "type": "object",
            "description": f"the caller's environment; names match {ENV_NAME_PATTERN}",
            "additionalProperties": EXEC_STRING,
        },
        "kind": {"type": "string", "enum": list(KINDS)},
        "argv": {"type": "array", "minItems": 1, "items": EXEC_STRING},
        "shown": {
            "type": "array",
            "maxItems": MAX_SHOWN,
            "items": {
                "type": "string",
                "pattern": r"^/tmp/[^/\x00]{1,255}$",
                "description": "a path /tmp/NAME (not . or ..)",
            },
        },
        "keep_warm": {"type": "number", "minimum": 0, "maximum": MAX_KEEP_WARM},
        "preload": {
            "type": "array",
            "maxItems": MAX_PRELOAD,
            "items": {
                "type": "string",
                "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
            },
        },
    },
}
AGENT_SESSION = {
    "type": "object",
    "required": ["id", "kind", "user", "uid", "gpus"],
    "properties": {
        "id": STRING,
        "kind": {"type": "string", "enum": list(KINDS)},
        "user": STRING,
        "uid": INTEGER,
        "gpus": {"type": "array", "items": ref("Gpu")},
        "kernel_id": nullable(STRING),
        "container": nullable(STRING),
        "mountpoint": STRING,
        "cache": nullable(OBJECT),
        "started": nullable(NUMBER),
    },
}
CACHE = {
    "type": "object",
    "required": ["enabled"],
    "properties": {
        "enabled": BOOLEAN,
        "bytes": {"type": "integer", "minimum": 0},
        "max_bytes": {"type": "integer", "minimum": 0},
        "stores": {"type": "integer", "minimum": 0},
    },
}
NODE_STATE = {
    "type": "object",
    "required": ["node", "simulated", "gpus", "sessions"],
    "properties": {
        "node": STRING,
        "simulated": BOOLEAN,
        "gpus": {"type": "array", "items": ref("Gpu")},
        "sessions": {"type": "array", "items": ref("AgentSession")},
        "leases": {"type": "array", "items": WARM_LEASE},
        "cache": nullable(OBJECT),
    },
}
#: a kernel as jupyter_server describes it
KERNEL = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {
        "id": STRING,
        "name": STRING,
        "last_activity": STRING,
        "execution_state": STRING,
        "connections": {"type": "integer", "minimum": 0},
        "reason": STRING,
    },
}
KERNEL_ID = {
    "name": "kernel_id",
    "in": "path",
    "required": True,
    # jupyter_server routes \w+-\w+-\w+-\w+-\w+ (a UUID)
    "schema": {"type": "string", "pattern": "^" + "-".join(["[A-Za-z0-9_]+"] * 5) + "$"},
}
ADMIN = " (the pool's token only)"
BUSY = "the kernel is starting, restarting or shutting down"

PATHS: dict[str, Any] = {
    "/hwsched/node": {
        "get": operation(
            "The node: its GPUs, sessions, warm leases and cache" + ADMIN,
            {"200": json_response(NODE_STATE, "the node")},
        )
    },
    "/hwsched/cache": {
        "get": operation(
            "The node's cache of read-mostly trees" + ADMIN,
            {"200": json_response(CACHE, "the cache")},
        ),
        "delete": operation(
            "Purge the cache: every user's copies, or one user's with user, uid and host" + ADMIN,
            {
                "200": json_response(
                    {
                        "allOf": [
                            CACHE,
                            {
                                "type": "object",
                                "required": ["freed_bytes"],
                                "properties": {"freed_bytes": {"type": "integer", "minimum": 0}},
                            },
                        ]
                    },
                    "purged",
                ),
                **errors(400, 404, e404="this node keeps no cache"),
            },
            parameters=[
                query("user", STRING),
                query("uid", STRING, "the user's uid (a number)"),
                query("host", STRING, "the user's machine"),
            ],
        ),
    },
    "/hwsched/sessions": {
        "get": operation(
            "The sessions on this node" + ADMIN,
            {"200": json_response({"type": "array", "items": ref("AgentSession")}, "sessions")},
        )
    },
    "/hwsched/sessions/{session_id}": {
        "post": operation(
            "Start a session the scheduler placed here: mount, container, kernel or command "
            "(the pool's token, or the secret the scheduler gave the session's client)",
            {
                "201": json_response(ref("AgentSession"), "started"),
                **errors(
                    400,
                    404,
                    409,
                    410,
                    413,
                    426,
                    e404="the scheduler knows no such session",
                    e409="the session is not placed on this node, or already runs here",
                ),
            },
            parameters=[SESSION_ID],
            requestBody=json_body(ref("StartSpec")),
        ),
        "delete": operation(
            "End a session on this node (its owner or the pool's token)",
            {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["ended", "kept_warm"],
                        "properties": {"ended": STRING, "kept_warm": BOOLEAN},
                    },
                    "ended",
                ),
                **errors(404, 426, e404="no such session on this node"),
            },
            parameters=[
                SESSION_ID,
                query("reason", STRING),
                query("warm", {"type": "string"}, "1: keep it warm, as its start asked"),
            ],
        ),
    },
    "/api/kernels": {
        "get": operation(
            "The kernels of the sessions on this node" + ADMIN,
            {"200": json_response({"type": "array", "items": ref("Kernel")}, "kernels")},
        ),
        "post": operation(
            "Refused: a node starts a kernel only for a session (POST /hwsched/sessions/{id})",
            {},
            requestBody=json_body(OBJECT),
        ),
    },
    "/api/kernels/{kernel_id}": {
        "get": operation(
            "A kernel (the pool's token, or its session's secret)",
            {"200": json_response(ref("Kernel"), "the kernel"), **errors(404)},
            parameters=[KERNEL_ID],
        ),
        "delete": operation(
            "Shut a kernel down (its session goes on without it)",
            {"204": {"description": "shut down"}, **errors(404)},
            parameters=[KERNEL_ID],
        ),
    },
    "/api/kernels/{kernel_id}/interrupt": {
        "post": operation(
            "Interrupt a kernel",
            {"204": {"description": "interrupted"}, **errors(404, 409, e409=BUSY)},
            parameters=[KERNEL_ID],
        )
    },
    "/api/kernels/{kernel_id}/restart": {
        "post": operation(
            "Restart a kernel in its session's container",
            {"200": json_response(ref("Kernel"), "restarted"), **errors(404, 409, e409=BUSY)},
            parameters=[KERNEL_ID],
        )
    },
    "/api/kernelspecs": {
        "get": operation(
            "The kernelspecs of this node" + ADMIN,
            {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["default", "kernelspecs"],
                        "properties": {
                            "default": STRING,
                            "kernelspecs": {"type": "object", "additionalProperties": OBJECT},
                        },
                    },
                    "kernelspecs",
                )
            },
        )
    },
    SPEC_PATH: {"get": spec_operation()},
}


def agent_spec(base_url: str = "/") -> dict[str, Any]:
    """The description, for an agent whose jupyter_server serves under ``base_url``."""
    return document(
        "jupyter-hwsched node agent",
        "A GPU node's agent: it starts the sessions the scheduler placed here and serves "
        "their kernels over the Jupyter Kernel Gateway API. Every call takes the pool's "
        "token, or (for its own session and kernel only) the secret the scheduler gave a "
        f"session's client. Protocol version {PROTOCOL_VERSION}: a client that sends "
        f"another in the {PROTOCOL_HEADER} header is refused with 426.",
        TOKEN_HEADER,
        {
            "Gpu": GPU,
            "StartSpec": START,
            "AgentSession": AGENT_SESSION,
            "Kernel": KERNEL,
        },
        PATHS,
        base_url,
    )

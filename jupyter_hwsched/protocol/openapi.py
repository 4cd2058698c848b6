"""The OpenAPI 3 description of the scheduler's REST API, served at ``/api/spec``.

Its limits come from the request language and the records (:mod:`.request`,
:mod:`.records`), so the description cannot drift from the checks. CI checks the running
scheduler against it with schemathesis: no input may cause a 5xx, and every response must
match what is written here.
"""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.protocol.records import (
    MAX_NAME,
    MAX_PATH,
    NODE_NAME_PATTERN,
    SESSION_ID_PATTERN,
)
from jupyter_hwsched.protocol.request import (
    MAX_CPUS,
    MAX_GPUS_PER_REQUEST,
    MAX_PRIORITY,
    MIN_PRIORITY,
)
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION, __version__


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


NUMBER = {"type": "number"}
STRING = {"type": "string"}
INTEGER = {"type": "integer"}

ERROR = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string", "description": "what to change"}},
}
GPU = {
    "type": "object",
    "required": ["index", "model", "memory"],
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "uuid": STRING,
        "model": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "name": STRING,
        "memory": {"type": "integer", "minimum": 1, "description": "bytes"},
        "simulated": {"type": "boolean"},
        "links": {"type": "array", "items": INTEGER, "description": "NVLink peers"},
    },
}
REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "gpus": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_GPUS_PER_REQUEST,
            "default": 1,
        },
        "gpu_type": _nullable({"type": "string", "example": "A100|H100"}),
        "gpu_mem": _nullable({"type": "integer", "minimum": 1, "description": "bytes per GPU"}),
        "timeout": _nullable({"type": "number", "exclusiveMinimum": True, "minimum": 0}),
        "node": _nullable({"type": "string", "description": "node name or label"}),
        "priority": {
            "type": "integer",
            "minimum": MIN_PRIORITY,
            "maximum": MAX_PRIORITY,
            "default": 0,
        },
        "mem": _nullable({"type": "integer", "minimum": 1, "description": "bytes of memory"}),
        "cpus": _nullable(
            {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": MAX_CPUS}
        ),
        "shared": {
            "type": "boolean",
            "default": False,
            "description": "a share of one GPU (gpu_mem of it) for a resident kernel",
        },
    },
}
SESSION = {
    "type": "object",
    "required": ["id", "user", "host", "request", "state", "gpu_ids", "created"],
    "properties": {
        "id": STRING,
        "user": STRING,
        "group": STRING,
        "host": STRING,
        "request": {"type": "object"},
        "state": {"type": "string", "enum": ["queued", "placed", "running", "ended"]},
        "node": _nullable(STRING),
        "gpu_ids": {"type": "array", "items": INTEGER},
        "created": NUMBER,
        "placed": _nullable(NUMBER),
        "started": _nullable(NUMBER),
        "ended": _nullable(NUMBER),
        "lease_expires": NUMBER,
        "end_reason": _nullable(STRING),
        "secret": {"type": "string", "description": "only in the answer to its creation"},
        "secret_sha256": STRING,
        "notebook": {"type": "string", "description": "the notebook the work comes from, or ''"},
        "owner": _nullable(
            {
                "type": "object",
                "description": "the verified account the work runs as (pools with a CA)",
                "properties": {
                    "name": STRING,
                    "uid": INTEGER,
                    "gid": INTEGER,
                    "group": STRING,
                    "home": STRING,
                    "groups": {"type": "array", "items": INTEGER},
                },
            }
        ),
        "position": {"type": "integer", "minimum": 1, "description": "queued only"},
        "waiting_for": {"type": "string", "description": "queued only: what holds it back"},
        "estimated_start": _nullable(NUMBER),
        "agent_url": STRING,
        "share_needed": {"type": "boolean"},
        "gpus": {"type": "array", "items": GPU},
    },
}
POOL_GPU = {
    "allOf": [
        GPU,
        {
            "type": "object",
            "properties": {
                "holder": _nullable(STRING),
                "session": _nullable(STRING),
                "since": _nullable(NUMBER),
                "utilization": _nullable(NUMBER),
                "memory_used": _nullable(NUMBER),
                "shared_by": {
                    "type": "array",
                    "description": "resident kernels sharing the GPU",
                    "items": {
                        "type": "object",
                        "properties": {
                            "user": STRING,
                            "session": STRING,
                            "gpu_mem": _nullable(INTEGER),
                        },
                    },
                },
            },
        },
    ]
}
WARM_LEASE = {
    "type": "object",
    "required": ["id", "user", "host", "expires", "kernel", "in_use"],
    "properties": {
        "id": STRING,
        "user": STRING,
        "host": STRING,
        "expires": NUMBER,
        "kernel": {"type": "boolean"},
        "in_use": STRING,
    },
}
NODE = {
    "type": "object",
    "required": ["name", "url", "up", "gpus"],
    "properties": {
        "name": STRING,
        "url": STRING,
        "labels": {"type": "array", "items": STRING},
        "up": {"type": "boolean"},
        "gpus": {"type": "array", "items": POOL_GPU},
        "cache_warm_for": {"type": "integer", "minimum": 0},
        "warm_leases": {"type": "array", "items": WARM_LEASE},
    },
}
USAGE_ROW = {
    "type": "object",
    "required": ["user", "sessions", "gpu_seconds_allocated", "gpu_seconds_busy"],
    "properties": {
        "user": STRING,
        "sessions": INTEGER,
        "gpu_seconds_allocated": NUMBER,
        "gpu_seconds_busy": NUMBER,
        "wait_seconds": NUMBER,
        "busy_fraction": _nullable(NUMBER),
        "allocated_from": {
            "type": "string",
            "enum": ["scheduler", "slurm accounting (sacct)"],
        },
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad input; the message says what to change",
        401: "missing, wrong or expired credential; the message says what to fix",
        403: "the caller may not act on this object (another user's session, another node)",
        404: "no such node or session (or a malformed name)",
        409: "the session is not in a state that allows this",
        410: "the session has ended",
        413: "the request body is over the server's limit; the message says the limit",
        426: "the caller speaks another protocol version; the message says what to upgrade",
        429: "the user has as many sessions waiting as one user may; end some or wait",
    }
    return {str(c): _json({"$ref": "#/components/schemas/Error"}, text[c]) for c in codes}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_errors(401, 403)}, **extra}


SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{SESSION_ID_PATTERN}$"},
}
NODE_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{NODE_NAME_PATTERN}$"},
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "jupyter-hwsched scheduler",
        "version": __version__,
        "description": "Queue, placement, leases and accounting of a pool of GPU nodes. "
        f"Protocol version {PROTOCOL_VERSION}: clients send it in the {PROTOCOL_HEADER} "
        "header, node agents in their registration; another version is refused with 426.",
    },
    "components": {
        "securitySchemes": {
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "'token <TOKEN>' or 'Bearer <TOKEN>'",
            }
        },
        "schemas": {
            "Error": ERROR,
            "Gpu": GPU,
            "Request": REQUEST,
            "Session": SESSION,
            "Node": NODE,
            "UsageRow": USAGE_ROW,
        },
    },
    "security": [{"token": []}],
    "paths": {
        "/api/pool": {
            "get": _op(
                "Nodes, GPUs with holders, and the queue",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["nodes", "queue", "time"],
                            "properties": {
                                "nodes": {"type": "array", "items": _ref("Node")},
                                "queue": {"type": "array", "items": _ref("Session")},
                                "time": NUMBER,
                                # who places sessions: the scheduler's queue, or Slurm
                                "placement": {"type": "string", "enum": ["builtin", "slurm"]},
                            },
                        },
                        "the pool",
                    ),
                },
            )
        },
        "/api/nodes": {
            "get": _op(
                "The registered nodes",
                {
                    "200": _json({"type": "array", "items": _ref("Node")}, "nodes"),
                },
            )
        },
        "/api/nodes/{name}": {
            "put": _op(
                "Register a node (done by its agent)",
                {
                    "200": _json({"type": "object", "properties": {"name": STRING}}, "registered"),
                    **_errors(400, 404, 426),
                },
                parameters=[NODE_NAME],
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["url", "gpus", "protocol"],
                        "properties": {
                            "url": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
                            "protocol": {"type": "integer", "example": PROTOCOL_VERSION},
                            "gpus": {"type": "array", "items": _ref("Gpu")},
                            "share": {"type": "boolean"},
                            "labels": {"type": "array", "items": STRING},
                        },
                    }
                ),
            )
        },
        "/api/nodes/{name}/heartbeat": {
            "post": _op(
                "A node's heartbeat; answers the sessions it must end",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["end"],
                            "properties": {
                                "end": {"type": "array", "items": STRING},
                                "reasons": {"type": "object", "additionalProperties": STRING},
                            },
                        },
                        "sessions to end",
                    ),
                    **_errors(400, 404),
                },
                parameters=[NODE_NAME],
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["sessions"],
                        "properties": {
                            "sessions": {"type": "array", "items": STRING},
                            "stats": {
                                "type": "object",
                                "properties": {
                                    "utilization": {
                                        "type": "object",
                                        "additionalProperties": NUMBER,
                                    },
                                    "memory_used": {
                                        "type": "object",
                                        "additionalProperties": NUMBER,
                                    },
                                },
                            },
                        },
                    }
                ),
            )
        },
        "/api/sessions": {
            "get": _op(
                "Live sessions (all=1: ended ones too)",
                {"200": _json({"type": "array", "items": _ref("Session")}, "sessions")},
                parameters=[
                    {
                        "name": "all",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                    }
                ],
            ),
            "post": _op(
                "Ask for GPUs; fails at once if no node could ever hold the request",
                {"201": _json(_ref("Session"), "queued or placed"), **_errors(400, 413, 429)},
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["user", "host"],
                        "properties": {
                            "request": _ref("Request"),
                            "user": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
                            "host": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
                            "group": {"type": "string", "maxLength": MAX_NAME},
                            "notebook": {"type": "string", "maxLength": MAX_PATH},
                        },
                    }
                ),
            ),
        },
        "/api/sessions/{session_id}": {
            "get": _op(
                "A session, with its queue position while queued",
                {"200": _json(_ref("Session"), "the session"), **_errors(404)},
                parameters=[SESSION_ID],
            ),
            "delete": _op(
                "End a session and return its GPUs to the pool (idempotent)",
                {"200": _json(_ref("Session"), "the ended session"), **_errors(404)},
                parameters=[
                    SESSION_ID,
                    {
                        "name": "reason",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
            ),
        },
        "/api/sessions/{session_id}/renew": {
            "post": _op(
                "Renew the session's lease",
                {"200": _json(_ref("Session"), "renewed"), **_errors(404, 410)},
                parameters=[SESSION_ID],
            ),
        },
        "/api/sessions/{session_id}/running": {
            "post": _op(
                "The node reports the session started (done by its agent)",
                {"200": _json(_ref("Session"), "running"), **_errors(400, 404, 409, 410)},
                parameters=[SESSION_ID],
                requestBody=_body(
                    {"type": "object", "required": ["node"], "properties": {"node": STRING}}
                ),
            ),
        },
        "/api/usage": {
            "get": _op(
                "GPU-seconds allocated and busy per user",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["since", "users"],
                            "properties": {
                                "since": NUMBER,
                                "users": {"type": "array", "items": _ref("UsageRow")},
                            },
                        },
                        "the report",
                    ),
                    **_errors(400),
                },
                parameters=[
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0},
                        "description": "window in seconds (default 7 days)",
                    }
                ],
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {"200": {"description": "metrics", "content": {"text/plain": {"schema": STRING}}}},
            ),
        },
        "/api/spec": {
            "get": {
                "summary": "This description",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3")},
            },
        },
    },
}

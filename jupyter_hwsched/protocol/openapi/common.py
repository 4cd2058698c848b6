"""What the OpenAPI documents of the scheduler, the node agent and the server extension share:
the building blocks of a document, and the schemas of the records that cross more than one
of these APIs (errors, GPUs, hardware requests, sessions, nodes).

Every limit here is the protocol layer's own constant (:mod:`..request`, :mod:`..records`),
so a description cannot drift from the checks it describes.
"""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.protocol.records import LIVE_STATES, MAX_NAME, SESSION_ID_PATTERN
from jupyter_hwsched.protocol.request import (
    MAX_CPUS,
    MAX_GPUS_PER_REQUEST,
    MAX_PRIORITY,
    MAX_TEXT,
    MIN_PRIORITY,
)
from jupyter_hwsched.protocol.version import __version__

Schema = dict[str, Any]


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


NUMBER: Schema = {"type": "number"}
STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}

ERROR: Schema = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string", "description": "what to change"}},
}
GPU: Schema = {
    "type": "object",
    "required": ["index", "model", "memory"],
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "uuid": STRING,
        "model": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "name": STRING,
        "memory": {"type": "integer", "minimum": 1, "description": "bytes"},
        "simulated": BOOLEAN,
        "links": {"type": "array", "items": INTEGER, "description": "NVLink peers"},
        "minor": nullable({"type": "integer", "description": "N of /dev/nvidiaN"}),
    },
}
REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "gpus": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_GPUS_PER_REQUEST,
            "default": 1,
        },
        "gpu_type": nullable({"type": "string", "maxLength": MAX_TEXT, "example": "A100|H100"}),
        "gpu_mem": nullable({"type": "integer", "minimum": 1, "description": "bytes per GPU"}),
        "timeout": nullable({"type": "number", "exclusiveMinimum": True, "minimum": 0}),
        "node": nullable(
            {"type": "string", "maxLength": MAX_TEXT, "description": "node name or label"}
        ),
        "priority": {
            "type": "integer",
            "minimum": MIN_PRIORITY,
            "maximum": MAX_PRIORITY,
            "default": 0,
        },
        "mem": nullable({"type": "integer", "minimum": 1, "description": "bytes of memory"}),
        "cpus": nullable(
            {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": MAX_CPUS}
        ),
        "shared": {
            "type": "boolean",
            "default": False,
            "description": "a share of one GPU (gpu_mem of it) for a resident kernel",
        },
    },
}
SESSION: Schema = {
    "type": "object",
    "required": ["id", "user", "host", "request", "state", "gpu_ids", "created"],
    "properties": {
        "id": STRING,
        "user": STRING,
        "group": STRING,
        "host": STRING,
        "request": OBJECT,
        "state": {"type": "string", "enum": [*LIVE_STATES, "ended"]},
        "node": nullable(STRING),
        "gpu_ids": {"type": "array", "items": INTEGER},
        "created": NUMBER,
        "placed": nullable(NUMBER),
        "started": nullable(NUMBER),
        "ended": nullable(NUMBER),
        "lease_expires": NUMBER,
        "end_reason": nullable(STRING),
        "secret": {"type": "string", "description": "only in the answer to its creation"},
        "secret_sha256": STRING,
        "notebook": {"type": "string", "description": "the notebook the work comes from, or ''"},
        "owner": nullable(
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
        "estimated_start": nullable(NUMBER),
        "agent_url": STRING,
        "share_needed": BOOLEAN,
        "gpus": {"type": "array", "items": GPU},
    },
}
POOL_GPU: Schema = {
    "allOf": [
        GPU,
        {
            "type": "object",
            "properties": {
                "holder": nullable(STRING),
                "session": nullable(STRING),
                "since": nullable(NUMBER),
                "utilization": nullable(NUMBER),
                "memory_used": nullable(NUMBER),
                "shared_by": {
                    "type": "array",
                    "description": "resident kernels sharing the GPU",
                    "items": {
                        "type": "object",
                        "properties": {
                            "user": STRING,
                            "session": STRING,
                            "gpu_mem": nullable(INTEGER),
                        },
                    },
                },
            },
        },
    ]
}
WARM_LEASE: Schema = {
    "type": "object",
    "required": ["id", "user", "host", "expires", "kernel", "in_use"],
    "properties": {
        "id": STRING,
        "user": STRING,
        "host": STRING,
        "expires": NUMBER,
        "kernel": BOOLEAN,
        "in_use": STRING,
    },
}
NODE: Schema = {
    "type": "object",
    "required": ["name", "url", "up", "gpus"],
    "properties": {
        "name": STRING,
        "url": STRING,
        "labels": {"type": "array", "items": STRING},
        "up": BOOLEAN,
        "gpus": {"type": "array", "items": POOL_GPU},
        "cache_warm_for": {"type": "integer", "minimum": 0},
        "warm_leases": {"type": "array", "items": WARM_LEASE},
    },
}
#: the pool as the scheduler shows it: nodes with holders, and the queue
POOL_PROPERTIES: Schema = {
    "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
    "queue": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
    "time": NUMBER,
    # who places sessions: the scheduler's queue, or Slurm
    "placement": {"type": "string", "enum": ["builtin", "slurm"]},
}

#: what each error status means, on any surface (a surface may say more of its own)
ERROR_TEXT = {
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

SESSION_ID: Schema = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{SESSION_ID_PATTERN}$"},
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*codes: int, **text: str) -> Schema:
    """Error responses, each ``{"message": ...}``; ``text``: ``e404="..."`` says more."""
    return {
        str(c): json_response(ref("Error"), text.get(f"e{c}", ERROR_TEXT.get(c, "an error")))
        for c in codes
    }


def operation(summary: str, responses: Schema, **extra: Any) -> Schema:
    """An operation behind the API's credential: a missing or wrong one gets 401 or 403."""
    return {"summary": summary, "responses": {**responses, **errors(401, 403)}, **extra}


def json_body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def query(name: str, schema: Schema, description: str = "") -> Schema:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    return {**parameter, "description": description} if description else parameter


def spec_operation() -> Schema:
    """The operation that serves a document itself: public, like an API's documentation."""
    return {
        "summary": "This description",
        "security": [],
        "responses": {"200": json_response(OBJECT, "OpenAPI 3")},
    }


def document(
    title: str,
    description: str,
    security: Schema,
    schemas: dict[str, Schema],
    paths: dict[str, Schema],
    base_url: str = "/",
) -> dict[str, Any]:
    """An OpenAPI 3 document whose operations all need ``security`` (one scheme named
    ``token``) unless they say otherwise; ``base_url``: where the service mounts its paths."""
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": title, "version": __version__, "description": description},
        "components": {
            "securitySchemes": {"token": security},
            "schemas": {"Error": ERROR, **schemas},
        },
        "security": [{"token": []}],
        "paths": paths,
    }
    if base_url.strip("/"):
        doc["servers"] = [{"url": "/" + base_url.strip("/")}]
    return doc


#: the scheme of every service here: the token in the Authorization header
TOKEN_HEADER: Schema = {
    "type": "apiKey",
    "in": "header",
    "name": "Authorization",
    "description": "'token <TOKEN>' or 'Bearer <TOKEN>'",
}

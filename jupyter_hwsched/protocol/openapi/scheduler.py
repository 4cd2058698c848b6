"""The OpenAPI 3 description of the scheduler's REST API, served at ``/api/spec``."""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.protocol.openapi.common import (
    GPU,
    INTEGER,
    NODE,
    NUMBER,
    POOL_PROPERTIES,
    REQUEST,
    SESSION,
    SESSION_ID,
    STRING,
    TOKEN_HEADER,
    document,
    errors,
    json_body,
    json_response,
    operation,
    query,
    ref,
    spec_operation,
)
from jupyter_hwsched.protocol.records import MAX_NAME, MAX_PATH, NODE_NAME_PATTERN
from jupyter_hwsched.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION

SPEC_PATH = "/api/spec"

USAGE_ROW = {
    "type": "object",
    "required": ["user", "sessions", "gpu_seconds_allocated", "gpu_seconds_busy"],
    "properties": {
        "user": STRING,
        "sessions": INTEGER,
        "gpu_seconds_allocated": NUMBER,
        "gpu_seconds_busy": NUMBER,
        "wait_seconds": NUMBER,
        "busy_fraction": {**NUMBER, "nullable": True},
        "allocated_from": {
            "type": "string",
            "enum": ["scheduler", "slurm accounting (sacct)"],
        },
    },
}
NODE_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{NODE_NAME_PATTERN}$"},
}
REGISTRATION = {
    "type": "object",
    "required": ["url", "gpus", "protocol"],
    "properties": {
        "url": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "protocol": {"type": "integer", "example": PROTOCOL_VERSION},
        "gpus": {"type": "array", "items": ref("Gpu")},
        "share": {"type": "boolean"},
        "labels": {"type": "array", "items": STRING},
    },
}
HEARTBEAT = {
    "type": "object",
    "required": ["sessions"],
    "properties": {
        "sessions": {"type": "array", "items": STRING},
        "stats": {
            "type": "object",
            "properties": {
                "utilization": {"type": "object", "additionalProperties": NUMBER},
                "memory_used": {"type": "object", "additionalProperties": NUMBER},
            },
        },
    },
}
SUBMISSION = {
    "type": "object",
    "required": ["user", "host"],
    "properties": {
        "request": ref("Request"),
        "user": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "host": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "group": {"type": "string", "maxLength": MAX_NAME},
        "notebook": {"type": "string", "maxLength": MAX_PATH},
    },
}

PATHS: dict[str, Any] = {
    "/api/pool": {
        "get": operation(
            "Nodes, GPUs with holders, and the queue",
            {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["nodes", "queue", "time"],
                        "properties": POOL_PROPERTIES,
                    },
                    "the pool",
                ),
            },
        )
    },
    "/api/nodes": {
        "get": operation(
            "The registered nodes",
            {"200": json_response({"type": "array", "items": ref("Node")}, "nodes")},
        )
    },
    "/api/nodes/{name}": {
        "put": operation(
            "Register a node (done by its agent)",
            {
                "200": json_response(
                    {"type": "object", "properties": {"name": STRING}}, "registered"
                ),
                **errors(400, 404, 426),
            },
            parameters=[NODE_NAME],
            requestBody=json_body(REGISTRATION),
        )
    },
    "/api/nodes/{name}/heartbeat": {
        "post": operation(
            "A node's heartbeat; answers the sessions it must end",
            {
                "200": json_response(
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
                **errors(400, 404),
            },
            parameters=[NODE_NAME],
            requestBody=json_body(HEARTBEAT),
        )
    },
    "/api/sessions": {
        "get": operation(
            "Live sessions (all=1: ended ones too)",
            {"200": json_response({"type": "array", "items": ref("Session")}, "sessions")},
            parameters=[query("all", {"type": "string", "enum": ["0", "1", "true", "false"]})],
        ),
        "post": operation(
            "Ask for GPUs; fails at once if no node could ever hold the request",
            {"201": json_response(ref("Session"), "queued or placed"), **errors(400, 413, 429)},
            requestBody=json_body(SUBMISSION),
        ),
    },
    "/api/sessions/{session_id}": {
        "get": operation(
            "A session, with its queue position while queued",
            {"200": json_response(ref("Session"), "the session"), **errors(404)},
            parameters=[SESSION_ID],
        ),
        "delete": operation(
            "End a session and return its GPUs to the pool (idempotent)",
            {"200": json_response(ref("Session"), "the ended session"), **errors(404)},
            parameters=[SESSION_ID, query("reason", STRING)],
        ),
    },
    "/api/sessions/{session_id}/renew": {
        "post": operation(
            "Renew the session's lease",
            {"200": json_response(ref("Session"), "renewed"), **errors(404, 410)},
            parameters=[SESSION_ID],
        ),
    },
    "/api/sessions/{session_id}/running": {
        "post": operation(
            "The node reports the session started (done by its agent)",
            {"200": json_response(ref("Session"), "running"), **errors(400, 404, 409, 410)},
            parameters=[SESSION_ID],
            requestBody=json_body(
                {"type": "object", "required": ["node"], "properties": {"node": STRING}}
            ),
        ),
    },
    "/api/usage": {
        "get": operation(
            "GPU-seconds allocated and busy per user",
            {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["since", "users"],
                        "properties": {
                            "since": NUMBER,
                            "users": {"type": "array", "items": ref("UsageRow")},
                        },
                    },
                    "the report",
                ),
                **errors(400),
            },
            parameters=[
                query(
                    "since",
                    {"type": "number", "minimum": 0},
                    "window in seconds (default 7 days)",
                )
            ],
        )
    },
    "/metrics": {
        "get": operation(
            "Prometheus metrics",
            {"200": {"description": "metrics", "content": {"text/plain": {"schema": STRING}}}},
        ),
    },
    SPEC_PATH: {"get": spec_operation()},
}

SPEC: dict[str, Any] = document(
    "jupyter-hwsched scheduler",
    "Queue, placement, leases and accounting of a pool of GPU nodes. "
    f"Protocol version {PROTOCOL_VERSION}: clients send it in the {PROTOCOL_HEADER} "
    "header, node agents in their registration; another version is refused with 426.",
    TOKEN_HEADER,
    {
        "Gpu": GPU,
        "Request": REQUEST,
        "Session": SESSION,
        "Node": NODE,
        "UsageRow": USAGE_ROW,
    },
    PATHS,
)

"""The OpenAPI 3 description of the developer's Jupyter server extension, served at
``/hwsched/api/spec`` under the server's base URL: what JupyterLab's GPU features call (the
pool, the user's sessions, "Run on GPU" runs, the start phases of remote kernels)."""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.protocol.openapi.common import (
    GPU,
    NODE,
    NUMBER,
    POOL_PROPERTIES,
    SESSION,
    SESSION_ID,
    STRING,
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
from jupyter_hwsched.protocol.records import MAX_PATH
from jupyter_hwsched.protocol.request import MAX_GPUS_PER_REQUEST, MAX_TEXT

SPEC_PATH = "/hwsched/api/spec"
#: the status of a scheduler that refused this server's token (never 401, which JupyterLab
#: would read as its user being signed out)
SCHEDULER_REFUSED = 502

#: the notebook of a run: relative to the server's root, inside it
NOTEBOOK_PATH: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_PATH,
    "pattern": r"^[^\x00]*[^/\x00][^\x00]*$",
    "description": "the notebook, relative to the server's root; no '..' and no NUL byte",
}
MY_SESSION = {
    "allOf": [
        SESSION,
        {
            "type": "object",
            "required": ["notebook_path"],
            "properties": {
                "notebook_path": {
                    "type": "string",
                    "description": "the notebook, relative to the server's root ('' if none)",
                }
            },
        },
    ]
}
RUN = {
    "type": "object",
    "required": ["id", "kernel_id", "kernel_name", "path", "request", "state", "events"],
    "properties": {
        "id": STRING,
        "kernel_id": STRING,
        "kernel_name": STRING,
        "path": STRING,
        "request": {
            "type": "object",
            "properties": {"gpus": {"type": "integer"}, "gpu_type": nullable(STRING)},
        },
        "created": NUMBER,
        "state": {"type": "string", "enum": ["starting", "ready", "ended", "failed"]},
        "error": STRING,
        "events": {"type": "array", "items": ref("Event")},
    },
}
EVENT = {
    "type": "object",
    "required": ["phase", "time"],
    "properties": {
        "phase": STRING,
        "time": NUMBER,
        "position": {"type": "integer"},
        "waiting_for": STRING,
        "node": STRING,
        "gpu_ids": {"type": "array", "items": {"type": "integer"}},
        "estimated_start": NUMBER,
    },
}
PROGRESS = {
    "type": "object",
    "required": ["kernel_id", "events"],
    "properties": {
        "kernel_id": nullable(STRING),
        "events": {"type": "array", "items": ref("Event")},
    },
}
RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$"},
}
KERNEL_ID = {**RUN_ID, "name": "kernel_id"}
SCHEDULER_ERRORS = errors(
    503,
    e503="no GPU pool is configured for this server, or its scheduler cannot be reached; "
    "the message says what to check",
)
SCHEDULER_ERRORS[str(SCHEDULER_REFUSED)] = json_response(
    ref("Error"), "the scheduler refused this server's token; the message names the setting"
)

PATHS: dict[str, Any] = {
    "/hwsched/api/pool": {
        "get": operation(
            "Nodes and GPUs with holders, the queue, and this user's live sessions",
            {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["nodes", "queue", "user", "mine", "simulated"],
                        "properties": {
                            **POOL_PROPERTIES,
                            "user": STRING,
                            "mine": {"type": "array", "items": ref("MySession")},
                            "simulated": {"type": "boolean"},
                        },
                    },
                    "the pool",
                ),
                **SCHEDULER_ERRORS,
            },
        )
    },
    "/hwsched/api/sessions": {
        "get": operation(
            "This user's live sessions; with a path, those of that notebook alone",
            {
                "200": json_response({"type": "array", "items": ref("MySession")}, "sessions"),
                **SCHEDULER_ERRORS,
            },
            parameters=[query("path", STRING, "a notebook, relative to the server's root")],
        )
    },
    "/hwsched/api/sessions/{session_id}": {
        "delete": operation(
            "Cancel one of this user's sessions (its kernel's, if a kernel here holds it)",
            {
                "200": json_response(ref("Session"), "the ended session"),
                **errors(404, e403="the session is another user's", e404="no such session"),
                **SCHEDULER_ERRORS,
            },
            parameters=[SESSION_ID],
        )
    },
    "/hwsched/api/runs": {
        "post": operation(
            "Run on GPU: start a notebook's kernel on pooled GPUs, in the background",
            {"202": json_response(ref("Run"), "starting"), **errors(400, 413)},
            requestBody=json_body(
                {
                    "type": "object",
                    "required": ["path"],
                    "properties": {
                        "path": NOTEBOOK_PATH,
                        "gpus": {"type": "integer", "minimum": 1, "maximum": MAX_GPUS_PER_REQUEST},
                        "gpu_type": nullable(
                            {"type": "string", "maxLength": MAX_TEXT, "example": "A100|H100"}
                        ),
                        "gpu_mem": nullable(
                            {"type": "string", "example": "40G", "description": "or bytes"}
                        ),
                        "shared": {"type": "boolean"},
                    },
                }
            ),
        )
    },
    "/hwsched/api/runs/{run_id}": {
        "get": operation(
            "A run: its state and its kernel's start phases",
            {"200": json_response(ref("Run"), "the run"), **errors(404)},
            parameters=[RUN_ID],
        ),
        "delete": operation(
            "End a run: cancel it in the queue, or shut its kernel down; the GPU goes back",
            {"200": json_response(ref("Run"), "the ended run"), **errors(404)},
            parameters=[RUN_ID],
        ),
    },
    "/hwsched/api/kernels/progress": {
        "get": operation(
            "The start phases of the Remote GPU kernel started last for a notebook",
            {"200": json_response(ref("Progress"), "its phases (none: no such kernel)")},
            parameters=[query("path", STRING, "the notebook, relative to the server's root")],
        )
    },
    "/hwsched/api/kernels/{kernel_id}/progress": {
        "get": operation(
            "The start phases of a Remote GPU kernel",
            {"200": json_response(ref("Progress"), "its phases (none: no such kernel)")},
            parameters=[KERNEL_ID],
        )
    },
    SPEC_PATH: {"get": spec_operation()},
}


def serverext_spec(base_url: str = "/") -> dict[str, Any]:
    """The description, for a Jupyter server that serves under ``base_url``."""
    return document(
        "jupyter-hwsched Jupyter server extension",
        "What JupyterLab's GPU features call on the developer's own Jupyter server: the pool, "
        "the user's sessions, Run on GPU, and the start phases of Remote GPU kernels. The "
        "server talks to the scheduler with its own settings; the user here is the server's.",
        {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "'token <JUPYTER SERVER TOKEN>'",
        },
        {
            "Gpu": GPU,
            "Node": NODE,
            "Session": SESSION,
            "MySession": MY_SESSION,
            "Run": RUN,
            "Event": EVENT,
            "Progress": PROGRESS,
        },
        PATHS,
        base_url,
    )

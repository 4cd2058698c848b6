"""Durable state of the scheduler in SQLite: registered nodes and sessions.

Columns that hold structures store JSON; every statement binds its parameters.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name        TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    gpus        TEXT NOT NULL,          -- JSON list of GPU descriptions
    registered  REAL NOT NULL,
    last_seen   REAL NOT NULL,
    stats       TEXT NOT NULL DEFAULT '{}',
    info        TEXT NOT NULL DEFAULT '{}'  -- JSON: what clients must know, e.g. {"share": true}
);
CREATE TABLE IF NOT EXISTS sessions (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT UNIQUE NOT NULL,
    user           TEXT NOT NULL,
    host           TEXT NOT NULL,
    request        TEXT NOT NULL,       -- JSON HardwareRequest
    state          TEXT NOT NULL,       -- queued | placed | running | ended
    node           TEXT,
    gpu_ids        TEXT NOT NULL DEFAULT '[]',
    created        REAL NOT NULL,
    placed         REAL,
    started        REAL,
    ended          REAL,
    lease_expires  REAL NOT NULL,
    end_reason     TEXT
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions(state);
"""

_SESSION_JSON = ("request", "gpu_ids")
_NODE_JSON = ("gpus", "stats", "info")


class Store:
    """One SQLite database; the scheduler is its only writer."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(nodes)")}
        if "info" not in columns:  # databases made before nodes described themselves
            self.db.execute("ALTER TABLE nodes ADD COLUMN info TEXT NOT NULL DEFAULT '{}'")

    def close(self) -> None:
        self.db.close()

    # nodes

    def upsert_node(
        self, name: str, url: str, gpus: list[dict[str, Any]], info: dict[str, Any], now: float
    ) -> None:
        self.db.execute(
            "INSERT INTO nodes (name, url, gpus, info, registered, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET url=excluded.url, gpus=excluded.gpus, "
            "info=excluded.info, last_seen=excluded.last_seen",
            (name, url, json.dumps(gpus), json.dumps(info), now, now),
        )

    def touch_node(self, name: str, now: float, stats: dict[str, Any]) -> bool:
        cur = self.db.execute(
            "UPDATE nodes SET last_seen=?, stats=? WHERE name=?", (now, json.dumps(stats), name)
        )
        return cur.rowcount == 1

    def nodes(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM nodes ORDER BY name").fetchall()
        return [_decode(row, _NODE_JSON) for row in rows]

    def node(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM nodes WHERE name=?", (name,)).fetchone()
        return _decode(row, _NODE_JSON) if row else None

    # sessions

    def add_session(self, session: dict[str, Any]) -> None:
        fields = dict(session)
        for key in _SESSION_JSON:
            fields[key] = json.dumps(fields.get(key, []))
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self.db.execute(f"INSERT INTO sessions ({names}) VALUES ({marks})", tuple(fields.values()))

    def update_session(self, session_id: str, **fields: Any) -> None:
        for key in _SESSION_JSON:
            if key in fields:
                fields[key] = json.dumps(fields[key])
        assignments = ", ".join(f"{_column(k)}=?" for k in fields)
        self.db.execute(
            f"UPDATE sessions SET {assignments} WHERE id=?", (*fields.values(), session_id)
        )

    def session(self, session_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        return _decode(row, _SESSION_JSON) if row else None

    def sessions(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        if states:
            marks = ", ".join("?" for _ in states)
            rows = self.db.execute(
                f"SELECT * FROM sessions WHERE state IN ({marks}) ORDER BY seq", states
            ).fetchall()
        else:
            rows = self.db.execute("SELECT * FROM sessions ORDER BY seq").fetchall()
        return [_decode(row, _SESSION_JSON) for row in rows]


_COLUMNS = frozenset(
    [
        "user",
        "host",
        "request",
        "state",
        "node",
        "gpu_ids",
        "placed",
        "started",
        "ended",
        "lease_expires",
        "end_reason",
    ]
)


def _column(name: str) -> str:
    """Column names come from code, never from a request; refuse anything else."""
    if name not in _COLUMNS:
        raise ValueError(f"not an updatable session column: {name}")
    return name


def _decode(row: sqlite3.Row, json_fields: tuple[str, ...]) -> dict[str, Any]:
    data = dict(row)
    for key in json_fields:
        data[key] = json.loads(data[key])
    return data

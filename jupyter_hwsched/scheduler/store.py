"""Durable state of the scheduler in SQLite: registered nodes and sessions.

The scheduler keeps its working set in memory and writes every change through to here before
it answers, so a restarted scheduler loads exactly the state it had. Structured columns hold
JSON; every statement binds its parameters.

Each write commits at once, unless the store has ``on_dirty`` set: then the first write opens
a transaction, ``on_dirty`` is called, and whoever set it commits later with ``commit()``
(the scheduler's service commits once per turn of its event loop, for every request of that
turn, before it answers any of them: see :mod:`.commits`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from jupyter_hwsched.protocol.errors import UnavailableError
from jupyter_hwsched.scheduler.model import LIVE_STATES, Node, Session

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name        TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    gpus        TEXT NOT NULL,          -- JSON list of GPU descriptions
    registered  REAL NOT NULL,
    last_seen   REAL NOT NULL,
    stats       TEXT NOT NULL DEFAULT '{}',
    info        TEXT NOT NULL DEFAULT '{}'  -- JSON: {"share": bool, "labels": [...]}
);
CREATE TABLE IF NOT EXISTS sessions (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT UNIQUE NOT NULL,
    user           TEXT NOT NULL,
    grp            TEXT NOT NULL DEFAULT '',
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
    end_reason     TEXT,
    busy           REAL NOT NULL DEFAULT 0,
    secret_hash    TEXT NOT NULL DEFAULT '',
    notebook       TEXT NOT NULL DEFAULT '',
    owner          TEXT NOT NULL DEFAULT '', -- JSON Identity, verified; '' without identities
    slurm_job      TEXT NOT NULL DEFAULT '', -- its Slurm job, where Slurm places sessions
    cell_seconds   REAL NOT NULL DEFAULT 0   -- a shared kernel's cells' run time
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions(state);
CREATE INDEX IF NOT EXISTS sessions_ended ON sessions(ended);
"""

# columns added after the first release of the schema: (table, column, definition)
MIGRATIONS = [
    ("nodes", "info", "TEXT NOT NULL DEFAULT '{}'"),
    ("sessions", "grp", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "busy", "REAL NOT NULL DEFAULT 0"),
    ("sessions", "secret_hash", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "notebook", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "slurm_job", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "cell_seconds", "REAL NOT NULL DEFAULT 0"),
]


#: SQLite's ``synchronous`` settings the store offers (WAL mode): FULL syncs the log at every
#: commit, so a commit the scheduler answered for survives a power cut; NORMAL syncs it only
#: at checkpoints, so the last commits may be lost on a power cut (not on a crash)
SYNCHRONOUS = ("full", "normal")


class StoreFailure(UnavailableError):
    """The state could not be written (a full disk); what was not committed is rolled back."""


class Store:
    """One SQLite database; the scheduler is its only writer."""

    def __init__(self, path: str | Path, synchronous: str = "full") -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        for table, column, definition in MIGRATIONS:
            exists = self.db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name=?", (table,)
            ).fetchone()
            if exists:
                columns = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        self.db.executescript(SCHEMA)

        #: called when a write opens a transaction; ``None``: every write commits at once
        self.on_dirty: Callable[[], None] | None = None
        #: called when a write or commit failed and was rolled back: the working set may
        #: hold changes the store does not
        self.on_failure: Callable[[StoreFailure], None] | None = None

    def close(self) -> None:
        self.commit()
        self.db.close()

    def _write(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            if self.on_dirty is not None and not self.db.in_transaction:
                self.db.execute("BEGIN")
                self.on_dirty()
            return self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def commit(self) -> None:
        """Make the open transaction durable (with ``synchronous=full``); a failure rolls it
        back and raises StoreFailure."""
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: sqlite3.Error) -> StoreFailure:
        """Roll back what was not committed, and say so."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite rolled back already, or cannot: nothing more to do
                pass
        failure = StoreFailure(
            f"the scheduler could not write its state ({exc}); nothing was changed: try "
            "again once its operator has made room on its disk"
        )
        if self.on_failure is not None:
            self.on_failure(failure)
        return failure

    # nodes

    def save_node(self, node: Node) -> None:
        self._write(
            "INSERT INTO nodes (name, url, gpus, info, registered, last_seen, stats) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET url=excluded.url, gpus=excluded.gpus, "
            "info=excluded.info, last_seen=excluded.last_seen, stats=excluded.stats",
            (
                node.name,
                node.url,
                json.dumps(node.gpus),
                json.dumps(node.info),
                node.registered,
                node.last_seen,
                json.dumps(node.stats),
            ),
        )

    def touch_node(self, node: Node) -> None:
        self._write(
            "UPDATE nodes SET last_seen=?, stats=? WHERE name=?",
            (node.last_seen, json.dumps(node.stats), node.name),
        )

    def nodes(self) -> list[Node]:
        out = []
        for row in self.db.execute("SELECT * FROM nodes ORDER BY name"):
            out.append(
                Node(
                    name=row["name"],
                    url=row["url"],
                    gpus=json.loads(row["gpus"]),
                    info=json.loads(row["info"]),
                    registered=row["registered"],
                    last_seen=row["last_seen"],
                    stats=json.loads(row["stats"]),
                )
            )
        return out

    # sessions

    def add_session(self, session: Session) -> int:
        row = session.row()
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cur = self._write(f"INSERT INTO sessions ({names}) VALUES ({marks})", tuple(row.values()))
        return int(cur.lastrowid or 0)

    def save_session(self, session: Session) -> None:
        row = session.row()
        row.pop("id")
        assignments = ", ".join(f"{name}=?" for name in row)
        self._write(f"UPDATE sessions SET {assignments} WHERE id=?", (*row.values(), session.id))

    def session(self, session_id: str) -> Session | None:
        row = self.db.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        return Session.from_row(dict(row)) if row else None

    def live_sessions(self) -> list[Session]:
        marks = ", ".join("?" for _ in LIVE_STATES)
        rows = self.db.execute(
            f"SELECT * FROM sessions WHERE state IN ({marks}) ORDER BY seq", LIVE_STATES
        )
        return [Session.from_row(dict(r)) for r in rows]

    def ended_since(self, since: float) -> list[Session]:
        rows = self.db.execute(
            "SELECT * FROM sessions WHERE state='ended' AND ended>=? ORDER BY seq", (since,)
        )
        return [Session.from_row(dict(r)) for r in rows]

"""SQLite records of sandboxes, sessions and snapshots, so a restarted manager knows what it owns.

Rows hold the wire models as JSON; the database is small and local, so calls run inline on
the event loop (well under a millisecond each).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rock.models import Sandbox, Snapshot

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, sandbox_id TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def put_sandbox(self, sb: Sandbox) -> None:
        self.db.execute("INSERT OR REPLACE INTO sandboxes VALUES (?, ?)", (sb.id, sb.model_dump_json()))

    def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
        row = self.db.execute("SELECT data FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return Sandbox.model_validate_json(row[0]) if row else None

    def list_sandboxes(self) -> list[Sandbox]:
        rows = self.db.execute("SELECT data FROM sandboxes").fetchall()
        return sorted((Sandbox.model_validate_json(r[0]) for r in rows), key=lambda s: s.created_at)

    def delete_sandbox(self, sandbox_id: str) -> None:
        self.db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def put_session(self, session_id: str, sandbox_id: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (session_id, sandbox_id))

    def list_sessions(self) -> list[tuple[str, str]]:
        """(session id, sandbox id) of every recorded session."""
        return self.db.execute("SELECT id, sandbox_id FROM sessions ORDER BY rowid").fetchall()

    def delete_session(self, session_id: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def delete_sessions_of(self, sandbox_id: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE sandbox_id = ?", (sandbox_id,))

    def put_snapshot(self, snap: Snapshot) -> None:
        self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (snap.snapshot_id, snap.model_dump_json()))

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        row = self.db.execute("SELECT data FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        return Snapshot.model_validate_json(row[0]) if row else None

    def list_snapshots(self) -> list[Snapshot]:
        rows = self.db.execute("SELECT data FROM snapshots").fetchall()
        return sorted((Snapshot.model_validate_json(r[0]) for r in rows), key=lambda s: s.created_at)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    def close(self) -> None:
        self.db.close()

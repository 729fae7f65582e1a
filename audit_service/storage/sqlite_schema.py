"""Versioned schema migrations for the SQLite backend, applied in order on start.

``PRAGMA user_version`` records how many have run. Append new migrations; never edit one that
has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from audit_service.query import FIELDS

# Columns with their own index: every filter field and every sort. SQLite appends the rowid
# (``seq``) to each index, so one index serves both "WHERE col ..." and the keyset order
# "ORDER BY col, seq".
INDEXED_COLUMNS = (
    "occurred_at",
    "recorded_at",
    "resource",
    "identifier",
    "blueprint",
    "integration",
    "run_id",
    "operation",
    "source_id",
    "source_name",
    "source",
    "source_kind",
    "origin",
    "status",
    "error",
    "recorded_by",
)


def _v1_events(db: sqlite_utils.Database) -> None:
    db["events"].create(  # type: ignore[union-attr]
        {
            # seq is the rowid; it follows id order because the one writer mints both in order.
            "seq": int,
            "id": str,
            "occurred_at": int,
            "recorded_at": int,
            "resource": str,
            "identifier": str,
            "blueprint": str,
            "integration": str,
            "run_id": str,
            "operation": str,
            "source_kind": str,
            "source_id": str,
            "source_name": str,
            "source": str,  # the label people see: name, else id; what `source` sorts by
            "origin": str,
            "status": str,
            "error": str,
            "recorded_by": str,
            "idempotency_key": str,  # NULL when the client gave none
            "context": str,  # JSON object
            "diff_available": int,
        },
        pk="seq",
        not_null={c for c in _event_columns() if c != "idempotency_key"},
    )
    db.execute("CREATE UNIQUE INDEX events_id ON events(id)")
    db.execute(
        "CREATE UNIQUE INDEX events_idempotency ON events(recorded_by, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL"
    )
    for column in INDEXED_COLUMNS:
        db.execute(f"CREATE INDEX events_{column} ON events({column})")
    # context.<key> filters: one row per (key, value), clustered for "key = ? AND value ...".
    db.execute(
        "CREATE TABLE event_context (key TEXT NOT NULL, value TEXT NOT NULL,"
        " seq INTEGER NOT NULL, PRIMARY KEY (key, value, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX event_context_seq ON event_context(seq)")
    # Snapshots live apart so List's scans stay over small rows.
    db.execute("CREATE TABLE snapshots (seq INTEGER PRIMARY KEY, before TEXT, after TEXT)")
    # CONTAINS on error: a contentless trigram index, rowid = events.seq, only non-empty
    # errors. Deleting from it takes the original text (the FTS5 "delete" command).
    db.execute("CREATE VIRTUAL TABLE error_fts USING fts5(error, content='', tokenize='trigram')")


def _event_columns() -> list[str]:
    return [
        "seq", "id", "occurred_at", "recorded_at", "resource", "identifier", "blueprint",
        "integration", "run_id", "operation", "source_kind", "source_id", "source_name",
        "source", "origin", "status", "error", "recorded_by", "context", "diff_available",
    ]  # fmt: skip


def _v2_retention_index(db: sqlite_utils.Database) -> None:
    # Retention sweeps take the oldest events of one resource type; the console's tabs filter
    # by resource and sort by date. One index serves both.
    db.execute("CREATE INDEX events_resource_occurred_at ON events(resource, occurred_at)")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1_events, _v2_retention_index]


def migrate(db: sqlite_utils.Database) -> int:
    """Apply every migration not yet applied, each in its own transaction. Returns the version."""
    conn = db.conn
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this audit-service knows"
            f" ({len(MIGRATIONS)}): upgrade audit-service"
        )
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migration(db)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


assert set(FIELDS) - {"source"} <= set(INDEXED_COLUMNS)

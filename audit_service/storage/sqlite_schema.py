"""Versioned schema migrations for the SQLite backend, applied in order on start.

``PRAGMA user_version`` records how many have run. Append new migrations; never edit one that
has shipped.
"""

from __future__ import annotations

import sqlite3
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


# The text CONTAINS on ``snapshot_text`` searches: the keys and string values of one
# snapshots row's before and after, each once, sorted (by UTF-8 bytes), one per line. SQL, so
# the writer computes it in SQLite (no Python per event) and a delete can recompute what an
# insert indexed (the FTS5 "delete" command needs the original text).
SNAPSHOT_TEXT_SQL = (
    "(SELECT group_concat(v, char(10)) FROM ("
    "SELECT key AS v FROM json_tree(s.before) WHERE typeof(key) = 'text'"
    " UNION SELECT atom FROM json_tree(s.before) WHERE type = 'text'"
    " UNION SELECT key FROM json_tree(s.after) WHERE typeof(key) = 'text'"
    " UNION SELECT atom FROM json_tree(s.after) WHERE type = 'text'"
    " ORDER BY 1))"
)

# v3: every filter and sort column indexed behind ``resource``, the tab every console query
# filters by: (resource, column) serves "resource = ? AND column ..." and the keyset order
# "ORDER BY column, seq" (SQLite appends the rowid, seq) within one tab. Queries across tabs
# run one branch per resource type (see storage.sqlite). ``resource`` alone keeps its index
# (the sort by resource), and so does ``occurred_at``: the whole log, newest first, is the
# commonest query outside the console (auditctl, exporters).
TAB_INDEXED_COLUMNS = tuple(c for c in INDEXED_COLUMNS if c != "resource")

# The planner's statistics (sqlite_stat1), fixed rather than measured: plans then do not
# change with the data, and every query is planned as for a large table. Rows per index,
# then the average rows per distinct value of each prefix of its columns; a million events.
_ROWS_PER_VALUE = {
    "occurred_at": 1,
    "recorded_at": 1,
    "identifier": 10,
    "blueprint": 3000,
    "integration": 5000,
    "run_id": 100,
    "operation": 30000,
    "source_id": 300,
    "source_name": 300,
    "source": 300,
    "source_kind": 30000,
    "origin": 10000,
    "status": 60000,
    "error": 50000,
    "recorded_by": 20000,
}
_EVENTS = 1_000_000
_PER_TAB = _EVENTS // 9
PLANNER_STATS: tuple[tuple[str, str, str], ...] = (
    ("events", "events_id", f"{_EVENTS} 1"),
    ("events", "events_idempotency", f"{_EVENTS // 2} 100000 1"),
    ("events", "events_resource", f"{_EVENTS} {_PER_TAB}"),
    ("events", "events_occurred_at", f"{_EVENTS} 1"),
    ("events", "events_resource_occurred_at", f"{_EVENTS} {_PER_TAB} 1"),
    *(
        ("events", f"events_resource_{c}", f"{_EVENTS} {_PER_TAB} {_ROWS_PER_VALUE[c]}")
        for c in TAB_INDEXED_COLUMNS
        if c != "occurred_at"
    ),
    ("event_context", "sqlite_autoindex_event_context_1", f"{2 * _EVENTS} 300000 2000 1"),
    ("event_context", "event_context_seq", f"{2 * _EVENTS} 2"),
)


def _v3_tab_indexes_and_snapshot_search(db: sqlite_utils.Database) -> None:
    for column in INDEXED_COLUMNS:
        if column not in ("resource", "occurred_at"):
            db.execute(f"DROP INDEX events_{column}")
    for column in TAB_INDEXED_COLUMNS:
        if column != "occurred_at":  # events_resource_occurred_at exists (v2)
            db.execute(f"CREATE INDEX events_resource_{column} ON events(resource, {column})")
    # CONTAINS on snapshot_text: a contentless trigram index like error_fts, rowid = seq.
    db.execute("CREATE VIRTUAL TABLE snapshot_fts USING fts5(text, content='', tokenize='trigram')")
    db.execute(
        f"INSERT INTO snapshot_fts (rowid, text) SELECT s.seq, {SNAPSHOT_TEXT_SQL} FROM snapshots s"
    )
    db.execute("ANALYZE sqlite_schema")  # creates sqlite_stat1 without reading the tables
    db.execute("DELETE FROM sqlite_stat1 WHERE tbl IN ('events', 'event_context')")
    db.conn.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", PLANNER_STATS)
    db.execute("ANALYZE sqlite_schema")  # (re)loads the statistics into this connection


# v4: the indexes a tab's default order (occurred_at) is read from carry what its filters
# check, so a filter that matches a few thousand events of a tab no longer reads rows:
#
# - (resource, occurred_at) becomes (resource, occurred_at, seq, <the tab's enum and short
#   text columns>): a tab walked newest first checks status, origin, blueprint, integration,
#   operation, source_kind and recorded_by in the index (a covering walk) instead of reading
#   one events row per entry. ``seq`` is named so the index is in (occurred_at, seq) order,
#   the keyset order, with the checked columns after it.
# - (resource, source_id) and (resource, source_name), which only filters use (the sort by
#   source reads ``source``), end with occurred_at: one source's events are read newest first
#   from the index, or sorted by date without reading rows.
# - a partial (resource, error, occurred_at) over failures only (3% of events; successes do
#   not write to it): an error STARTS_WITH or EQUALS is looked up and sorted by date there.
#   (resource, error) stays for the sort by error, whose first run is every success.
#
# A success writes as many index entries as in v3, a failure one more; the date index's
# entries grow by about 60 bytes. On the 1M-event benchmark database (1.9 GB, in the page
# cache) the migration took 5.5 s: three indexes rebuilt, one built.
WIDE_COLUMNS = (
    "status", "origin", "blueprint", "integration", "operation", "source_kind", "recorded_by",
)  # fmt: skip
V4_INDEXES = (
    "CREATE INDEX events_resource_occurred_at ON events(resource, occurred_at, seq, "
    + ", ".join(WIDE_COLUMNS) + ")",
    "CREATE INDEX events_resource_source_id ON events(resource, source_id, occurred_at)",
    "CREATE INDEX events_resource_source_name ON events(resource, source_name, occurred_at)",
    "CREATE INDEX events_resource_failure ON events(resource, error, occurred_at)"
    " WHERE error != ''",
)  # fmt: skip
_V4_STATS: tuple[tuple[str, str, str], ...] = (
    (
        "events",
        "events_resource_occurred_at",
        f"{_EVENTS} {_PER_TAB} 1 1" + " 1" * len(WIDE_COLUMNS),
    ),
    ("events", "events_resource_source_id", f"{_EVENTS} {_PER_TAB} 300 1"),
    ("events", "events_resource_source_name", f"{_EVENTS} {_PER_TAB} 300 1"),
    ("events", "events_resource_failure", f"{_EVENTS // 30} {_PER_TAB // 30} 2 1"),
)
PLANNER_STATS_V4 = (
    *(row for row in PLANNER_STATS if row[1] not in {r[1] for r in _V4_STATS}),
    *_V4_STATS,
)


def write_planner_stats(conn: sqlite3.Connection) -> None:
    """Replace the planner statistics of ``events`` and ``event_context`` by the fixed ones of
    the current schema (a DROP INDEX deletes an index's rows; a bulk load that drops and
    builds indexes calls this after)."""
    _write_stats(conn, PLANNER_STATS_V5)


def _write_stats(conn: sqlite3.Connection, stats: tuple[tuple[str, str, str], ...]) -> None:
    conn.execute("ANALYZE sqlite_schema")  # creates sqlite_stat1 without reading the tables
    conn.execute("DELETE FROM sqlite_stat1 WHERE tbl IN ('events', 'event_context')")
    conn.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", stats)
    conn.execute("ANALYZE sqlite_schema")  # (re)loads the statistics into this connection


def _v4_indexes_carry_the_date(db: sqlite_utils.Database) -> None:
    for name in (
        "events_resource_occurred_at", "events_resource_source_id", "events_resource_source_name",
    ):  # fmt: skip
        db.execute(f"DROP INDEX {name}")
    for sql in V4_INDEXES:
        db.execute(sql)
    _write_stats(db.conn, PLANNER_STATS_V4)


# v5: ``event_context`` carries its event's ``resource`` and ``occurred_at``, with primary key
# (key, value, resource, occurred_at, seq): one value's events of one tab are a range of it in
# the tab's default order (newest first), so a context rule in a tab sorted by date is a walk
# of that range, one page of entries, instead of a walk of the tab's date index with one
# ``event_context`` probe per event walked. (key, value) still leads, for lookups and counts.
# The rows are built from ``events.context`` by the insert itself (``sqlite_rows``); a
# row-by-row check of an event names the whole key. The table is rewritten in key order;
# ``event_context_seq`` (retention deletes, row-by-row checks of CONTAINS and ranges) is built
# again after. On the 1M-event benchmark database (2.1M context rows, 2 GB, in the page cache)
# the migration took 9.4 s (8.5 s of CPU) to 12 s, the machine's 2 cores shared with other
# work (load 2.6 to 5).
EVENT_CONTEXT_V5 = (
    "CREATE TABLE event_context (key TEXT NOT NULL, value TEXT NOT NULL,"
    " resource TEXT NOT NULL, occurred_at INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " PRIMARY KEY (key, value, resource, occurred_at, seq)) WITHOUT ROWID"
)
_V5_STATS: tuple[tuple[str, str, str], ...] = (
    (
        "event_context",
        "sqlite_autoindex_event_context_1",
        f"{2 * _EVENTS} 300000 2000 500 1 1",
    ),
    ("event_context", "event_context_seq", f"{2 * _EVENTS} 2 1 1 1 1"),
)
PLANNER_STATS_V5 = (
    *(row for row in PLANNER_STATS_V4 if row[1] not in {r[1] for r in _V5_STATS}),
    *_V5_STATS,
)


def _v5_context_carries_the_tab_and_date(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE event_context RENAME TO event_context_v4")
    db.execute(EVENT_CONTEXT_V5)
    # The events' resource and date from an index that holds them (not the events rows), the
    # context rows by seq from the old table's seq index; inserted in primary key order.
    db.execute(
        "INSERT INTO event_context (key, value, resource, occurred_at, seq)"
        " SELECT c.key, c.value, e.resource, e.occurred_at, c.seq"
        " FROM events e INDEXED BY events_resource_occurred_at"
        " CROSS JOIN event_context_v4 c INDEXED BY event_context_seq ON c.seq = e.seq"
        " ORDER BY 1, 2, 3, 4, 5"
    )
    db.execute("DROP TABLE event_context_v4")  # and its event_context_seq
    db.execute("CREATE INDEX event_context_seq ON event_context(seq)")
    write_planner_stats(db.conn)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_events,
    _v2_retention_index,
    _v3_tab_indexes_and_snapshot_search,
    _v4_indexes_carry_the_date,
    _v5_context_carries_the_tab_and_date,
]


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


assert set(FIELDS) - {"source", "snapshot_text"} <= set(TAB_INDEXED_COLUMNS) | {"resource"}

"""The rows an event is stored as in SQLite (built, inserted many at a time) and read back."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from audit_service import models
from audit_service.models import NewEvent, StoredEvent, encode_json, to_json
from audit_service.storage.sqlite_schema import SNAPSHOT_TEXT_SQL

# The intake log keeps ``event_row`` tuples across restarts (``sqlite_intake``): a migration that
# changes this column list must also read the groups an older version staged.
INSERT_EVENT = (
    "INSERT INTO events (seq, id, occurred_at, recorded_at, resource, identifier, blueprint,"
    " integration, run_id, operation, source_kind, source_id, source_name, source, origin,"
    " status, error, recorded_by, idempotency_key, context, diff_available)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The context rows of the events with seq in [first, last], built from their ``context``
# column (a JSON object): each entry with its event's resource, date and seq.
INSERT_CONTEXT = (
    "INSERT INTO event_context (key, value, resource, occurred_at, seq)"
    " SELECT j.key, j.value, e.resource, e.occurred_at, e.seq"
    " FROM events e, json_each(e.context) j WHERE e.seq BETWEEN ? AND ?"
)
INSERT_SNAPSHOT = "INSERT INTO snapshots (seq, before, after) VALUES (?, ?, ?)"
INSERT_ERROR_FTS = "INSERT INTO error_fts (rowid, error) VALUES (?, ?)"
INDEX_SNAPSHOTS = (
    f"INSERT INTO snapshot_fts (rowid, text) SELECT s.seq, {SNAPSHOT_TEXT_SQL}"
    " FROM snapshots s WHERE s.seq BETWEEN ? AND ?"
)
# Rows per INSERT statement: up to this many, so a group's rows of one table are one statement
# as a rule. Every statement releases and retakes the GIL (executemany: one step per row), and
# while other threads run Python each retake can wait out the switch interval, stalling the
# writer. Multi-row statements cut a group commit to a few statements (and SQLite does less
# per row). Each size is its own SQL text, prepared once and cached (``cached_statements``).
_ROWS_PER_INSERT = 512
# SQLite's default limit on parameters per statement: 32766 since 3.32, 999 before.
_MAX_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


class Rows:
    """The rows a group of events is stored as, gathered before they are written: the
    ``events`` row, the ``snapshots`` row and the text indexes. (The ``event_context`` rows
    are built from the ``events`` rows when written: ``INSERT_CONTEXT``.)"""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.snapshots: list[tuple[int, str | None, str | None]] = []
        self.errors: list[tuple[int, str]] = []

    def add(self, seq: int, event_id: str, recorded_at: int, event: NewEvent) -> None:
        encoded = event.json_text or encode_json(event)  # (conversion encodes it as a rule)
        self.events.append(event_row(seq, event_id, recorded_at, event, encoded[2]))
        if event.before is not None or event.after is not None:
            self.snapshots.append((seq, encoded[0], encoded[1]))
        if event.error:
            self.errors.append((seq, event.error))

    def __len__(self) -> int:
        "How many events."
        return len(self.events)

    @property
    def last_seq(self) -> int:
        "The seq of the last event (rows are added in seq order)."
        last: int = self.events[-1][0]
        return last

    def extend(self, other: Rows) -> None:
        "Add ``other``'s rows after these (its seqs follow these)."
        self.events.extend(other.events)
        self.snapshots.extend(other.snapshots)
        self.errors.extend(other.errors)

    @classmethod
    def merged(cls, groups: Iterable[Rows]) -> Rows:
        "One Rows with every group's rows, in the order given."
        rows = cls()
        for group in groups:
            rows.extend(group)
        return rows

    def after(self, seq: int) -> Rows:
        "The rows of the events whose seq is greater than ``seq``."
        rows = Rows()
        rows.events = [r for r in self.events if r[0] > seq]
        rows.snapshots = [r for r in self.snapshots if r[0] > seq]
        rows.errors = [r for r in self.errors if r[0] > seq]
        return rows

    def to_json(self) -> str:
        "All the rows as one JSON text (``from_json`` reads it back)."
        # The second list held context rows before schema version 5. It stays, empty, so the
        # format is unchanged: in a log written before, it is ignored (the insert builds the
        # context rows from the events rows).
        return to_json([self.events, [], self.snapshots, self.errors])

    @classmethod
    def from_json(cls, text: str) -> Rows:
        rows = cls()
        # JSON arrays come back as lists; INSERT binds them the same as tuples.
        rows.events, _, rows.snapshots, rows.errors = json.loads(text)
        return rows

    def commit(self, conn: sqlite3.Connection) -> None:
        "Write every row in a transaction of its own. :raises sqlite3.Error: none written."
        conn.execute("BEGIN IMMEDIATE")
        try:
            self.write(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def write(self, conn: sqlite3.Connection, *, index_snapshots: bool = True) -> None:
        """Insert every row (inside the caller's transaction). ``index_snapshots=False``
        leaves the snapshot text index to the caller (``index_snapshots_of``; bulk loads)."""
        insert_rows(conn, INSERT_EVENT, self.events)
        if self.events:
            conn.execute(INSERT_CONTEXT, [self.events[0][0], self.events[-1][0]])
        insert_rows(conn, INSERT_SNAPSHOT, self.snapshots)
        insert_rows(conn, INSERT_ERROR_FTS, self.errors)
        if self.snapshots and index_snapshots:
            index_snapshots_of(conn, self.snapshots[0][0], self.snapshots[-1][0])


def index_snapshots_of(conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
    "Add the snapshot rows with seq in [first, last] to the snapshot text index."
    conn.execute(INDEX_SNAPSHOTS, [first_seq, last_seq])


# Where ``event_row`` puts the principal and the idempotency key.
PRINCIPAL_COLUMN = 17
KEY_COLUMN = 18


def event_row(
    seq: int, event_id: str, recorded_at: int, e: NewEvent, context: str | None = None
) -> tuple[Any, ...]:
    return (
        seq,
        event_id,
        e.occurred_at,
        recorded_at,
        e.resource.value,
        e.identifier,
        e.blueprint,
        e.integration,
        e.run_id,
        e.operation.value,
        e.source.kind.value,
        e.source.id,
        e.source.name,
        e.source.label,
        e.origin.value,
        e.status.value,
        e.error,
        e.recorded_by,
        e.idempotency_key or None,
        to_json(e.context) if context is None else context,
        int(e.diff_available),
    )


def stored_event(row: Sequence[Any], *, with_snapshots: bool) -> StoredEvent:
    before = after = None
    if with_snapshots:
        before, after = loads(row[-2]), loads(row[-1])
    return StoredEvent(
        id=row[1],
        occurred_at=row[2],
        recorded_at=row[3],
        resource=_RESOURCES[row[4]],
        identifier=row[5],
        blueprint=row[6],
        integration=row[7],
        run_id=row[8],
        operation=_OPERATIONS[row[9]],
        source=models.Source(_SOURCE_KINDS[row[10]], row[11], row[12]),
        origin=_ORIGINS[row[13]],
        status=_STATUSES[row[14]],
        error=row[15],
        recorded_by=row[16],
        idempotency_key=row[17] or "",
        context=json.loads(row[18]),
        diff_available=bool(row[19]),
        before=before,
        after=after,
    )


# Stored names to enum members: a dict lookup instead of an Enum call per value read.
_RESOURCES = {m.value: m for m in models.ResourceType}
_OPERATIONS = {m.value: m for m in models.Operation}
_SOURCE_KINDS = {m.value: m for m in models.SourceKind}
_ORIGINS = {m.value: m for m in models.Origin}
_STATUSES = {m.value: m for m in models.Status}


def insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> None:
    "Run ``insert`` (one ``VALUES (...)`` row) for every row, up to 512 rows per statement."
    start = 0
    while start < len(rows):
        size = min(len(rows) - start, _ROWS_PER_INSERT, _MAX_PARAMS // len(rows[start]))
        values = [value for row in rows[start : start + size] for value in row]
        conn.execute(_multi_row(insert, size), values)
        start += size


@functools.lru_cache(maxsize=256)
def _multi_row(insert: str, rows: int) -> str:
    "``insert`` with its ``VALUES (...)`` row repeated ``rows`` times."
    head, values, row = insert.rpartition(" VALUES ")
    return head + values + ", ".join([row] * rows)


def dumps(value: Any) -> str | None:
    return None if value is None else to_json(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)

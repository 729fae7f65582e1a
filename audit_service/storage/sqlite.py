"""The SQLite backend: one WAL-mode file, one write connection, a read connection per thread."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from audit_service import models
from audit_service.ids import IdGenerator
from audit_service.keys import ServerKey, key_path_for
from audit_service.models import NewEvent, RecordOutcome, StoredEvent, encode_json, to_json
from audit_service.query import Condition, Cursor, Kind, Op, Query, Sort
from audit_service.storage.base import StorageError
from audit_service.storage.sqlite_schema import SNAPSHOT_TEXT_SQL, migrate

Durability = Literal["FULL", "NORMAL"]
log = logging.getLogger(__name__)

_EVENT_COLUMNS = (
    "e.seq, e.id, e.occurred_at, e.recorded_at, e.resource, e.identifier, e.blueprint,"
    " e.integration, e.run_id, e.operation, e.source_kind, e.source_id, e.source_name,"
    " e.origin, e.status, e.error, e.recorded_by, e.idempotency_key, e.context,"
    " e.diff_available"
)
_INSERT_EVENT = (
    "INSERT INTO events (seq, id, occurred_at, recorded_at, resource, identifier, blueprint,"
    " integration, run_id, operation, source_kind, source_id, source_name, source, origin,"
    " status, error, recorded_by, idempotency_key, context, diff_available)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_CONTEXT = "INSERT INTO event_context (key, value, seq) VALUES (?, ?, ?)"
_INSERT_SNAPSHOT = "INSERT INTO snapshots (seq, before, after) VALUES (?, ?, ?)"
_INSERT_ERROR_FTS = "INSERT INTO error_fts (rowid, error) VALUES (?, ?)"
_INDEX_SNAPSHOTS = (
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
_SQL_OPS = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}
_FTS_MIN_CHARS = 3  # the trigram tokenizer cannot match shorter needles
_IN_CHUNK = 500


def _casefold_contains(haystack: str | None, needle: str | None) -> bool:
    return haystack is not None and needle is not None and needle.casefold() in haystack.casefold()


CHECKPOINT_INTERVAL_S = 0.2
WRITER_CACHE_KIB = 65536  # the one write connection: index pages of every recent insert
READER_CACHE_KIB = 8192  # per reading thread (up to --workers of them); the OS caches the rest


def connect(
    path: Path, durability: Durability, cache_kib: int = WRITER_CACHE_KIB
) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=30, cached_statements=512
    )
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL fsyncs the WAL on every commit: an acknowledged event survives power loss.
    # NORMAL fsyncs only at checkpoints: faster, and a power cut (not a crash of the
    # process) can lose the last transactions before the checkpoint.
    conn.execute(f"PRAGMA synchronous={durability}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    conn.create_function("casefold_contains", 2, _casefold_contains, deterministic=True)
    conn.create_function("snapshot_contains", 3, _snapshot_contains, deterministic=True)
    return conn


class SQLiteStorage:
    """Events in one SQLite file. ``insert_batch`` must be called from one thread at a time."""

    def __init__(self, path: Path | str, durability: Durability = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._durability = durability
        self._writer = connect(self.path, durability)
        migrate(sqlite_utils.Database(self._writer))
        self._ids = IdGenerator()
        newest = self._writer.execute("SELECT max(id) FROM events").fetchone()[0]
        if newest is not None:
            self._ids.continue_after(newest)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # Checkpoints (copying the WAL back into the database file, with its fsyncs) run on a
        # connection and thread of their own, so no commit of the writer waits for one.
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        "Every CHECKPOINT_INTERVAL_S, a PASSIVE checkpoint: it never blocks the writer."
        conn = connect(self.path, self._durability, READER_CACHE_KIB)
        try:
            while not self._closing.wait(CHECKPOINT_INTERVAL_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, or the disk: the next round retries
                    log.warning("WAL checkpoint failed (retried): %s", exc)
        finally:
            conn.close()

    # -- writes ---------------------------------------------------------------------------

    def insert_batch(self, events: Sequence[NewEvent]) -> list[RecordOutcome]:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes = self._insert(conn, events)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"could not store events: {exc}") from exc
        return outcomes

    def _insert(self, conn: sqlite3.Connection, events: Sequence[NewEvent]) -> list[RecordOutcome]:
        recorded_at = time.time_ns()
        seen, seq = self._existing_keys(conn, events)
        outcomes: list[RecordOutcome] = []
        rows = Rows()
        ids = iter(self._ids.new_block(len(events)))
        for event in events:
            key = (event.recorded_by, event.idempotency_key)
            if event.idempotency_key and key in seen:
                outcomes.append(seen[key])
                continue
            seq += 1
            event_id = next(ids)
            outcomes.append(RecordOutcome(event_id, recorded_at, duplicate=False))
            if event.idempotency_key:
                seen[key] = RecordOutcome(event_id, recorded_at, duplicate=True)
            rows.add(seq, event_id, recorded_at, event)
        rows.write(conn)
        return outcomes

    def _existing_keys(
        self, conn: sqlite3.Connection, events: Sequence[NewEvent]
    ) -> tuple[dict[tuple[str, str], RecordOutcome], int]:
        """The stored events among ``events``' idempotency keys, and the largest seq: one
        statement for a batch of one principal's events (each statement releases and
        retakes the GIL)."""
        wanted: dict[str, set[str]] = {}
        for event in events:
            if event.idempotency_key:
                wanted.setdefault(event.recorded_by, set()).add(event.idempotency_key)
        found: dict[tuple[str, str], RecordOutcome] = {}
        last_seq: int | None = None
        for principal, keys in wanted.items():
            for chunk in _chunks(sorted(keys), _IN_CHUNK):
                marks = ",".join("?" * len(chunk))
                sql = (
                    "SELECT idempotency_key, id, recorded_at FROM events"
                    f" WHERE recorded_by = ? AND idempotency_key IN ({marks})"
                )
                if last_seq is None:
                    sql += " UNION ALL SELECT NULL, NULL, coalesce(max(seq), 0) FROM events"
                for key, event_id, recorded_at in conn.execute(sql, [principal, *chunk]):
                    if key is None:
                        last_seq = recorded_at
                    else:
                        found[(principal, key)] = RecordOutcome(event_id, recorded_at, True)
        if last_seq is None:
            last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        return found, last_seq

    def delete_expired(self, resource: models.ResourceType, cutoff_ns: int, limit: int) -> int:
        """Delete up to ``limit`` of the oldest ``resource`` events that occurred before
        ``cutoff_ns``, in one transaction. Returns how many were deleted."""
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "SELECT seq, error FROM events WHERE resource = ? AND occurred_at < ?"
                    " ORDER BY occurred_at LIMIT ?",
                    [resource.value, cutoff_ns, limit],
                ).fetchall()
                if rows:
                    seqs = [seq for seq, _ in rows]
                    marks = ",".join("?" * len(seqs))
                    conn.execute(f"DELETE FROM event_context WHERE seq IN ({marks})", seqs)
                    # The contentless FTS5 indexes forget a row given the text it was indexed
                    # with: recomputed from what is about to be deleted.
                    conn.execute(
                        "INSERT INTO snapshot_fts (snapshot_fts, rowid, text)"
                        f" SELECT 'delete', s.seq, {SNAPSHOT_TEXT_SQL} FROM snapshots s"
                        f" WHERE s.seq IN ({marks})",
                        seqs,
                    )
                    conn.execute(f"DELETE FROM snapshots WHERE seq IN ({marks})", seqs)
                    conn.execute(
                        "INSERT INTO error_fts (error_fts, rowid, error)"
                        f" SELECT 'delete', seq, error FROM events WHERE seq IN ({marks})"
                        " AND error != ''",
                        seqs,
                    )
                    conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"could not delete expired events: {exc}") from exc
        return len(rows)

    def drop_expired(
        self, cutoffs: Mapping[models.ResourceType, int]
    ) -> dict[models.ResourceType, int]:
        return {}  # one table: the batched deletes do it all

    @contextmanager
    def sweep_lock(self) -> Iterator[bool]:
        yield True  # one process per file: the writer thread already serializes deletes

    def server_key(self) -> ServerKey:
        "The key file beside the database (``<db>.key``, mode 0600)."
        return ServerKey.load_or_create(key_path_for(self.path))

    # -- reads ----------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self._durability, READER_CACHE_KIB)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def get_event(self, event_id: str) -> StoredEvent | None:
        row = (
            self._reader()
            .execute(
                f"SELECT {_EVENT_COLUMNS}, s.before, s.after FROM events e"
                " LEFT JOIN snapshots s ON s.seq = e.seq WHERE e.id = ?",
                [event_id],
            )
            .fetchone()
        )
        return None if row is None else _stored_event(row, with_snapshots=True)

    def list_events(self, query: Query) -> tuple[list[StoredEvent], Cursor | None]:
        conn = self._reader()
        sql, params = self.list_sql(query)
        rows = conn.execute(sql, params).fetchall()
        more = len(rows) > query.page_size
        rows = rows[: query.page_size]
        events = [_stored_event(r, with_snapshots=query.include_snapshots) for r in rows]
        if not more:
            return events, None
        last = rows[-1]
        return events, Cursor(last[20], last[1])

    def list_sql(self, query: Query) -> tuple[str, list[Any]]:
        """The SELECT (and its parameters) that answers ``query``.

        Every events index but two leads with ``resource`` (the tab), so the query names the
        tabs it looks at: within one tab, a walk of (resource, sort column) in order; across
        tabs, one such branch per tab, merged (a page of 100 reads at most 9 x 101 index
        entries), or, sorted by occurred_at, a walk of the occurred_at index. A rule that
        matches few events is looked up by its own index instead, its matches sorted (see
        ``_condition_sql``). The page's seqs are found first; only those rows are read whole.
        """
        conn = self._reader()
        tabs, conditions = _split_tabs(query.conditions)
        column = _sort_column(query.sort)
        direction = "DESC" if query.sort.descending else "ASC"
        limit = query.page_size + 1
        select = _EVENT_COLUMNS + f", e.{column}"
        joins = ""
        if query.include_snapshots:
            select += ", s.before, s.after"
            joins = " LEFT JOIN snapshots s ON s.seq = e.seq"
        if not tabs:
            return f"SELECT {select} FROM events e WHERE 0 LIMIT ?", [limit]
        where: list[str] = []
        params: list[Any] = []
        looked_up = False
        for condition in conditions:
            sql, args, sparse = _condition_sql(condition, conn, tabs, column)
            where.append(sql)
            params.extend(args)
            looked_up = looked_up or sparse
        if query.after is not None:
            sql, args = self._after_sql(conn, column, query.sort, query.after)
            where.append(sql)
            params.extend(args)
        order = f" ORDER BY e.{column} {direction}, e.seq {direction}"
        # With a rule that matches few events, the page comes from its matches, sorted: the
        # "+" keeps the sort column's index (a walk) out of the plan.
        page_order = f" ORDER BY +e.{column} {direction}, e.seq {direction}" if looked_up else order
        filters = "".join(f" AND {w}" for w in where)
        marks = ",".join("?" * len(tabs))
        if column == "occurred_at" and len(tabs) > 1 and not looked_up:
            page = (
                f"SELECT e.seq FROM events e INDEXED BY events_occurred_at"
                f" WHERE e.resource IN ({marks}){filters}{order} LIMIT ?"
            )
            page_params = [*tabs, *params, limit]
        elif column == "resource" or len(tabs) == 1 or looked_up:
            page = (
                f"SELECT e.seq FROM events e WHERE e.resource IN ({marks}){filters}{page_order}"
                " LIMIT ?"
            )
            page_params = [*tabs, *params, limit]
        else:
            branch = (
                f"SELECT * FROM (SELECT e.seq, e.{column} FROM events e WHERE e.resource = ?"
                f"{filters}{page_order} LIMIT ?)"
            )
            page = (
                "SELECT seq FROM (" + " UNION ALL ".join([branch] * len(tabs))
                + f" ORDER BY 2 {direction}, 1 {direction} LIMIT ?)"
            )  # fmt: skip
            page_params = [value for tab in tabs for value in (tab, *params, limit)] + [limit]
        sql = f"SELECT {select} FROM events e{joins} WHERE e.seq IN ({page}){order}"
        return sql, page_params

    def _after_sql(
        self, conn: sqlite3.Connection, column: str, sort: Sort, cursor: Cursor
    ) -> tuple[str, list[Any]]:
        """Rows after the cursor in (sort value, id) order.

        The cursor names an id; its seq is looked up (seq and id share one order). Should
        retention have deleted that event meanwhile, the nearest seq on the right side stands
        in, so the page sequence still neither skips nor repeats.
        """
        if sort.descending:
            # seq and id share one order: the first row by id is the smallest seq (one probe).
            row = conn.execute(
                "SELECT seq FROM events WHERE id >= ? ORDER BY id LIMIT 1", [cursor.id]
            ).fetchone()
            bound = (1 << 63) - 1 if row is None else row[0]
            return f"(e.{column}, e.seq) < (?, ?)", [cursor.value, bound]
        row = conn.execute(
            "SELECT seq FROM events WHERE id <= ? ORDER BY id DESC LIMIT 1", [cursor.id]
        ).fetchone()
        return f"(e.{column}, e.seq) > (?, ?)", [cursor.value, 0 if row is None else row[0]]

    def close(self) -> None:
        self._closing.set()
        self._checkpointer.join()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()  # the last connection: SQLite checkpoints the rest as it closes


def _sort_column(sort: Sort) -> str:
    return sort.field  # every sortable field is a column of its own name


def _condition_sql(
    c: Condition, conn: sqlite3.Connection, tabs: Sequence[str], sort_column: str
) -> tuple[str, list[Any], bool]:
    """SQL for one rule, and whether it is to be looked up by its own index.

    A rule an index can answer (a column's index, the context table, a text index) is
    looked up there when it matches few events (under ``MANY_MATCHES`` in the tabs asked
    for, counted first), its matches then sorted. When it matches many, it is checked row by
    row while the query walks its sort order, which then fills a page soon: for a column,
    its index is kept out of the plan (``+column``)."""
    if c.context_key is not None:
        if c.op is Op.NOT_EQUALS:
            inner, args = _value_sql("value", Op.EQUALS, c.values, Kind.TEXT)
            return (
                f"e.seq NOT IN (SELECT seq FROM event_context WHERE key = ? AND {inner})",
                [c.context_key, *args],
                False,
            )
        inner, args = _value_sql("value", c.op, c.values, Kind.TEXT)
        subquery = f"SELECT seq FROM event_context WHERE key = ? AND {inner}"
        seqs = None if c.op is Op.CONTAINS else _few(conn, subquery, [c.context_key, *args])
        if seqs is None:
            inner, args = _value_sql("c.value", c.op, c.values, Kind.TEXT)
            return (
                "EXISTS (SELECT 1 FROM event_context c WHERE c.key = ? AND c.seq = e.seq"
                f" AND {inner})",
                [c.context_key, *args],
                False,
            )
        return _SEQS_SQL, [seqs], True
    if c.field in ("error", "snapshot_text") and c.op is Op.CONTAINS:
        texts = [str(v) for v in c.values]
        table = "error_fts" if c.field == "error" else "snapshot_fts"
        if all(len(t) >= _FTS_MIN_CHARS for t in texts):
            match = " OR ".join('"' + t.replace('"', '""') + '"' for t in texts)
            seqs = _few(conn, f"SELECT rowid FROM {table} WHERE {table} MATCH ?", [match])
            if seqs is not None:
                return _SEQS_SQL, [seqs], True
        if c.field == "snapshot_text":
            parts = [
                "EXISTS (SELECT 1 FROM snapshots s WHERE s.seq = e.seq"
                " AND snapshot_contains(s.before, s.after, ?))"
            ] * len(texts)
            return "(" + " OR ".join(parts) + ")", list(texts), False
        sql, args = _value_sql("e.error", c.op, c.values, c.kind)
        return sql, args, False
    columns = ["source_id", "source_name"] if c.field == "source" else [c.field]
    indexable = c.op not in (Op.NOT_EQUALS, Op.CONTAINS) and c.field != sort_column
    if indexable:
        sql, args = _column_sql(c, columns, "e.")
        marks = ",".join("?" * len(tabs))
        probe = f"SELECT 1 FROM events e WHERE e.resource IN ({marks}) AND {sql}"
        if not _matches_many(conn, probe, [*tabs, *args]):
            return sql, args, True
        sql, args = _column_sql(c, columns, "+e.")  # "+": checked, not looked up
        return sql, args, False
    sql, args = _column_sql(c, columns, "e.")
    return sql, args, False


def _column_sql(c: Condition, columns: list[str], prefix: str) -> tuple[str, list[Any]]:
    if len(columns) == 1:
        return _value_sql(prefix + columns[0], c.op, c.values, c.kind)
    # source: the id or the name (for NOT_EQUALS: neither)
    id_sql, id_args = _value_sql(prefix + columns[0], c.op, c.values, c.kind)
    name_sql, name_args = _value_sql(prefix + columns[1], c.op, c.values, c.kind)
    joiner = "AND" if c.op is Op.NOT_EQUALS else "OR"
    return f"({id_sql} {joiner} {name_sql})", [*id_args, *name_args]


# A rule matching at least this many events (in the tabs asked for) is checked row by row in
# sort order; one matching fewer is looked up and its matches sorted (at most this many).
MANY_MATCHES = 4000


# The seqs a lookup found (a JSON array), so a text index is searched once per List call.
_SEQS_SQL = "e.seq IN (SELECT value FROM json_each(?))"


def _few(conn: sqlite3.Connection, subquery: str, params: list[Any]) -> str | None:
    "The seqs ``subquery`` finds, as a JSON array, when fewer than ``MANY_MATCHES``; else None."
    seqs = [row[0] for row in conn.execute(f"{subquery} LIMIT {MANY_MATCHES}", params)]
    return None if len(seqs) >= MANY_MATCHES else json.dumps(seqs)


def _matches_many(conn: sqlite3.Connection, subquery: str, params: list[Any]) -> bool:
    sql = f"SELECT count(*) FROM ({subquery} LIMIT {MANY_MATCHES})"
    count: int = conn.execute(sql, params).fetchone()[0]
    return count >= MANY_MATCHES


def snapshot_text(before: str | None, after: str | None) -> str:
    "What ``snapshot_text`` searches (``sqlite_schema.SNAPSHOT_TEXT_SQL``, in Python)."
    strings: set[str] = set()
    for text in (before, after):
        if text is not None:
            _collect_strings(json.loads(text), strings)
    return "\n".join(sorted(strings))


def _collect_strings(value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        out.update(value)
        for item in value.values():
            _collect_strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, out)
    elif isinstance(value, str):
        out.add(value)


def _snapshot_contains(before: str | None, after: str | None, needle: str | None) -> bool:
    if needle is None:
        return False
    folded = needle.casefold()
    # The JSON text holds every key and string (escaped only where it has a quote, backslash
    # or control character): a cheap test first, then the exact one.
    if (
        not any(t is not None and folded in t.casefold() for t in (before, after))
        and not any(ch in needle for ch in '"\\')
        and all(ch >= " " for ch in needle)
    ):
        return False
    return folded in snapshot_text(before, after).casefold()


def _split_tabs(conditions: Sequence[Condition]) -> tuple[list[str], list[Condition]]:
    "The resource types the conditions allow (sorted), and the other conditions."
    tabs = set(models.ResourceType)
    rest: list[Condition] = []
    for c in conditions:
        if c.field == "resource" and c.context_key is None and c.op is Op.EQUALS:
            tabs &= {models.ResourceType(str(v)) for v in c.values}
        elif c.field == "resource" and c.context_key is None and c.op is Op.NOT_EQUALS:
            tabs -= {models.ResourceType(str(v)) for v in c.values}
        else:
            rest.append(c)
    return sorted(t.value for t in tabs), rest


def _value_sql(
    column: str, op: Op, values: tuple[str | int, ...], kind: Kind
) -> tuple[str, list[Any]]:
    marks = ",".join("?" * len(values))
    if op is Op.EQUALS:
        return f"{column} IN ({marks})", list(values)
    if op is Op.NOT_EQUALS:
        return f"{column} NOT IN ({marks})", list(values)
    if op is Op.CONTAINS:
        parts = [f"casefold_contains({column}, ?)" for _ in values]
        return "(" + " OR ".join(parts) + ")", list(values)
    if op is Op.STARTS_WITH:
        # A range over UTF-8 bytes, so the column's index serves it: every text that starts
        # with the prefix sorts between the prefix and the prefix followed by 0xFF, a byte
        # that never occurs in UTF-8.
        parts, args = [], []
        for value in values:
            parts.append(f"({column} >= ? AND {column} < CAST(? AS TEXT))")
            args.extend([value, str(value).encode() + b"\xff"])
        return "(" + " OR ".join(parts) + ")", args
    sql_op = _SQL_OPS[op]
    parts = [f"{column} {sql_op} ?" for _ in values]
    return "(" + " OR ".join(parts) + ")", list(values)


class Rows:
    """The rows a group of events is stored as, gathered before they are written: the
    ``events`` row, ``event_context`` rows, the ``snapshots`` row and the text indexes."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.context: list[tuple[str, str, int]] = []
        self.snapshots: list[tuple[int, str | None, str | None]] = []
        self.errors: list[tuple[int, str]] = []

    def add(self, seq: int, event_id: str, recorded_at: int, event: NewEvent) -> None:
        encoded = event.json_text or encode_json(event)  # (conversion encodes it as a rule)
        self.events.append(_event_row(seq, event_id, recorded_at, event, encoded[2]))
        self.context.extend((k, v, seq) for k, v in event.context.items())
        if event.before is not None or event.after is not None:
            self.snapshots.append((seq, encoded[0], encoded[1]))
        if event.error:
            self.errors.append((seq, event.error))

    def write(self, conn: sqlite3.Connection, *, index_snapshots: bool = True) -> None:
        """Insert every row (inside the caller's transaction). ``index_snapshots=False``
        leaves the snapshot text index to the caller (``index_snapshots_of``; bulk loads)."""
        _insert_rows(conn, _INSERT_EVENT, self.events)
        _insert_rows(conn, _INSERT_CONTEXT, self.context)
        _insert_rows(conn, _INSERT_SNAPSHOT, self.snapshots)
        _insert_rows(conn, _INSERT_ERROR_FTS, self.errors)
        if self.snapshots and index_snapshots:
            index_snapshots_of(conn, self.snapshots[0][0], self.snapshots[-1][0])


def index_snapshots_of(conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
    "Add the snapshot rows with seq in [first, last] to the snapshot text index."
    conn.execute(_INDEX_SNAPSHOTS, [first_seq, last_seq])


def _event_row(
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


def _stored_event(row: Sequence[Any], *, with_snapshots: bool) -> StoredEvent:
    before = after = None
    if with_snapshots:
        before, after = _loads(row[-2]), _loads(row[-1])
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


def _insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> None:
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


def _dumps(value: Any) -> str | None:
    return None if value is None else to_json(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

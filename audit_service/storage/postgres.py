"""The PostgreSQL backend: several audit-service replicas on one shared database.

- psycopg 3 with a connection pool; each group commit is one transaction: idempotency keys
  claimed with a multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, the events
  written with ``COPY``.
- Idempotency across replicas: the unique key of ``idempotency_keys`` decides. A key another
  transaction holds makes ours wait for it; once it committed, the key is a duplicate and
  the first event's id is read back. Keys are claimed in sorted order, so two batches never
  deadlock on each other.
- Ids are UUIDv7 minted in each process; they are unique across replicas (62 random bits)
  and ordered by time as far as the replicas' clocks agree. Ties in any sort break by id.
- ``events`` is partitioned by month of ``occurred_at``; partitions are created on demand
  (under an advisory lock) before a batch that needs them, and retention drops whole
  partitions once every event in them is past retention, deleting the rest in batches.
- Only one replica sweeps at a time: ``sweep_lock`` is ``pg_try_advisory_lock``.

Text compares and sorts by UTF-8 byte order (``COLLATE "C"``), as in SQLite; CONTAINS folds
case with ``fold_sql`` (see ``postgres_schema``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads

from audit_service import models
from audit_service.errors import Unavailable
from audit_service.ids import IdGenerator
from audit_service.keys import ServerKey
from audit_service.models import NewEvent, RecordOutcome, StoredEvent
from audit_service.query import MAX_TIME_NS, MIN_TIME_NS, Condition, Cursor, Kind, Op, Query
from audit_service.storage.base import StorageError
from audit_service.storage.postgres_schema import (
    PARTITION_LOCK,
    SWEEP_LOCK,
    fold_sql,
    migrate,
    unicode_fold_sql,
)

log = logging.getLogger(__name__)

Durability = Literal["FULL", "NORMAL"]

POOL_MIN = 2
POOL_MAX = 16
POOL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 15
# How long creating or dropping a partition may wait for its lock on ``events`` (while it
# waits, queries queue behind it); past that it gives up until the next batch or sweep.
PARTITION_LOCK_TIMEOUT_MS = 3000
_RETRIES = 3  # deadlocks and serialization failures abort before commit: safe to retry

_EVENT_COLUMNS = (
    "e.id::text, e.occurred_at, e.recorded_at, e.resource, e.identifier, e.blueprint,"
    " e.integration, e.run_id, e.operation, e.source_kind, e.source_id, e.source_name,"
    " e.origin, e.status, e.error, e.recorded_by, e.idempotency_key, e.context,"
    " e.diff_available"
)
_COPY_EVENTS = (
    "COPY events (id, occurred_at, recorded_at, resource, identifier, blueprint, integration,"
    " run_id, operation, source_kind, source_id, source_name, source, origin, status, error,"
    " recorded_by, idempotency_key, context, before, after, diff_available) FROM STDIN"
)
_SQL_OPS = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SAFE_INT = 2**53


def redacted(url: str) -> str:
    "The URL without its password (for logs and messages)."
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{params['user']}@" if params.get("user") else ""
    host, port = str(params.get("host") or ""), str(params.get("port") or "")
    if host.startswith("/"):  # a Unix socket directory
        query = f"?host={host}" + (f"&port={port}" if port else "")
        return f"postgresql://{user}/{params.get('dbname', '')}{query}"
    where = (host or "(default host)") + (f":{port}" if port else "")
    return f"postgresql://{user}{where}/{params.get('dbname', '')}"


def _json_number(text: str) -> int | float:
    # JSONB keeps numbers as numeric, so a large double comes back as a long integer: read
    # integers past 2**53 as the doubles they were written from (as SQLite's JSON reads them).
    value = int(text)
    return value if abs(value) <= _MAX_SAFE_INT else float(value)


def _loads(text: str | bytes) -> Any:
    return json.loads(text, parse_int=_json_number)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _snapshot_text(snapshot: models.JSONObject | None) -> str | None:
    """A snapshot as JSONB input text. JSONB cannot hold U+0000; a snapshot containing it is
    stored as a JSON string holding its JSON text (snapshots are always objects, so a string
    is never ambiguous)."""
    if snapshot is None:
        return None
    text = _dumps(snapshot)
    return _dumps(text) if "\\u0000" in text else text


def _snapshot_value(value: Any) -> models.JSONObject | None:
    if isinstance(value, str):
        return _loads(value)  # type: ignore[no-any-return]
    return value  # type: ignore[no-any-return]


def month_start(ns: int) -> datetime:
    moment = _EPOCH + timedelta(microseconds=ns // 1000)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)


def _ns(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000


def partition_name(start: datetime) -> str:
    return f"events_p{start.year:04d}{start.month:02d}"


def partition_bounds(start: datetime) -> tuple[int, int]:
    return _ns(start), _ns(_next_month(start))


def _bound_sql(ns: int) -> str:
    if ns <= MIN_TIME_NS:
        return "MINVALUE"
    if ns > MAX_TIME_NS:
        return "MAXVALUE"
    return str(ns)


class PostgresStorage:
    """Events in a PostgreSQL database shared by any number of audit-service processes."""

    def __init__(self, url: str, durability: Durability = "FULL") -> None:
        self.url = url
        self.description = redacted(url)
        # FULL: COMMIT returns once the WAL is flushed on the server. NORMAL: it returns
        # before; a crash of the database server (not of this service) can lose the last
        # commits (synchronous_commit = off).
        self._synchronous_commit = "on" if durability == "FULL" else "off"
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                migrate(conn)
                row = conn.execute(
                    "SELECT value FROM auditlog_meta WHERE name = 'fold_collation'"
                ).fetchone()
                assert row is not None
                self._fold_collation: str = row[0]
                newest = conn.execute(
                    "SELECT id::text FROM events ORDER BY id DESC LIMIT 1"
                ).fetchone()
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot open PostgreSQL database {self.description}: {exc}"
            ) from exc
        except RuntimeError as exc:
            raise StorageError(f"PostgreSQL database {self.description}: {exc}") from exc
        self._ids = IdGenerator()
        if newest is not None and newest[0] is not None:
            self._ids.continue_after(newest[0])
        self._months: set[datetime] = set()
        self.partition_lock_timeout_ms = PARTITION_LOCK_TIMEOUT_MS
        self._months_lock = threading.Lock()
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            timeout=POOL_TIMEOUT_S,
            kwargs={"prepare_threshold": None, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=self._configure,
            # A connection is tried before it is handed out: after a database restart or
            # failover, calls get fresh connections instead of the broken ones.
            check=psycopg_pool.ConnectionPool.check_connection,
            name="auditlog",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_S)
            start = month_start(time.time_ns())
            self.ensure_partitions([_ns(start), _ns(_next_month(start))])
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._pool.close()
            raise StorageError(f"cannot open PostgreSQL {self.description}: {exc}") from exc

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # Autocommit: reads need no transaction; writes open one with conn.transaction().
        set_json_loads(_loads, conn)
        conn.autocommit = True
        conn.execute(
            "SELECT set_config('synchronous_commit', %s, false)", [self._synchronous_commit]
        )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn:
            yield conn

    # -- partitions -----------------------------------------------------------------------

    def ensure_partitions(self, occurred_at: Iterable[int]) -> None:
        "Create the monthly partitions these times fall in, where missing."
        months = {month_start(ns) for ns in occurred_at}
        with self._months_lock:
            missing = sorted(months - self._months)
        if not missing:
            return
        with self._connection() as conn:
            settled = [start for start in missing if self._create_partition(conn, start)]
        with self._months_lock:
            self._months.update(settled)

    def _create_partition(self, conn: psycopg.Connection[Any], start: datetime) -> bool:
        """Create the partition of the month from ``start`` unless it exists. False when it
        could not be created now: its rows go to the default partition meanwhile."""
        name = partition_name(start)
        low, high = partition_bounds(start)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK])
                if conn.execute("SELECT to_regclass(%s)", [name]).fetchone() != (None,):
                    return True
                # Rows of this month already in the default partition (a partition that
                # could not be created, or was dropped while a replica still wrote to it)
                # would make CREATE fail: leave the month to the default partition.
                stray = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM events_default"
                    " WHERE occurred_at >= %s AND occurred_at < %s)",
                    [low, high],
                ).fetchone()
                if stray == (True,):
                    log.warning("events of %s stay in events_default (it holds some)", name)
                    return True
                conn.execute(f"SET LOCAL lock_timeout = {int(self.partition_lock_timeout_ms)}")
                conn.execute(
                    f"CREATE TABLE {name} PARTITION OF events"
                    f" FOR VALUES FROM ({_bound_sql(low)}) TO ({_bound_sql(high)})"
                )
                log.info("created partition %s", name)
        except (pg_errors.LockNotAvailable, pg_errors.DuplicateTable) as exc:
            log.warning("could not create partition %s now: %s", name, exc)
            return False
        return True

    # -- writes ---------------------------------------------------------------------------

    def insert_batch(self, events: Sequence[NewEvent]) -> list[RecordOutcome]:
        try:
            self.ensure_partitions(e.occurred_at for e in events)
            for attempt in range(1, _RETRIES + 1):
                try:
                    with self._connection() as conn, conn.transaction():
                        return self._insert(conn, events)
                except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                    if attempt == _RETRIES:
                        raise
                    log.info("retrying a group commit after %s", type(exc).__name__)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StorageError(f"could not store events: {exc}") from exc
        raise AssertionError("unreachable")

    def _insert(
        self, conn: psycopg.Connection[Any], events: Sequence[NewEvent]
    ) -> list[RecordOutcome]:
        recorded_at = time.time_ns()
        outcomes: list[RecordOutcome | None] = [None] * len(events)
        ids: dict[int, str] = {}
        first_of_key: dict[tuple[str, str], int] = {}
        for i, event in enumerate(events):
            key = (event.recorded_by, event.idempotency_key)
            if event.idempotency_key and key in first_of_key:
                continue  # a repeat within the batch: resolved once the first is
            if event.idempotency_key:
                first_of_key[key] = i
            ids[i] = self._ids.new()
        claimed = self._claim_keys(conn, events, first_of_key, ids, recorded_at)
        existing = self._existing_keys(conn, [k for k in first_of_key if k not in claimed])
        rows: list[tuple[Any, ...]] = []
        for i, event in enumerate(events):
            key = (event.recorded_by, event.idempotency_key)
            if event.idempotency_key and key in existing:
                outcomes[i] = existing[key]
            elif event.idempotency_key and first_of_key[key] != i:
                first = outcomes[first_of_key[key]]
                assert first is not None
                outcomes[i] = RecordOutcome(first.id, first.recorded_at, duplicate=True)
            else:
                outcomes[i] = RecordOutcome(ids[i], recorded_at, duplicate=False)
                rows.append(_event_row(ids[i], recorded_at, event))
        if rows:
            with conn.cursor() as cur, cur.copy(_COPY_EVENTS) as copy:
                for row in rows:
                    copy.write_row(row)
        return [o for o in outcomes if o is not None]

    def _claim_keys(
        self,
        conn: psycopg.Connection[Any],
        events: Sequence[NewEvent],
        first_of_key: Mapping[tuple[str, str], int],
        ids: Mapping[int, str],
        recorded_at: int,
    ) -> set[tuple[str, str]]:
        """Insert the batch's idempotency keys; return those this transaction now owns.

        A key another transaction inserted and has not committed yet makes this INSERT wait;
        if that one commits, the key is not returned here (a duplicate), else it is ours."""
        keys = sorted(first_of_key)  # one lock order for every replica: no deadlocks
        if not keys:
            return set()
        firsts = [events[first_of_key[key]] for key in keys]
        # Arrays as parameters: six of them whatever the batch size (a statement with a
        # placeholder per value costs more to build than to run).
        cur = conn.execute(
            "INSERT INTO idempotency_keys"
            " (recorded_by, idempotency_key, id, recorded_at, resource, occurred_at)"
            " SELECT a, b, c, d, e, f FROM unnest(%s::text[], %s::text[], %s::uuid[], %s::bigint[],"
            " %s::text[], %s::bigint[]) WITH ORDINALITY AS k (a, b, c, d, e, f, n)"
            " ORDER BY n"
            " ON CONFLICT DO NOTHING RETURNING recorded_by, idempotency_key",
            [
                [key[0] for key in keys],
                [key[1] for key in keys],
                [ids[first_of_key[key]] for key in keys],
                [recorded_at] * len(keys),
                [e.resource.value for e in firsts],
                [e.occurred_at for e in firsts],
            ],
        )
        return {(r[0], r[1]) for r in cur.fetchall()}

    def _existing_keys(
        self, conn: psycopg.Connection[Any], keys: list[tuple[str, str]]
    ) -> dict[tuple[str, str], RecordOutcome]:
        found: dict[tuple[str, str], RecordOutcome] = {}
        if keys:
            cur = conn.execute(
                "SELECT k.recorded_by, k.idempotency_key, k.id::text, k.recorded_at"
                " FROM idempotency_keys k"
                " JOIN unnest(%s::text[], %s::text[]) AS w (recorded_by, key)"
                " ON k.recorded_by = w.recorded_by AND k.idempotency_key = w.key",
                [[key[0] for key in keys], [key[1] for key in keys]],
            )
            for principal, key, event_id, recorded_at in cur.fetchall():
                found[(principal, key)] = RecordOutcome(event_id, recorded_at, duplicate=True)
        if len(found) != len(keys):
            # The conflicting row went away between the INSERT and this SELECT (retention):
            # abort, and let the caller retry the whole group.
            raise pg_errors.SerializationFailure("an idempotency key vanished; retry")
        return found

    def delete_expired(self, resource: models.ResourceType, cutoff_ns: int, limit: int) -> int:
        """Delete up to ``limit`` of the oldest ``resource`` events that occurred before
        ``cutoff_ns`` (and their idempotency keys), in one transaction."""
        try:
            with self._connection() as conn, conn.transaction():
                cur = conn.execute(
                    "DELETE FROM events e USING ("
                    " SELECT id, occurred_at FROM events WHERE resource = %s AND occurred_at < %s"
                    " ORDER BY occurred_at LIMIT %s) AS d"
                    " WHERE e.id = d.id AND e.occurred_at = d.occurred_at"
                    " RETURNING e.id",
                    [resource.value, cutoff_ns, limit],
                )
                deleted = [row[0] for row in cur.fetchall()]
                if deleted:
                    conn.execute("DELETE FROM idempotency_keys WHERE id = ANY(%s)", [deleted])
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StorageError(f"could not delete expired events: {exc}") from exc
        return len(deleted)

    def drop_expired(
        self, cutoffs: Mapping[models.ResourceType, int], batch_size: int = 5000
    ) -> dict[models.ResourceType, int]:
        """Drop every monthly partition whose events are all past retention (it ends at or
        before the earliest cutoff), then delete those events' idempotency keys in batches.
        Also creates next month's partition ahead of time. Returns the events dropped by type.

        :raises StorageError: the database failed; what was dropped stays dropped.
        """
        removed: dict[models.ResourceType, int] = {}
        bound = min(cutoffs.values())
        try:
            start = month_start(time.time_ns())
            self.ensure_partitions([_ns(start), _ns(_next_month(start))])
            with self._connection() as conn:
                names = conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'events'::regclass ORDER BY c.relname"
                ).fetchall()
                for (name,) in names:
                    start_of = _partition_start(name)
                    if start_of is None or partition_bounds(start_of)[1] > bound:
                        continue
                    counts = self._drop_partition(conn, name)
                    if counts is None:
                        continue
                    with self._months_lock:
                        self._months.discard(start_of)
                    for resource, count in counts.items():
                        removed[resource] = removed.get(resource, 0) + count
                self._purge_keys(conn, bound, batch_size)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StorageError(f"could not drop expired partitions: {exc}") from exc
        return removed

    def _drop_partition(
        self, conn: psycopg.Connection[Any], name: str
    ) -> dict[models.ResourceType, int] | None:
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {int(self.partition_lock_timeout_ms)}")
                rows = conn.execute(
                    f"SELECT resource, count(*) FROM {name} GROUP BY resource"
                ).fetchall()
                conn.execute(f"ALTER TABLE events DETACH PARTITION {name}")
                conn.execute(f"DROP TABLE {name}")
        except pg_errors.LockNotAvailable:
            log.warning("partition %s is busy; dropping it at the next sweep", name)
            return None
        log.info("dropped partition %s: every event in it was past retention", name)
        return {models.ResourceType(r): n for r, n in rows}

    def _purge_keys(self, conn: psycopg.Connection[Any], bound: int, batch_size: int) -> None:
        "Idempotency keys of events that occurred before ``bound`` and were dropped with them."
        while True:
            cur = conn.execute(
                "DELETE FROM idempotency_keys WHERE (recorded_by, idempotency_key) IN ("
                " SELECT k.recorded_by, k.idempotency_key FROM idempotency_keys k"
                " WHERE k.occurred_at < %s AND NOT EXISTS ("
                "  SELECT 1 FROM events e WHERE e.id = k.id AND e.occurred_at = k.occurred_at)"
                " LIMIT %s)",
                [bound, batch_size],
            )
            if cur.rowcount < batch_size:
                return

    @contextmanager
    def sweep_lock(self) -> Iterator[bool]:
        """Hold the database-wide sweep lock for the ``with`` block; enter with False (and
        hold nothing) when another process is sweeping."""
        with self._pool.connection() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", [SWEEP_LOCK]).fetchone()
            acquired = row is not None and bool(row[0])
            try:
                yield acquired
            finally:
                if acquired:
                    conn.execute("SELECT pg_advisory_unlock(%s)", [SWEEP_LOCK])

    # -- reads ----------------------------------------------------------------------------

    def server_key(self) -> ServerKey:
        "The key every replica shares, created with the schema."
        with self._reading() as conn:
            row = conn.execute(
                "SELECT value FROM auditlog_meta WHERE name = 'server_key'"
            ).fetchone()
        if row is None:
            raise StorageError("auditlog_meta has no server_key: the schema is incomplete")
        return ServerKey(bytes.fromhex(row[0]))

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise Unavailable(f"the database is not answering: {exc}") from exc

    def get_event(self, event_id: str) -> StoredEvent | None:
        try:
            uuid.UUID(event_id)
        except ValueError:
            return None
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_EVENT_COLUMNS}, e.before, e.after FROM events e WHERE e.id = %s::uuid",
                [event_id],
            ).fetchone()
        return None if row is None else _stored_event(row, with_snapshots=True)

    def list_events(self, query: Query) -> tuple[list[StoredEvent], Cursor | None]:
        where: list[str] = []
        params: list[Any] = []
        for condition in query.conditions:
            sql, args = self._condition_sql(condition)
            where.append(sql)
            params.extend(args)
        column = query.sort.field  # every sortable field is a column of its own name
        direction = "DESC" if query.sort.descending else "ASC"
        if query.after is not None:
            compare = "<" if query.sort.descending else ">"
            where.append(f"(e.{column}, e.id) {compare} (%s, %s::uuid)")
            params.extend([query.after.value, query.after.id])
        select = _EVENT_COLUMNS + f", e.{column}"
        if query.include_snapshots:
            select += ", e.before, e.after"
        sql = (
            f"SELECT {select} FROM events e"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY e.{column} {direction}, e.id {direction} LIMIT %s"
        )
        params.append(query.page_size + 1)
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        more = len(rows) > query.page_size
        rows = rows[: query.page_size]
        events = [_stored_event(r, with_snapshots=query.include_snapshots) for r in rows]
        if not more:
            return events, None
        last = rows[-1]
        return events, Cursor(last[19], last[0])

    def _condition_sql(self, c: Condition) -> tuple[str, list[Any]]:
        if c.context_key is not None:
            return self._context_sql(c)
        if c.field == "snapshot_text":  # no index: read every candidate's snapshots
            text = "auditlog_snapshot_text(e.before, e.after)"
            return self._value_sql(text, c.op, c.values, Kind.TEXT)
        if c.field == "source":
            id_sql, id_args = self._value_sql("e.source_id", c.op, c.values, c.kind)
            name_sql, name_args = self._value_sql("e.source_name", c.op, c.values, c.kind)
            joiner = "AND" if c.op is Op.NOT_EQUALS else "OR"
            return f"({id_sql} {joiner} {name_sql})", [*id_args, *name_args]
        return self._value_sql(f"e.{c.field}", c.op, c.values, c.kind)

    def _context_sql(self, c: Condition) -> tuple[str, list[Any]]:
        key = c.context_key
        assert key is not None
        if "\x00" in key:  # no stored key holds U+0000 (validation refuses it)
            return ("TRUE" if c.op is Op.NOT_EQUALS else "FALSE"), []
        if c.op in (Op.EQUALS, Op.NOT_EQUALS):
            values = [v for v in c.values if "\x00" not in str(v)]
            contains = ["e.context @> %s::jsonb" for _ in values]
            args: list[Any] = [_dumps({key: v}) for v in values]
            any_of = "(" + " OR ".join(contains) + ")" if contains else "FALSE"
            return (f"NOT {any_of}" if c.op is Op.NOT_EQUALS else any_of), args
        # The key is a parameter of the column expression: it comes before each value.
        column = '((e.context ->> %s) COLLATE "C")'
        return self._value_sql(column, c.op, c.values, c.kind, column_args=[key])

    def _value_sql(
        self,
        column: str,
        op: Op,
        values: tuple[str | int, ...],
        kind: Kind,
        column_args: Sequence[Any] = (),
    ) -> tuple[str, list[Any]]:
        """SQL for one rule on ``column`` (an expression that appears once per value; its own
        parameters ``column_args`` are bound at each appearance)."""
        if kind is Kind.TEXT and any("\x00" in str(v) for v in values):
            return self._nul_rule_sql(column, op, values, column_args)
        if op in (Op.EQUALS, Op.NOT_EQUALS):
            marks = ",".join(["%s"] * len(values))
            negate = "NOT " if op is Op.NOT_EQUALS else ""
            return f"{column} {negate}IN ({marks})", [*column_args, *values]
        if op is Op.CONTAINS:
            folded = fold_sql(column, self._fold_collation)
            parts = []
            args: list[Any] = []
            for value in values:
                needle = str(value)
                if needle.isascii():  # folded here: a constant pattern the planner can use
                    parts.append(f"{folded} LIKE %s")
                    args.append("%" + _like_escape(needle.lower()) + "%")
                else:
                    pattern = unicode_fold_sql("%s", self._fold_collation)
                    parts.append(f"{folded} LIKE '%%' || {pattern} || '%%'")
                    args.append(_like_escape(needle))
        elif op is Op.STARTS_WITH:
            parts = [f"{column} LIKE %s" for _ in values]
            args = [_like_escape(str(v)) + "%" for v in values]
        else:
            parts = [f"{column} {_SQL_OPS[op]} %s" for _ in values]
            args = list(values)
        # The column expression comes first in each part, as often as it appears there.
        params = [
            p
            for part, arg in zip(parts, args, strict=True)
            for p in (*list(column_args) * part.count(column), arg)
        ]
        return "(" + " OR ".join(parts) + ")", params

    def _nul_rule_sql(
        self, column: str, op: Op, values: tuple[str | int, ...], column_args: Sequence[Any]
    ) -> tuple[str, list[Any]]:
        """A text rule some of whose values contain U+0000, which PostgreSQL cannot take and
        no stored text holds (validation refuses it).

        Such a value never equals, contains or prefixes a stored text: it drops out (for
        NOT_EQUALS it excludes nothing). Under byte order a text without U+0000 is above
        ``p + "\\0" + rest`` exactly when it is above ``p``, and below it exactly when it is
        at most ``p``: a range rule compares with ``p``, the part before the first U+0000."""
        clean = tuple(v for v in values if "\x00" not in str(v))
        if op in (Op.EQUALS, Op.NOT_EQUALS, Op.CONTAINS, Op.STARTS_WITH):
            if not clean:
                return ("TRUE" if op is Op.NOT_EQUALS else "FALSE"), []
            return self._value_sql(column, op, clean, Kind.TEXT, column_args)
        parts: list[str] = []
        params: list[Any] = []
        for value in values:
            text = str(value)
            if "\x00" in text:
                value_op = Op.GT if op in (Op.GT, Op.GTE) else Op.LTE
                text = text.split("\x00", 1)[0]
            else:
                value_op = op
            sql, args = self._value_sql(column, value_op, (text,), Kind.TEXT, column_args)
            parts.append(sql)
            params.extend(args)
        return "(" + " OR ".join(parts) + ")", params

    def close(self) -> None:
        self._pool.close()


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _partition_start(name: str) -> datetime | None:
    digits = name.removeprefix("events_p")
    if name == digits or len(digits) != 6 or not digits.isdigit():
        return None
    return datetime(int(digits[:4]), int(digits[4:]), 1, tzinfo=UTC)


def _event_row(event_id: str, recorded_at: int, e: NewEvent) -> tuple[Any, ...]:
    return (
        event_id, e.occurred_at, recorded_at, e.resource.value, e.identifier, e.blueprint,
        e.integration, e.run_id, e.operation.value, e.source.kind.value, e.source.id,
        e.source.name, e.source.label, e.origin.value, e.status.value, e.error, e.recorded_by,
        e.idempotency_key or None, _dumps(e.context), _snapshot_text(e.before),
        _snapshot_text(e.after), e.diff_available,
    )  # fmt: skip


def _stored_event(row: Sequence[Any], *, with_snapshots: bool) -> StoredEvent:
    before = after = None
    if with_snapshots:
        before, after = _snapshot_value(row[-2]), _snapshot_value(row[-1])
    return StoredEvent(
        id=row[0],
        occurred_at=row[1],
        recorded_at=row[2],
        resource=models.ResourceType(row[3]),
        identifier=row[4],
        blueprint=row[5],
        integration=row[6],
        run_id=row[7],
        operation=models.Operation(row[8]),
        source=models.Source(models.SourceKind(row[9]), row[10], row[11]),
        origin=models.Origin(row[12]),
        status=models.Status(row[13]),
        error=row[14],
        recorded_by=row[15],
        idempotency_key=row[16] or "",
        context=row[17],
        diff_available=row[18],
        before=before,
        after=after,
    )

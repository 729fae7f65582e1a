"""The SQLite backend: one WAL-mode file, one write connection, a read connection per thread."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from audit_service import models
from audit_service.ids import IdGenerator
from audit_service.keys import ServerKey, key_path_for
from audit_service.models import NewEvent, RecordOutcome, StoredEvent
from audit_service.query import Cursor, Query
from audit_service.storage import sqlite_query
from audit_service.storage.base import StorageError
from audit_service.storage.sqlite_applier import Applier
from audit_service.storage.sqlite_intake import DatabaseInUse, IntakeLog, intake_path_for
from audit_service.storage.sqlite_query import EVENT_COLUMNS, casefold_contains, snapshot_contains
from audit_service.storage.sqlite_rows import KEY_COLUMN, PRINCIPAL_COLUMN, Rows, stored_event
from audit_service.storage.sqlite_schema import SNAPSHOT_TEXT_SQL, migrate

Durability = Literal["FULL", "NORMAL"]
log = logging.getLogger(__name__)

_IN_CHUNK = 500
CHECKPOINT_INTERVAL_S = 0.2
INTAKE_IDLE_S = 1.0  # the intake log drops applied groups itself after this long without appends
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
    conn.create_function("casefold_contains", 2, casefold_contains, deterministic=True)
    conn.create_function("snapshot_contains", 3, snapshot_contains, deterministic=True)
    return conn


class SQLiteStorage:
    """Events in one SQLite file, written in two steps (see ``sqlite_intake`` and
    ``sqlite_applier``): ``insert_batch`` makes a group durable in the intake log and returns;
    the applier thread writes it into the events tables soon after, and every read first waits
    until the events staged before it are there. ``insert_batch`` must be called from one
    thread at a time."""

    def __init__(self, path: Path | str, durability: Durability = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._durability = durability
        try:  # first: a second opener stops here, before touching the database
            self._intake = IntakeLog(intake_path_for(self.path), durability)
        except DatabaseInUse as exc:
            raise StorageError(str(exc)) from None
        self._writer = connect(self.path, durability)
        migrate(sqlite_utils.Database(self._writer))
        self._seq = self._apply_unapplied()
        self._ids = IdGenerator()
        newest = self._writer.execute("SELECT max(id) FROM events").fetchone()[0]
        if newest is not None:
            self._ids.continue_after(newest)
        # Idempotency keys of the events staged but not yet applied (the applier drops them).
        self._staged_keys: dict[tuple[str, str], RecordOutcome] = {}
        self._applier = Applier(self._writer, self._seq, self._applied)
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

    def _apply_unapplied(self) -> int:
        """Apply what the intake log holds beyond the events tables (staged before a crash),
        then trim the log; return the largest seq stored."""
        conn = self._writer
        applied: int = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        recovered = 0
        try:
            for rows in self._intake.unapplied(applied):
                if not rows:
                    continue
                rows.commit(conn)
                applied = rows.last_seq
                recovered += len(rows)
            self._intake.mark_applied(applied)
            self._intake.forget_applied()
        except sqlite3.Error as exc:
            raise StorageError(f"could not apply {self._intake.path}: {exc}") from exc
        if recovered:
            log.info("applied %d events staged before the last stop", recovered)
        return max(applied, self._intake.last_seq())

    def _checkpoint_loop(self) -> None:
        """Every CHECKPOINT_INTERVAL_S, a PASSIVE checkpoint (it never blocks a writer), and the
        intake log trimmed when appends have paused."""
        conn = connect(self.path, self._durability, READER_CACHE_KIB)
        try:
            while not self._closing.wait(CHECKPOINT_INTERVAL_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, or the disk: the next round retries
                    log.warning("WAL checkpoint failed (retried): %s", exc)
                try:
                    self._intake.forget_applied(idle_s=INTAKE_IDLE_S)
                except sqlite3.Error as exc:
                    log.warning("could not trim %s (retried): %s", self._intake.path, exc)
        finally:
            conn.close()

    # -- writes ---------------------------------------------------------------------------

    def insert_batch(self, events: Sequence[NewEvent]) -> list[RecordOutcome]:
        self._applier.wait_for_room()
        recorded_at = time.time_ns()
        try:
            seen = self._existing_keys(events)
        except sqlite3.Error as exc:
            raise StorageError(f"could not look up idempotency keys: {exc}") from exc
        outcomes: list[RecordOutcome] = []
        new_keys: dict[tuple[str, str], RecordOutcome] = {}
        rows = Rows()
        seq = self._seq
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
                seen[key] = new_keys[key] = RecordOutcome(event_id, recorded_at, duplicate=True)
            rows.add(seq, event_id, recorded_at, event)
        if not rows:
            return outcomes
        try:
            size = self._intake.append(rows)
        except sqlite3.Error as exc:
            raise StorageError(f"could not store events: {exc}") from exc
        self._seq = seq
        self._staged_keys.update(new_keys)
        self._applier.stage(rows, size)
        return outcomes

    def _applied(self, rows: Rows) -> None:
        """Called once ``rows`` are in the events tables: their keys are found there from now,
        and the intake log may drop them."""
        self._intake.mark_applied(rows.last_seq)
        keys = self._staged_keys
        for row in rows.events:
            if row[KEY_COLUMN] is not None:
                keys.pop((row[PRINCIPAL_COLUMN], row[KEY_COLUMN]), None)

    def _existing_keys(self, events: Sequence[NewEvent]) -> dict[tuple[str, str], RecordOutcome]:
        """The stored events among ``events``' idempotency keys: staged ones from memory, the
        rest with one statement per principal's batch of keys."""
        wanted: dict[str, set[str]] = {}
        found: dict[tuple[str, str], RecordOutcome] = {}
        staged = self._staged_keys
        for event in events:
            if event.idempotency_key:
                key = (event.recorded_by, event.idempotency_key)
                outcome = staged.get(key)
                if outcome is not None:
                    found[key] = outcome
                else:
                    wanted.setdefault(event.recorded_by, set()).add(event.idempotency_key)
        # A key dropped from ``staged`` meanwhile was applied first: this read finds it.
        conn = self._reader()
        for principal, keys in wanted.items():
            for chunk in _chunks(sorted(keys), _IN_CHUNK):
                marks = ",".join("?" * len(chunk))
                sql = (
                    "SELECT idempotency_key, id, recorded_at FROM events"
                    f" WHERE recorded_by = ? AND idempotency_key IN ({marks})"
                )
                for key, event_id, recorded_at in conn.execute(sql, [principal, *chunk]):
                    found[(principal, key)] = RecordOutcome(event_id, recorded_at, True)
        return found

    def delete_expired(self, resource: models.ResourceType, cutoff_ns: int, limit: int) -> int:
        """Delete up to ``limit`` of the oldest ``resource`` events that occurred before
        ``cutoff_ns``, in one transaction on the applier thread. Returns how many."""
        return self._applier.run(partial(_delete_expired, resource, cutoff_ns, limit))

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

    def wait_applied(self) -> None:
        """Return once every event stored so far is in the events tables (what every read
        waits for first). :raises StorageError: not within 30 s."""
        self._applier.wait_applied()

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
        self.wait_applied()
        row = (
            self._reader()
            .execute(
                f"SELECT {EVENT_COLUMNS}, s.before, s.after FROM events e"
                " LEFT JOIN snapshots s ON s.seq = e.seq WHERE e.id = ?",
                [event_id],
            )
            .fetchone()
        )
        return None if row is None else stored_event(row, with_snapshots=True)

    def list_events(self, query: Query) -> tuple[list[StoredEvent], Cursor | None]:
        self.wait_applied()
        conn = self._reader()
        sql, params = self.list_sql(query)
        rows = conn.execute(sql, params).fetchall()
        more = len(rows) > query.page_size
        rows = rows[: query.page_size]
        events = [stored_event(r, with_snapshots=query.include_snapshots) for r in rows]
        if not more:
            return events, None
        last = rows[-1]
        return events, Cursor(last[20], last[1])

    def list_sql(self, query: Query) -> tuple[str, list[Any]]:
        "The SELECT (and its parameters) that answers ``query`` (``sqlite_query.list_sql``)."
        return sqlite_query.list_sql(self._reader(), query)

    def close(self) -> None:
        self._applier.close()  # applies everything staged
        self._closing.set()
        self._checkpointer.join()
        try:
            self._intake.forget_applied()
        except sqlite3.Error as exc:  # they stay; the next start drops them
            log.warning("could not trim %s: %s", self._intake.path, exc)
        self._intake.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()  # the last connection: SQLite checkpoints the rest as it closes


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _delete_expired(
    resource: models.ResourceType, cutoff_ns: int, limit: int, conn: sqlite3.Connection
) -> int:
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

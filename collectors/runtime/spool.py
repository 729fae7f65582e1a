"""The durable spool: a collector's own SQLite file (WAL) between its sources and the service.

Tables:

- ``spool``: events waiting for delivery, oldest first (``seq``), each with its idempotency
  key (unique: the same source event spooled twice is kept once), its serialized
  ``auditlog.v1.AuditEvent``, and how often delivering it failed.
- ``dead_letter``: events the service refused (invalid, not permitted, too large), with the
  reason. Nothing takes them out again by itself; see docs/collectors.md.
- ``state``: a small key-value store for collectors, written in the same transaction as the
  events that depend on it: the last object seen per uid, a follower's file position.

A collector writes through ``transaction()``; the commit is durable (``synchronous=FULL``)
before the ``with`` block ends, so an HTTP sender can be answered 2xx right after it.

The spool has a cap (events and bytes). A transaction that would take it over the cap raises
``SpoolFull`` and writes nothing (its state changes included); a transaction into an empty
spool is always accepted, so one batch bigger than the cap still gets through.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients import Event, pb
from collectors.runtime.stats import Stats

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    event BLOB NOT NULL,
    size INTEGER NOT NULL,
    spooled_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    event BLOB NOT NULL,
    reason TEXT NOT NULL,
    spooled_at REAL NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
"""

_ROWS_PER_INSERT = 200  # 800 parameters: under SQLite's oldest limit (999)


def _insert_rows_sql(rows: int) -> str:
    "One INSERT of ``rows`` rows (placeholders only)."
    values = ",".join(["(?, ?, ?, ?)"] * rows)
    return f"INSERT OR IGNORE INTO spool (key, event, size, spooled_at) VALUES {values}"  # noqa: S608


_INSERT_ROWS = _insert_rows_sql(_ROWS_PER_INSERT)

DEFAULT_MAX_EVENTS = 200_000
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024


class SpoolError(Exception):
    "The spool file cannot be used (not a spool, a newer schema, unreadable)."


class SpoolFull(Exception):
    "The spool is at its cap: refuse (HTTP 503) or pause, and try again once delivery caught up."

    def __init__(self, pending: int, pending_bytes: int, max_events: int, max_bytes: int) -> None:
        super().__init__(
            f"spool full: {pending} events ({pending_bytes} bytes) wait for delivery; the cap"
            f" is {max_events} events or {max_bytes} bytes"
        )
        self.pending = pending
        self.pending_bytes = pending_bytes


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    seq: int
    key: str
    data: bytes  # a serialized auditlog.v1.AuditEvent
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int
    key: str
    data: bytes
    reason: str
    spooled_at: float
    dead_at: float


class SpoolTransaction:
    """Events to add and state to change, all committed together or not at all.

    Only valid inside ``with spool.transaction() as tx:``.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._rows: list[tuple[str, bytes, int, float]] = []
        self._bytes = 0

    def add(self, event: pb.AuditEvent | Event) -> None:
        """Spool ``event``; it must have an idempotency key from the source's own stable id
        (that is what makes redelivery after a crash store nothing twice).

        :raises ValueError: the event has no idempotency key.
        """
        message = event.to_pb() if isinstance(event, Event) else event
        self.add_serialized(message.idempotency_key, message.SerializeToString())

    def add_serialized(self, key: str, data: bytes) -> None:
        """Spool an event already serialized (``data``, an ``auditlog.v1.AuditEvent``) whose
        idempotency key is ``key``: for a source that builds the bytes itself.

        :raises ValueError: ``key`` is empty.
        """
        if not key:
            raise ValueError("a spooled event needs an idempotency key (from the source's id)")
        self._rows.append((key, data, len(data), time.time()))
        self._bytes += len(data)

    @property
    def added(self) -> int:
        return len(self._rows)

    def get_state(self, scope: str, key: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT value FROM state WHERE scope = ? AND key = ?", (scope, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def set_state(self, scope: str, key: str, value: bytes | str) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._conn.execute(
            "INSERT INTO state (scope, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
            (scope, key, data),
        )

    def delete_state(self, scope: str, key: str) -> None:
        self._conn.execute("DELETE FROM state WHERE scope = ? AND key = ?", (scope, key))

    def get_states(self, scope: str, keys: Iterable[str]) -> dict[str, bytes]:
        "The values of those ``keys`` that have one, in a few queries (for a whole batch)."
        wanted = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT key, value FROM state WHERE scope = ? AND key IN ({marks})",  # noqa: S608
                (scope, *chunk),
            )
            found.update((key, bytes(value)) for key, value in rows)
        return found

    def set_states(self, scope: str, items: Iterable[tuple[str, bytes | str]]) -> None:
        "Write many values at once."
        self._conn.executemany(
            "INSERT INTO state (scope, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
            [(scope, key, v.encode() if isinstance(v, str) else v) for key, v in items],
        )

    def delete_states(self, scope: str, keys: Iterable[str]) -> None:
        self._conn.executemany(
            "DELETE FROM state WHERE scope = ? AND key = ?", [(scope, key) for key in keys]
        )


class Spool:
    """The spool file at ``path`` (created with its directory).

    ``max_events`` and ``max_bytes`` are the cap; ``durable=False`` commits with
    ``synchronous=NORMAL`` (survives a crash of the collector, not of the machine).
    ``stats``: where to count events received and refused for a full spool.

    :raises SpoolError: the file is not a spool this version can use.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        durable: bool = True,
        stats: Stats | None = None,
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("the spool cap must be at least one event and one byte")
        self.path = path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._stats = stats or Stats()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        try:
            self._setup(durable)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise SpoolError(f"{path} cannot be used as a spool: {exc}") from None
        row = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
        self._count: int = row[0]
        self._bytes: int = row[1]
        # Reads get a connection of their own: with WAL they see the last commit without
        # waiting for a writer that is committing (fsync) under ``_lock``.
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._read_lock = threading.Lock()

    def _read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[Any]:
        with self._read_lock:
            self._check_open()
            return self._reader.execute(sql, parameters).fetchall()

    def _setup(self, durable: bool) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError(
                f"{self.path} was written by a newer collector (spool schema {version})"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[SpoolTransaction]:
        """One atomic, durable write: events and state together.

        :raises SpoolFull: (on leaving the block) the events would take the spool over its
            cap; nothing of the transaction is kept.
        """
        with self._lock:
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            tx = SpoolTransaction(self._conn)
            try:
                yield tx
                if tx._rows:
                    self._check_room(len(tx._rows), tx._bytes)
                    before = self._conn.total_changes
                    self._insert(tx._rows)
                    inserted = self._conn.total_changes - before
                    if inserted == len(tx._rows):
                        added_bytes = tx._bytes
                    else:  # some were spooled already: count what is really there
                        added_bytes = (
                            self._conn.execute(
                                "SELECT coalesce(sum(size), 0) FROM spool"
                            ).fetchone()[0]
                            - self._bytes
                        )
                else:
                    inserted = added_bytes = 0
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._count += inserted
            self._bytes += added_bytes
            self._stats.add("received", len(tx._rows))
            if inserted:
                self._changed.notify_all()

    def _insert(self, rows: Sequence[tuple[str, bytes, int, float]]) -> None:
        "Rows into ``spool`` (a key spooled already is skipped), many to a statement."
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            self._conn.execute(
                _INSERT_ROWS if len(chunk) == _ROWS_PER_INSERT else _insert_rows_sql(len(chunk)),
                [value for row in chunk for value in row],
            )

    def add(self, events: Sequence[pb.AuditEvent | Event]) -> None:
        "Spool ``events`` in one transaction. :raises SpoolFull, ValueError:"
        with self.transaction() as tx:
            for event in events:
                tx.add(event)

    def _check_room(self, events: int, nbytes: int) -> None:
        if self._count == 0:
            return
        if self._count + events > self.max_events or self._bytes + nbytes > self.max_bytes:
            self._stats.add("rejected_full", events)
            raise SpoolFull(self._count, self._bytes, self.max_events, self.max_bytes)

    def ensure_room(self, events: int, nbytes: int = 0) -> None:
        """A cheap early refusal, before the work of mapping ``events`` events.

        :raises SpoolFull: they would not fit now (counted as refused).
        """
        with self._lock:
            self._check_room(events, nbytes)

    def has_room(self, events: int = 1, nbytes: int = 0) -> bool:
        "Whether that many more events would fit now (for a cheap early 503)."
        with self._lock:
            if self._count == 0:
                return True
            return (
                self._count + events <= self.max_events and self._bytes + nbytes <= self.max_bytes
            )

    def wait_for_room(self, events: int, timeout: float) -> bool:
        "Wait until ``events`` more would fit (True), or ``timeout`` seconds (False)."
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.has_room(events):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._changed.wait(left)
            return True

    # -- the sender's side ---------------------------------------------------------------

    def head(self, limit: int, after: int = 0) -> list[SpooledEvent]:
        "The oldest ``limit`` events waiting for delivery (those spooled after seq ``after``)."
        rows = self._read(
            "SELECT seq, key, event, attempts FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [SpooledEvent(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def settle(
        self,
        delivered: Sequence[int] = (),
        dead: Sequence[tuple[int, str]] = (),
        failed: Sequence[tuple[int, str]] = (),
    ) -> None:
        """After a delivery attempt, in one transaction: remove the ``delivered`` events (by
        seq), move the ``dead`` ones to the dead-letter table with their reasons, count an
        attempt on the ``failed`` ones (they stay, for the next attempt)."""
        if not (delivered or dead or failed):
            return
        with self._lock:
            self._check_open()
            gone = [*delivered, *(seq for seq, _ in dead)]
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                freed = 0
                if gone:
                    freed = self._sizes(gone)
                if dead:
                    now = time.time()
                    self._conn.executemany(
                        "INSERT INTO dead_letter (key, event, reason, spooled_at, dead_at)"
                        " SELECT key, event, ?, spooled_at, ? FROM spool WHERE seq = ?",
                        [(reason, now, seq) for seq, reason in dead],
                    )
                if gone:
                    self._conn.executemany(
                        "DELETE FROM spool WHERE seq = ?", [(seq,) for seq in gone]
                    )
                if failed:
                    self._conn.executemany(
                        "UPDATE spool SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                        [(reason, seq) for seq, reason in failed],
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            removed = len(gone)
            self._count -= removed
            self._bytes -= freed
            if removed:
                self._changed.notify_all()

    def _sizes(self, seqs: Sequence[int]) -> int:
        total = 0
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            marks = ",".join("?" * len(chunk))
            total += self._conn.execute(
                f"SELECT coalesce(sum(size), 0) FROM spool WHERE seq IN ({marks})",  # noqa: S608
                chunk,
            ).fetchone()[0]
        return int(total)

    def wait_for_events(self, timeout: float) -> bool:
        "Wait until something is waiting for delivery (True), or ``timeout`` seconds (False)."
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count == 0:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._changed.wait(left)
            return True

    def wait_for_count(self, count: int, timeout: float) -> bool:
        "Wait until at least ``count`` events are waiting (True), or ``timeout`` (False)."
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count < count:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._changed.wait(left)
            return True

    def oldest_spooled_at(self) -> float | None:
        "When (``time.time()``) the oldest waiting event was spooled; None when none waits."
        rows = self._read("SELECT spooled_at FROM spool ORDER BY seq LIMIT 1")
        return float(rows[0][0]) if rows else None

    # -- reading -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        "Events waiting for delivery."
        with self._lock:
            return self._count

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def dead_letter_count(self) -> int:
        return int(self._read("SELECT count(*) FROM dead_letter")[0][0])

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        "The most recent dead letters, newest first."
        rows = self._read(
            "SELECT seq, key, event, reason, spooled_at, dead_at FROM dead_letter"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [DeadLetter(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]

    def get_state(self, scope: str, key: str) -> bytes | None:
        "A state value, outside any transaction."
        rows = self._read("SELECT value FROM state WHERE scope = ? AND key = ?", (scope, key))
        return bytes(rows[0][0]) if rows else None

    def set_state(self, scope: str, key: str, value: bytes | str) -> None:
        "Write one state value in its own transaction."
        with self.transaction() as tx:
            tx.set_state(scope, key, value)

    # -- closing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"the spool {self.path} is closed")

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            with self._read_lock:
                self._reader.close()
            # Another process may have the file open: its WAL then stays for the next start.
            with contextlib.suppress(sqlite3.DatabaseError):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

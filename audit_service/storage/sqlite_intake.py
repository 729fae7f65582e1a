"""The intake log: where the SQLite backend makes a group of events durable before applying it.

A commit to the events tables writes every page an event touches: its row, 18 index entries,
the context and snapshot rows and two text indexes, about 140 KB of WAL for a lone event. The
intake log is a small SQLite file beside the database (``<db>.intake``) with one table: each
group's rows as one JSON text, so its commit is a page or two and one fsync. That commit is what
a Record waits for. The applier (``sqlite_applier``) copies groups into the events tables behind
it, many groups a transaction, and the log drops applied groups in the transaction of its next
append (or after a second without one); after a crash, the groups not yet applied are applied
when the database is opened again.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from audit_service.storage.sqlite_rows import Rows

INTAKE_SUFFIX = ".intake"
# The WAL of the intake log is reset after each checkpoint; this bounds what it keeps on disk.
_JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024


def intake_path_for(db: Path) -> Path:
    return db.with_name(db.name + INTAKE_SUFFIX)


class DatabaseInUse(Exception):
    "Another opener (in this process or another) has the database."


class IntakeLog:
    """Staged groups of event rows, in seq order. Safe to call from several threads.

    Seqs are counted in memory by the one opener of the database, so opening claims it: an
    exclusive ``flock`` on the log file, held until ``close`` (a second opener gets
    ``DatabaseInUse``; the lock goes with the process, however it ends).
    """

    def __init__(self, path: Path, durability: str) -> None:
        self.path = path
        # SQLite's own locks are fcntl locks, which any close() of the file in this process
        # would drop: this descriptor stays open until the connection is closed.
        self._claim = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._claim)
            raise DatabaseInUse(
                f"{path} is held by another audit-service: one process owns a SQLite"
                " database (replicas share a PostgreSQL one)"
            ) from None
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an append returns once the group is on disk (see storage.sqlite.connect).
        self._conn.execute(f"PRAGMA synchronous={durability}")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS staged (first_seq INTEGER PRIMARY KEY,"
            " last_seq INTEGER NOT NULL, rows TEXT NOT NULL)"
        )
        # The writer thread appends, the checkpoint thread forgets when idle: one connection.
        self._lock = threading.Lock()
        self._applied = 0  # groups up to this seq are applied (``mark_applied``)
        self._forgotten = 0  # and up to this one dropped from the log
        self._last_append = 0.0

    def append(self, rows: Rows) -> int:
        """Store ``rows`` durably; return the size of their JSON text. The same transaction
        drops the groups applied since the last append (``mark_applied``): one sync for both.

        :raises sqlite3.Error: nothing was stored.
        """
        text = rows.to_json()
        insert = [rows.events[0][0], rows.last_seq, text]
        with self._lock:
            applied = self._applied
            if applied <= self._forgotten:  # one statement, its own transaction
                self._conn.execute("INSERT INTO staged VALUES (?, ?, ?)", insert)
            else:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute("DELETE FROM staged WHERE last_seq <= ?", [applied])
                    self._conn.execute("INSERT INTO staged VALUES (?, ?, ?)", insert)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._forgotten = applied
            self._last_append = time.monotonic()
        return len(text)

    def mark_applied(self, seq: int) -> None:
        "The groups up to ``seq`` are in the events tables: the log may drop them."
        self._applied = seq

    def forget_applied(self, idle_s: float = 0.0) -> None:
        """Drop the applied groups now, unless an append came within ``idle_s`` seconds (the
        next append drops them anyway, in its own transaction).

        :raises sqlite3.Error: they stay; a later call or append drops them.
        """
        with self._lock:
            applied = self._applied
            if applied <= self._forgotten or time.monotonic() - self._last_append < idle_s:
                return
            self._conn.execute("DELETE FROM staged WHERE last_seq <= ?", [applied])
            self._forgotten = applied

    def unapplied(self, applied_seq: int) -> Iterator[Rows]:
        """The staged rows of events after ``applied_seq``, group by group in seq order (read
        one at a time: call no other method of the log until the iteration ends)."""
        with self._lock:
            cursor = self._conn.execute(
                "SELECT rows FROM staged WHERE last_seq > ? ORDER BY first_seq", [applied_seq]
            )
            for (text,) in cursor:
                yield Rows.from_json(text).after(applied_seq)

    def last_seq(self) -> int:
        "The largest seq staged (0 when the log is empty)."
        with self._lock:
            row = self._conn.execute("SELECT coalesce(max(last_seq), 0) FROM staged").fetchone()
        last: int = row[0]
        return last

    def close(self) -> None:
        with self._lock:
            if self._claim < 0:
                return
            self._conn.close()
            os.close(self._claim)  # releases the claim
            self._claim = -1

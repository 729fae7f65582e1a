"""The applier: writes staged groups of events into the events tables, on a thread of its own.

Groups reach it once they are durable in the intake log (``sqlite_intake``). It owns the write
connection of the events database and writes what has queued in one transaction when there is
enough (``APPLY_EVENTS``), when the oldest group has waited ``APPLY_DELAY_S``, or at once when a
reader waits for them: ``wait_applied`` is how List and GetDiff see every event acknowledged
before they started. Other writes to the events tables (retention deletes) run here too, as
jobs between applies, so a Record never waits for a delete.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from audit_service.storage.base import StorageError
from audit_service.storage.sqlite_rows import Rows

log = logging.getLogger(__name__)
T = TypeVar("T")

# Apply once this many events have queued, or once the oldest queued group is this old. Larger
# transactions write each index page once for many events (a lone event costs ~140 KB of WAL,
# 50 together ~9 KB each); readers never wait for the delay (they ask for an apply now).
APPLY_EVENTS = 500
APPLY_DELAY_S = 0.05
# Staging waits while this much is queued and not yet applied: bounds memory if applies fail.
MAX_BACKLOG_EVENTS = 20_000
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
WAIT_TIMEOUT_S = 30.0
RETRY_S = 1.0


class Applier:
    def __init__(
        self,
        conn: sqlite3.Connection,
        applied_seq: int,
        on_applied: Callable[[Rows], None],
    ) -> None:
        self._conn = conn
        self._on_applied = on_applied
        self._cond = threading.Condition()
        self._queued: list[tuple[Rows, int]] = []  # groups and the size of their JSON text
        self._queued_events = 0
        self._oldest = 0.0  # when the first of the queued groups was staged (monotonic)
        self._backlog_events = 0  # staged, not yet applied (queued or being applied)
        self._backlog_bytes = 0
        self._jobs: list[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]] = []
        self._wanted = applied_seq  # the largest seq a reader waits for
        self._failure = ""
        self._closing = False
        self.staged_seq = applied_seq
        self.applied_seq = applied_seq
        self._thread = threading.Thread(target=self._run, name="sqlite-applier", daemon=True)
        self._thread.start()

    # -- called by the writer thread -----------------------------------------------------

    def wait_for_room(self) -> None:
        """Return once the backlog is under its bounds.

        :raises StorageError: it stayed full for WAIT_TIMEOUT_S (applies are failing).
        """
        with self._cond:
            if not self._cond.wait_for(self._has_room, WAIT_TIMEOUT_S):
                raise StorageError(
                    f"{self._backlog_events} stored events wait to be applied to the events"
                    f" tables ({self._failure or 'the events database is slow'})"
                )

    def _has_room(self) -> bool:
        return self._backlog_events < MAX_BACKLOG_EVENTS and self._backlog_bytes < MAX_BACKLOG_BYTES

    def stage(self, rows: Rows, size_bytes: int) -> None:
        "Queue ``rows`` (durable in the intake log already) to be applied."
        with self._cond:
            if not self._queued:
                self._oldest = time.monotonic()
                self._cond.notify_all()  # the applier starts its delay
            self._queued.append((rows, size_bytes))
            self._queued_events += len(rows)
            self._backlog_events += len(rows)
            self._backlog_bytes += size_bytes
            self.staged_seq = rows.last_seq
            if self._queued_events >= APPLY_EVENTS:
                self._cond.notify_all()

    # -- called by readers and the sweeper -------------------------------------------------

    def wait_applied(self) -> None:
        """Return once every event staged before this call is in the events tables.

        :raises StorageError: they were not applied within WAIT_TIMEOUT_S.
        """
        target = self.staged_seq  # staged first, then applied: both only grow
        if self.applied_seq >= target:
            return
        with self._cond:
            if self._wanted < target:
                self._wanted = target
                self._cond.notify_all()
            if not self._cond.wait_for(lambda: self.applied_seq >= target, WAIT_TIMEOUT_S):
                raise StorageError(
                    "stored events were not applied to the events tables within"
                    f" {WAIT_TIMEOUT_S:g} s ({self._failure or 'the events database is slow'})"
                )

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        "Run ``fn`` with the write connection on the applier thread, between applies."
        future: Future[T] = Future()
        with self._cond:
            if self._closing:
                raise StorageError("the database is closing")
            self._jobs.append((fn, future))
            self._cond.notify_all()
        return future.result()

    def close(self) -> None:
        "Apply what is queued, run the jobs queued, then stop."
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    # -- the applier thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    self._cond.wait(self._until_due())
                groups, self._queued, self._queued_events = self._queued, [], 0
                jobs, self._jobs = self._jobs, []
                closing = self._closing
            applied = self._apply(groups) if groups else True
            for fn, future in jobs:
                try:
                    future.set_result(fn(self._conn))
                except BaseException as exc:
                    future.set_exception(exc)
            if closing and not applied:
                log.error("stopping with staged events not applied; the next start applies them")
                return
            if closing:
                with self._cond:
                    if not self._queued and not self._jobs:
                        return
            elif not applied:
                with self._cond:  # wait a little before trying again (unless closing)
                    self._cond.wait_for(lambda: self._closing, RETRY_S)

    def _due(self) -> bool:
        if self._jobs or self._closing:
            return True
        if not self._queued:
            return False
        return (
            self._queued_events >= APPLY_EVENTS
            or self._wanted > self.applied_seq
            or time.monotonic() - self._oldest >= APPLY_DELAY_S
        )

    def _until_due(self) -> float | None:
        if not self._queued:
            return None
        return max(0.0, self._oldest + APPLY_DELAY_S - time.monotonic())

    def _apply(self, groups: list[tuple[Rows, int]]) -> bool:
        "Write ``groups`` in one transaction; on failure, queue them again in front."
        rows = groups[0][0] if len(groups) == 1 else Rows.merged(g for g, _ in groups)
        try:
            rows.commit(self._conn)
        except Exception as exc:  # the database (or a bug): the groups stay queued
            if isinstance(exc, sqlite3.Error):
                log.error("could not apply %d staged events (retrying): %s", len(rows), exc)
            else:
                log.exception("could not apply %d staged events (retrying)", len(rows))
            with self._cond:
                self._failure = str(exc)
                self._queued[:0] = groups
                self._queued_events += len(rows)
                self._oldest = time.monotonic()
            return False
        self._on_applied(rows)
        with self._cond:
            self.applied_seq = rows.last_seq
            self._failure = ""
            self._backlog_events -= len(rows)
            self._backlog_bytes -= sum(size for _, size in groups)
            self._cond.notify_all()
        return True

"""The SQLite backend's two-step write: the intake log (durable first) and the applier.

In-process tests against real SQLite files; the crash is a real child process that stages
events and exits without closing (``os._exit``), leaving them in the intake log only.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_service.query import Query, parse_sort
from audit_service.storage import sqlite_applier
from audit_service.storage.base import StorageError
from audit_service.storage.sqlite import SQLiteStorage
from audit_service.storage.sqlite_intake import intake_path_for
from audit_service.storage.sqlite_rows import Rows
from tests.storage_contract.test_storage_contract import new_event

NEWEST_FIRST = Query((), parse_sort("occurred_at desc"), 100)


@pytest.fixture
def never_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    "The applier applies only when asked (a read, a job, close): staged events stay staged."
    monkeypatch.setattr(sqlite_applier, "APPLY_EVENTS", 10**9)
    monkeypatch.setattr(sqlite_applier, "APPLY_DELAY_S", 3600.0)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteStorage]:
    store = SQLiteStorage(tmp_path / "audit.db")
    yield store
    store.close()


def _staged(db: Path) -> int:
    with sqlite3.connect(intake_path_for(db)) as conn:
        count: int = conn.execute("SELECT count(*) FROM staged").fetchone()[0]
    return count


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.01)


def _in_events_table(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT identifier FROM events")}


def test_a_read_sees_every_staged_event_at_once(
    never_on_its_own: None, storage: SQLiteStorage
) -> None:
    [_, second] = storage.insert_batch([new_event(identifier="a"), new_event(identifier="b")])
    assert _staged(storage.path) == 1  # one group, durable in the log
    assert _in_events_table(storage.path) == set()  # and not applied yet
    events, _ = storage.list_events(NEWEST_FIRST)  # asks the applier, waits for it
    assert {e.identifier for e in events} == {"a", "b"}
    assert _in_events_table(storage.path) == {"a", "b"}
    _until(lambda: _staged(storage.path) == 0)  # forgotten right after the apply
    got = storage.get_event(second.id)
    assert got is not None
    assert got.identifier == "b"


def test_idempotency_keys_are_found_while_staged_and_once_applied(
    never_on_its_own: None, storage: SQLiteStorage
) -> None:
    [stored] = storage.insert_batch([new_event(identifier="a", idempotency_key="k1")])
    [again] = storage.insert_batch([new_event(identifier="b", idempotency_key="k1")])
    assert (again.duplicate, again.id) == (True, stored.id)  # found among the staged
    storage.wait_applied()
    [third] = storage.insert_batch([new_event(identifier="c", idempotency_key="k1")])
    assert (third.duplicate, third.id) == (True, stored.id)  # found in the events table
    assert _in_events_table(storage.path) == {"a"}


_CRASHING_CHILD = textwrap.dedent(
    """
    import os, sys
    from audit_service.storage import sqlite_applier
    from audit_service.storage.sqlite import SQLiteStorage
    from tests.storage_contract.test_storage_contract import new_event

    sqlite_applier.APPLY_EVENTS = 10**9
    sqlite_applier.APPLY_DELAY_S = 3600.0
    store = SQLiteStorage(sys.argv[1])
    applied = store.insert_batch([new_event(identifier="applied", idempotency_key="k0")])
    store.wait_applied()
    outcomes = store.insert_batch(
        [new_event(identifier=f"staged-{i}", idempotency_key=f"k{i}") for i in range(1, 4)]
    )
    print(" ".join(o.id for o in applied + outcomes), flush=True)
    os._exit(0)  # no close: the staged events are in the intake log only
    """
)


def test_events_staged_before_a_crash_are_applied_at_the_next_open(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_CHILD, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    acknowledged = child.stdout.split()
    assert len(acknowledged) == 4
    assert _in_events_table(db) == {"applied"}
    assert _staged(db) >= 1
    reopened = SQLiteStorage(db)
    try:
        assert _in_events_table(db) == {"applied", "staged-1", "staged-2", "staged-3"}
        assert _staged(db) == 0
        events, _ = reopened.list_events(NEWEST_FIRST)
        assert sorted(e.id for e in events) == sorted(acknowledged)
        # Seqs and ids continue after the recovered ones; keys still deduplicate.
        [dup, new] = reopened.insert_batch(
            [new_event(identifier="x", idempotency_key="k2"), new_event(identifier="later")]
        )
        assert (dup.duplicate, dup.id) == (True, acknowledged[2])
        assert not new.duplicate
        assert new.id > max(acknowledged)
        latest = Query((), parse_sort("recorded_at desc"), 1)
        assert [e.identifier for e in reopened.list_events(latest)[0]] == ["later"]
    finally:
        reopened.close()


def test_a_failed_apply_is_retried_and_loses_nothing(
    never_on_its_own: None,
    storage: SQLiteStorage,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sqlite_applier, "RETRY_S", 0.05)
    write = Rows.write
    calls: list[int] = []

    def fails_once(self: Rows, conn: sqlite3.Connection, **kwargs: Any) -> None:
        calls.append(len(self))
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        write(self, conn, **kwargs)

    monkeypatch.setattr(Rows, "write", fails_once)
    storage.insert_batch([new_event(identifier="a"), new_event(identifier="b")])
    with caplog.at_level(logging.ERROR, logger="audit_service.storage.sqlite_applier"):
        events, _ = storage.list_events(NEWEST_FIRST)
    assert {e.identifier for e in events} == {"a", "b"}
    assert calls == [2, 2]
    assert "could not apply 2 staged events (retrying): disk I/O error" in caplog.text


def test_while_applies_fail_reads_and_new_writes_are_refused_and_nothing_is_lost(
    never_on_its_own: None, storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_applier, "RETRY_S", 0.05)
    monkeypatch.setattr(sqlite_applier, "WAIT_TIMEOUT_S", 0.3)
    monkeypatch.setattr(sqlite_applier, "MAX_BACKLOG_EVENTS", 2)
    write = Rows.write

    def fails(self: Rows, conn: sqlite3.Connection, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Rows, "write", fails)
    storage.insert_batch([new_event(identifier="a"), new_event(identifier="b")])
    with pytest.raises(StorageError, match=r"not applied .* within 0.3 s \(database or disk is"):
        storage.list_events(NEWEST_FIRST)
    with pytest.raises(StorageError, match=r"2 stored events wait to be applied .* disk is full"):
        storage.insert_batch([new_event(identifier="refused")])
    monkeypatch.setattr(Rows, "write", write)  # the disk has room again
    events, _ = storage.list_events(NEWEST_FIRST)
    assert sorted(e.identifier for e in events) == ["a", "b"]  # "refused" was never stored


def test_a_sqlite_database_has_one_opener_at_a_time(tmp_path: Path) -> None:
    first = SQLiteStorage(tmp_path / "audit.db")
    with pytest.raises(StorageError, match=r"held by another audit-service: one process owns"):
        SQLiteStorage(tmp_path / "audit.db")
    first.close()
    SQLiteStorage(tmp_path / "audit.db").close()  # free again once closed

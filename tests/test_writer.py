"""The group-commit writer keeps one failing write from failing the others in its group."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from audit_service.errors import Unavailable
from audit_service.models import NewEvent, Operation, Origin, RecordOutcome, ResourceType
from audit_service.storage.base import StorageError
from audit_service.storage.sqlite import SQLiteStorage
from audit_service.writer import GroupCommitWriter


def _event(identifier: str) -> NewEvent:
    return NewEvent(
        resource=ResourceType.RUN,
        identifier=identifier,
        operation=Operation.CREATE,
        origin=Origin.API,
        occurred_at=1_800_000_000_000_000_000,
        recorded_by="test",
    )


class _PoisonedStorage(SQLiteStorage):
    """Real SQLite storage that fails any transaction holding the identifier ``poison``, the
    way a database error or a bug would; everything else is stored for real."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(path)
        self.error = error
        self.gate = threading.Event()

    def insert_batch(self, events: Sequence[NewEvent]) -> list[RecordOutcome]:
        self.gate.wait(5)  # let the test queue several writes into one group
        if any(e.identifier == "poison" for e in events):
            raise self.error
        return super().insert_batch(events)


@pytest.mark.parametrize(
    ("error", "expected"),
    [(StorageError("disk I/O error"), Unavailable), (KeyError("bug"), KeyError)],
)
def test_a_failing_write_fails_alone(
    tmp_path: Path, error: Exception, expected: type[Exception]
) -> None:
    storage = _PoisonedStorage(tmp_path / "a.db", error)
    writer = GroupCommitWriter(storage)
    try:
        blocker = writer.submit([_event("first")])  # the writer thread waits on the gate
        good = writer.submit([_event("good-1"), _event("good-2")])
        bad = writer.submit([_event("poison")])
        also_good = writer.submit([_event("good-3")])
        storage.gate.set()
        assert len(blocker.result(5)) == 1
        assert [o.duplicate for o in good.result(5)] == [False, False]
        assert len(also_good.result(5)) == 1
        with pytest.raises(expected):
            bad.result(5)
    finally:
        writer.close()
        storage.close()

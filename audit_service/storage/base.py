"""The storage interface every backend implements.

The service stores events only through ``insert_batch``, from the one writer thread (see
``audit_service.writer``); retention deletes come from the sweeping thread and reads from any
thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from audit_service.keys import ServerKey
from audit_service.models import NewEvent, RecordOutcome, ResourceType, StoredEvent
from audit_service.query import Cursor, Query


class Storage(Protocol):
    def insert_batch(self, events: Sequence[NewEvent]) -> list[RecordOutcome]:
        """Store ``events`` in one transaction and return once it is durable.

        Returns one outcome per event, in order. An event whose (recorded_by,
        idempotency_key) was stored before, or earlier in the same batch, is not stored
        again: its outcome carries the first event's id and ``duplicate=True``.

        :raises StorageError: the transaction did not commit; nothing of it was stored.
        """
        ...

    def list_events(self, query: Query) -> tuple[list[StoredEvent], Cursor | None]:
        """One page of events matching ``query`` and the cursor of the next page (None at
        the end). Snapshots are loaded only when ``query.include_snapshots``."""
        ...

    def get_event(self, event_id: str) -> StoredEvent | None:
        "The event with its snapshots, or None."
        ...

    def delete_expired(self, resource: ResourceType, cutoff_ns: int, limit: int) -> int:
        """Delete up to ``limit`` of the oldest ``resource`` events with occurred_at before
        ``cutoff_ns`` (with everything stored beside them), in one transaction; return how
        many. Called on the sweeping thread, beside the writer's inserts: the backend orders
        the two (SQLite runs it on its applier thread; PostgreSQL locks rows).

        :raises StorageError: nothing was deleted.
        """
        ...

    def drop_expired(self, cutoffs: Mapping[ResourceType, int]) -> dict[ResourceType, int]:
        """Remove in bulk what is wholly past retention, before the batched deletes of a
        sweep: events of each type older than its cutoff in ``cutoffs``. Returns how many
        events went, by type. A backend without such bulk units (SQLite) does nothing.
        Called on the sweeping thread, not the writer thread.

        :raises StorageError: the database failed.
        """
        ...

    def sweep_lock(self) -> AbstractContextManager[bool]:
        """Held for a whole retention sweep. Enters as True when this process may sweep now,
        False when another process sharing the database is sweeping (skip this one)."""
        ...

    def server_key(self) -> ServerKey:
        """The key of page tokens and SECRET fingerprints, created on first use; every process
        sharing the database gets the same one."""
        ...

    def close(self) -> None: ...


class StorageError(Exception):
    "The database could not complete a write; nothing of that transaction was stored."

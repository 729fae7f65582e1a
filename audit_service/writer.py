"""Group commit: one thread owns every write.

Callers (Record calls, RecordStream batches) enqueue their events and wait. The writer thread
takes everything queued, stores it in one transaction, commits durably, then completes every
waiter's future: many small writes share one fsync. (Retention deletes go to storage directly:
each backend orders them with its writes.)
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from audit_service.errors import Unavailable
from audit_service.models import NewEvent, RecordOutcome
from audit_service.storage.base import Storage, StorageError

log = logging.getLogger(__name__)

DEFAULT_MAX_GROUP_EVENTS = 5000


@dataclass(slots=True)
class _Write:
    events: Sequence[NewEvent]
    future: Future[list[RecordOutcome]] = field(default_factory=Future)


_STOP = object()


class GroupCommitWriter:
    def __init__(self, storage: Storage, max_group_events: int = DEFAULT_MAX_GROUP_EVENTS) -> None:
        self._storage = storage
        self._max_group_events = max_group_events
        self._queue: queue.SimpleQueue[_Write | object] = queue.SimpleQueue()
        self._closing = False
        self._lock = threading.Lock()
        self.groups_committed = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @property
    def storage(self) -> Storage:
        "The storage this writer commits to."
        return self._storage

    def submit(self, events: Sequence[NewEvent]) -> Future[list[RecordOutcome]]:
        """Queue ``events``; the future completes once they are durable.

        :raises Unavailable: the writer is shutting down.
        """
        write = _Write(events)
        self._put(write)
        return write.future

    def _put(self, item: _Write) -> None:
        with self._lock:
            if self._closing:
                raise Unavailable("audit-service is shutting down; retry later")
            self._queue.put(item)

    def close(self) -> None:
        "Stop taking writes, commit everything already queued, then stop the thread."
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        group: list[_Write] = []
        count = 0
        while True:
            try:  # block only when there is nothing to commit
                item = self._queue.get_nowait() if group else self._queue.get()
            except queue.Empty:
                item = None
            if isinstance(item, _Write):
                group.append(item)
                count += len(item.events)
                if count < self._max_group_events:
                    continue
            if group:
                self._commit(group)
                group, count = [], 0
            if item is _STOP:
                return

    def _commit(self, group: list[_Write]) -> None:
        events = [e for w in group for e in w.events]
        try:
            outcomes = self._storage.insert_batch(events)
        except Exception as exc:
            if len(group) > 1:
                # Keep one bad write from failing its neighbours: retry them one by one.
                for write in group:
                    self._commit([write])
                return
            if isinstance(exc, StorageError):
                log.error("write of %d events failed: %s", len(events), exc)
                failure: Exception = Unavailable(f"storage is not accepting writes: {exc}")
            else:  # a bug: fail this waiter rather than hang it
                log.exception("write of %d events failed", len(events))
                failure = exc
            group[0].future.set_exception(failure)
            return
        self.groups_committed += 1
        start = 0
        for write in group:
            end = start + len(write.events)
            write.future.set_result(outcomes[start:end])
            start = end

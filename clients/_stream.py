"""``record_many``'s bookkeeping, shared by the sync and asyncio clients: cutting events into
RecordStream batches, matching each response to its batch, and knowing what a retry would
have to send again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from clients._errors import AuditClientError, ServiceError, TooLarge, error_from_result
from clients._generated.auditlog.v1 import audit_pb2 as pb
from clients._values import EventLike, RecordResult, event_to_pb

MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_EVENT_BYTES = 1024 * 1024  # the service refuses bigger events (RESOURCE_EXHAUSTED)
_FIELD_OVERHEAD = 6  # tag and length prefix of one event inside a request


@dataclass(frozen=True, slots=True)
class Batch:
    number: int
    positions: list[int]  # the input index of each event in the request
    request: pb.RecordStreamRequest
    keyed: bool  # every event has an idempotency key: sending it again stores nothing twice


class RecordStreamState:
    """Events in, batches out, results back in input order.

    An event that cannot be converted, or is over 1 MiB, gets its error result here and is
    never sent, as the service would do for it in a batch.
    """

    def __init__(
        self,
        events: Iterable[EventLike],
        *,
        batch_size: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_batch_bytes < 1:
            raise ValueError("max_batch_bytes must be positive")
        self._events: Iterator[EventLike] = iter(events)
        self._batch_size = batch_size
        self._max_bytes = max_batch_bytes
        self._results: list[RecordResult | None] = []
        self._pending: deque[Batch] = deque()
        self._carry: tuple[int, pb.AuditEvent, int] | None = None
        self._next_number = 0
        self.acknowledged = 0  # batches acknowledged so far, across streams

    def next_batch(self) -> Batch | None:
        "The next batch to send (now pending), or None when the input is exhausted."
        positions: list[int] = []
        events: list[pb.AuditEvent] = []
        size = 0
        while len(events) < self._batch_size:
            item = self._carry if self._carry is not None else self._pull()
            self._carry = None
            if item is None:
                break
            index, message, nbytes = item
            if events and size + nbytes > self._max_bytes:
                self._carry = item
                break
            positions.append(index)
            events.append(message)
            size += nbytes
        if not events:
            return None
        batch = Batch(
            number=self._next_number,
            positions=positions,
            request=pb.RecordStreamRequest(batch=self._next_number, events=events),
            keyed=all(e.idempotency_key for e in events),
        )
        self._next_number += 1
        self._pending.append(batch)
        return batch

    def _pull(self) -> tuple[int, pb.AuditEvent, int] | None:
        for raw in self._events:
            index = len(self._results)
            self._results.append(None)
            try:
                message = event_to_pb(raw)
                nbytes = message.ByteSize()
                if nbytes > MAX_EVENT_BYTES:
                    raise TooLarge(
                        f"event is {nbytes} bytes serialized;"
                        f" the limit is {MAX_EVENT_BYTES} bytes (1 MiB)"
                    )
            except AuditClientError as exc:
                self._results[index] = RecordResult(error=exc)
                continue
            return index, message, nbytes + _FIELD_OVERHEAD
        return None

    def unacknowledged(self) -> list[Batch]:
        "Batches sent but not acknowledged: what a new stream must send first."
        return list(self._pending)

    def safe_to_resend(self) -> bool:
        return all(batch.keyed for batch in self._pending)

    def accept(self, response: pb.RecordStreamResponse) -> None:
        "Record the results of the oldest pending batch, which ``response`` must answer."
        if not self._pending or self._pending[0].number != response.batch:
            expected = self._pending[0].number if self._pending else None
            raise ServiceError(
                f"RecordStream answered batch {response.batch}; expected batch {expected}"
            )
        batch = self._pending.popleft()
        if len(response.results) != len(batch.positions):
            raise ServiceError(
                f"batch {batch.number} had {len(batch.positions)} events"
                f" but {len(response.results)} results"
            )
        for position, result in zip(batch.positions, response.results, strict=True):
            self._results[position] = RecordResult(
                id=result.id,
                duplicate=result.duplicate,
                error=error_from_result(result.error) if result.error else None,
            )
        self.acknowledged += 1

    def results(self) -> list[RecordResult]:
        "Every event's result, in input order, once the stream is done."
        if self._pending:
            raise ServiceError(
                f"RecordStream ended before batch {self._pending[0].number} was acknowledged"
            )
        done = [r for r in self._results if r is not None]
        assert len(done) == len(self._results)
        return done

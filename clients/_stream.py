"""``record_many``'s bookkeeping, shared by the sync and asyncio clients: cutting events into
RecordStream batches, matching each response to its batch, and knowing what a retry would
have to send again.

Events may also come already serialized (``AuditEvent`` wire bytes). A batch with any of those
is sent as the request's wire bytes, built from the events' bytes as they are: a
``RecordStreamRequest`` is field 1 (``batch``, a varint) then field 2 (``events``) once per
event, each a tag, a length and the event's bytes. ``serialize_request`` lets one stream carry
both kinds of request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from google.protobuf.message import DecodeError

from clients._errors import (
    AuditClientError,
    ServiceError,
    TooLarge,
    error_from_result,
    invalid_event,
)
from clients._generated.auditlog.v1 import audit_pb2 as pb
from clients._values import EventLike, RecordResult, event_to_pb

MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_EVENT_BYTES = 1024 * 1024  # the service refuses bigger events (RESOURCE_EXHAUSTED)
_FIELD_OVERHEAD = 6  # tag and length prefix of one event inside a request
RECORD_STREAM_METHOD = "/auditlog.v1.AuditService/RecordStream"

_BATCH_TAG = b"\x08"  # field 1 (batch), varint
_EVENT_TAG = b"\x12"  # field 2 (events), length-delimited

# An event as record_many takes it: any form ``record`` takes, or AuditEvent wire bytes.
RecordInput = EventLike | bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Batch:
    number: int
    positions: list[int]  # the input index of each event in the request
    request: pb.RecordStreamRequest | bytes  # bytes: the request serialized, as sent
    keyed: bool  # every event has an idempotency key: sending it again stores nothing twice


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def request_bytes(number: int, events: list[bytes]) -> bytes:
    """``RecordStreamRequest(batch=number, events=...)`` serialized, from each event's wire
    bytes (the bytes protobuf would write for that message, for canonically encoded events)."""
    parts = [_BATCH_TAG + _varint(number)] if number else []
    for data in events:
        parts.append(_EVENT_TAG + _varint(len(data)))
        parts.append(data)
    return b"".join(parts)


def serialize_request(request: pb.RecordStreamRequest | bytes) -> bytes:
    "The RecordStream request serializer: bytes go out as they are, messages serialized."
    if isinstance(request, bytes):
        return request
    return request.SerializeToString()


# An event pulled from the input: its index, itself (a message or its wire bytes), its size
# in a request, and whether it has an idempotency key.
_Pulled = tuple[int, pb.AuditEvent | bytes, int, bool]


def parse_event(data: bytes) -> pb.AuditEvent:
    """``data`` parsed as an ``AuditEvent``, to check it before it is sent as it is.

    :raises InvalidEvent: not AuditEvent wire bytes (``field`` is ``event``).
    """
    try:
        return pb.AuditEvent.FromString(data)
    except DecodeError as exc:
        raise invalid_event(
            "event", f"{len(data)} bytes that do not parse as an AuditEvent ({exc})"
        ) from None


class RecordStreamState:
    """Events in, batches out, results back in input order.

    An event that cannot be converted, serialized bytes that do not parse as an AuditEvent,
    or an event over 1 MiB gets its error result here and is never sent, as the service would
    do for it in a batch.
    """

    def __init__(
        self,
        events: Iterable[RecordInput],
        *,
        batch_size: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_batch_bytes < 1:
            raise ValueError("max_batch_bytes must be positive")
        self._events: Iterator[RecordInput] = iter(events)
        self._batch_size = batch_size
        self._max_bytes = max_batch_bytes
        self._results: list[RecordResult | None] = []
        self._pending: deque[Batch] = deque()
        self._carry: _Pulled | None = None
        self._next_number = 0
        self.acknowledged = 0  # batches acknowledged so far, across streams

    def next_batch(self) -> Batch | None:
        "The next batch to send (now pending), or None when the input is exhausted."
        positions: list[int] = []
        events: list[pb.AuditEvent | bytes] = []
        keyed = True
        serialized = False
        size = 0
        while len(events) < self._batch_size:
            item = self._carry if self._carry is not None else self._pull()
            self._carry = None
            if item is None:
                break
            index, event, nbytes, has_key = item
            if events and size + nbytes > self._max_bytes:
                self._carry = item
                break
            positions.append(index)
            events.append(event)
            keyed = keyed and has_key
            serialized = serialized or isinstance(event, bytes)
            size += nbytes
        if not events:
            return None
        number = self._next_number
        request: pb.RecordStreamRequest | bytes
        if serialized:
            request = request_bytes(
                number, [e if isinstance(e, bytes) else e.SerializeToString() for e in events]
            )
        else:
            request = pb.RecordStreamRequest(batch=number, events=cast(list[pb.AuditEvent], events))
        batch = Batch(number=number, positions=positions, request=request, keyed=keyed)
        self._next_number += 1
        self._pending.append(batch)
        return batch

    def _pull(self) -> _Pulled | None:
        for raw in self._events:
            index = len(self._results)
            self._results.append(None)
            try:
                event: pb.AuditEvent | bytes
                if isinstance(raw, bytes | bytearray | memoryview):
                    event = bytes(raw)
                    nbytes = len(event)
                    has_key = bool(parse_event(event).idempotency_key)
                else:
                    event = event_to_pb(raw)
                    nbytes = event.ByteSize()
                    has_key = bool(event.idempotency_key)
                if nbytes > MAX_EVENT_BYTES:
                    raise TooLarge(
                        f"event is {nbytes} bytes serialized;"
                        f" the limit is {MAX_EVENT_BYTES} bytes (1 MiB)"
                    )
            except AuditClientError as exc:
                self._results[index] = RecordResult(error=exc)
                continue
            return index, event, nbytes + _FIELD_OVERHEAD, has_key
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

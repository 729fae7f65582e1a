"""``AuditClient``: the synchronous client of ``auditlog.v1.AuditService``."""

from __future__ import annotations

import builtins
import queue
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

import grpc

from clients._channel import (
    DEFAULT_TARGET,
    TLS,
    call_metadata,
    check_token,
    make_channel,
    resolve_tls,
)
from clients._errors import AuditClientError, error_from_rpc
from clients._generated.auditlog.v1 import audit_pb2 as pb
from clients._generated.auditlog.v1 import audit_pb2_grpc as pb_grpc
from clients._retry import Retrier, RetryPolicy, call_with_retry
from clients._stream import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    RECORD_STREAM_METHOD,
    RecordInput,
    RecordStreamState,
    serialize_request,
)
from clients._values import (
    Diff,
    Event,
    EventLike,
    Filter,
    FilterLike,
    Page,
    RecordResult,
    event_to_pb,
    format_time,
    from_timestamp,
    to_filter,
)

DEFAULT_TIMEOUT = 30.0
DEFAULT_PAGE_SIZE = 1000  # the most the service returns in one page


def convert_error(exc: Exception) -> AuditClientError | None:
    "A raised exception as the library's error (None: not one of ours, let it through)."
    if isinstance(exc, AuditClientError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return error_from_rpc(exc)
    return None


def list_request(
    filters: Sequence[FilterLike], order_by: str, page_size: int, include_snapshots: bool
) -> pb.ListRequest:
    return pb.ListRequest(
        filters=[to_filter(f).to_pb() for f in filters],
        order_by=order_by,
        page_size=page_size,
        include_snapshots=include_snapshots,
    )


def follow_filters(filters: Sequence[FilterLike], cursor: Event | None) -> list[FilterLike]:
    "``filters`` plus the rule that skips what ``follow`` has already seen (coarsely)."
    if cursor is None or cursor.recorded_at is None:
        return list(filters)
    return [*filters, Filter("recorded_at", "GTE", (format_time(cursor.recorded_at),))]


def is_after(event: Event, cursor: Event | None) -> bool:
    """Whether ``event`` was recorded after ``cursor``: by (recorded_at, id), which is the
    order the service stores events in (ids are time-ordered within one commit)."""
    if cursor is None or cursor.recorded_at is None:
        return True
    if event.recorded_at is None:
        return False
    return (event.recorded_at, event.id) > (cursor.recorded_at, cursor.id)


class AuditClient:
    """A connection to an audit service.

    ``target`` is ``HOST:PORT``. ``token`` is sent as ``authorization: Bearer <token>`` on
    every call. ``tls``: a ``TLS`` (root certificates, client certificate and key for
    mutual TLS), ``True`` for TLS with the system's roots, or ``None`` for plaintext.
    ``timeout``: seconds each unary call may take (None: no limit). ``retry``: how calls that
    are safe to repeat are retried on UNAVAILABLE. ``interceptors``: gRPC client
    interceptors, for tracing or logging.

    Use it as a context manager, or call ``close()``.

    :raises ValueError: a token with whitespace inside, a TLS with a certificate but no key.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        interceptors: Sequence[grpc.Interceptor] = (),
    ) -> None:
        self.target = target
        self._tls = resolve_tls(tls)
        self._metadata = call_metadata(check_token(token, target, self._tls))
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._channel = make_channel(target, self._tls, interceptors)
        self.stub = pb_grpc.AuditServiceStub(self._channel)
        "The generated stub on this client's channel, for anything the methods do not cover."
        # RecordStream as record_many calls it: requests are messages or their wire bytes.
        self._record_stream = self._channel.stream_stream(
            RECORD_STREAM_METHOD,
            request_serializer=serialize_request,
            response_deserializer=pb.RecordStreamResponse.FromString,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- Record ---------------------------------------------------------------------------

    def record(self, event: EventLike) -> RecordResult:
        """Store one event; returns once it is durable.

        ``event``: an ``Event``, a dict shaped like ``Event.to_dict()``, or a
        ``pb.AuditEvent``. Retried on UNAVAILABLE only when it has an idempotency key (the
        service then stores it at most once); ``duplicate`` is True when that key was seen.

        :raises InvalidEvent: the event breaks a rule; ``.field`` names the field.
        :raises TooLarge: over 1 MiB serialized.
        :raises Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded, ServiceError:
        """
        request = pb.RecordRequest(event=event_to_pb(event))
        response: pb.RecordResponse = call_with_retry(
            lambda: self.stub.Record(request, timeout=self._timeout, metadata=self._metadata),
            self._retry,
            convert_error,
            safe=bool(request.event.idempotency_key),
        )
        return RecordResult(
            id=response.id,
            duplicate=response.duplicate,
            recorded_at=from_timestamp(response.recorded_at),
        )

    def record_many(
        self,
        events: Iterable[RecordInput],
        *,
        batch_size: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        window: int = 4,
        timeout: float | None = None,
    ) -> builtins.list[RecordResult]:
        """Store many events over one RecordStream; one result per event, in input order.

        ``events``: any form ``record`` takes, or ``AuditEvent`` wire bytes
        (``SerializeToString()`` of one), sent as they are; bytes that do not parse as an
        AuditEvent get an ``InvalidEvent`` result (``field`` ``event``) and are never sent.
        Events are sent in batches of at most ``batch_size`` events and ``max_batch_bytes``
        bytes, with up to ``window`` batches awaiting acknowledgement. An event the service
        rejects gets an ``error`` in its result (an ``InvalidEvent`` naming the field, say)
        and does not stop the others. On UNAVAILABLE the stream is opened again and the
        unacknowledged batches sent again, if every event in them has an idempotency key.
        ``timeout``: seconds each stream may take in all (None: no limit); a stream that
        runs out is DEADLINE_EXCEEDED, not retried.

        :raises Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded, ServiceError:
            the stream as a whole failed; nothing tells which unacknowledged events were stored.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        state = RecordStreamState(events, batch_size=batch_size, max_batch_bytes=max_batch_bytes)
        retrier = Retrier(self._retry)
        while True:
            acknowledged = state.acknowledged
            try:
                self._stream_once(state, window, timeout)
                return state.results()
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
            if state.acknowledged > acknowledged:
                retrier = Retrier(self._retry)  # progress was made: a fresh budget
            delay = retrier.next_delay(error) if state.safe_to_resend() else None
            if delay is None:
                raise error from None
            time.sleep(delay)

    def _stream_once(
        self, state: RecordStreamState, window: int, timeout: float | None = None
    ) -> None:
        outbox: queue.SimpleQueue[pb.RecordStreamRequest | bytes | None] = queue.SimpleQueue()

        def requests() -> Iterator[pb.RecordStreamRequest | bytes]:
            while (request := outbox.get()) is not None:
                yield request

        in_flight = 0
        exhausted = False

        def top_up() -> None:
            nonlocal in_flight, exhausted
            while in_flight < window and not exhausted:
                batch = state.next_batch()
                if batch is None:
                    exhausted = True
                    outbox.put(None)  # half-close: the service answers what it has, then ends
                    return
                outbox.put(batch.request)
                in_flight += 1

        for batch in state.unacknowledged():
            outbox.put(batch.request)
            in_flight += 1
        responses = self._record_stream(requests(), metadata=self._metadata, timeout=timeout)
        try:
            top_up()
            for response in responses:
                state.accept(response)
                in_flight -= 1
                top_up()
        finally:
            outbox.put(None)  # whatever happened, let the request thread finish
            responses.cancel()  # type: ignore[no-untyped-call]  # a no-op once the call is over

    # -- List and GetDiff -----------------------------------------------------------------

    def list(
        self,
        *filters: FilterLike,
        order_by: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        include_snapshots: bool = False,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """Every event matching all ``filters``, in ``order_by`` order, fetched page by page
        as the iterator is consumed.

        A filter is a ``Filter`` or a tuple ``(field, op, value)``: ``("resource", "=",
        "entity")``, ``("occurred_at", ">=", datetime(...))``, ``("operation", "=",
        ["create", "delete"])`` (any of them). ``order_by``: ``"<field> [asc|desc]"``, default
        ``occurred_at desc``. ``limit``: stop after that many events.

        :raises InvalidArgument: a filter or order_by the service does not accept; ``.field``
            names it (``filters[1].op``) and the message lists what is valid.
        :raises Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded, ServiceError:
        """
        request = list_request(filters, order_by, page_size, include_snapshots)
        remaining = limit
        while remaining is None or remaining > 0:
            if remaining is not None:
                request.page_size = min(page_size, remaining)
            page = self._list_page(request)
            for message in page.events:
                yield Event.from_pb(message)
            if remaining is not None:
                remaining -= len(page.events)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def list_page(
        self,
        *filters: FilterLike,
        order_by: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        include_snapshots: bool = False,
    ) -> Page:
        """One page of ``list``: at most ``page_size`` events and the token of the next page,
        for callers that page on demand (a web page's "next 1,000"). ``page_token``: a
        ``next_page_token`` from an earlier page with the same filters and order_by.

        :raises InvalidArgument: as ``list``, and for a page token the service did not issue
            or issued for other filters or another order_by (``.field`` is ``page_token``).
        :raises Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded, ServiceError:
        """
        request = list_request(filters, order_by, page_size, include_snapshots)
        request.page_token = page_token
        response = self._list_page(request)
        return Page([Event.from_pb(m) for m in response.events], response.next_page_token)

    def _list_page(self, request: pb.ListRequest) -> pb.ListResponse:
        response: pb.ListResponse = call_with_retry(
            lambda: self.stub.List(request, timeout=self._timeout, metadata=self._metadata),
            self._retry,
            convert_error,
        )
        return response

    def follow(
        self,
        *filters: FilterLike,
        after: Event | None = None,
        interval: float = 1.0,
        include_snapshots: bool = False,
    ) -> Iterator[Event]:
        """Events matching ``filters`` recorded after ``after`` (an event read from the
        service; None: from the first), in the order they were recorded, then new ones as
        they arrive, polling every ``interval`` seconds. Never ends by itself.

        :raises: as ``list``; an Unavailable only once the retries of one poll are spent.
        """
        cursor = after
        while True:
            for event in self.list(
                *follow_filters(filters, cursor),
                order_by="recorded_at asc",
                include_snapshots=include_snapshots,
            ):
                if is_after(event, cursor):
                    cursor = event
                    yield event
            time.sleep(interval)

    def get_diff(self, event_id: str) -> Diff:
        """The before/after snapshots of an event and the JSON Patch between them.

        ``available`` is False, with a ``reason``, for READ events and events recorded
        without snapshots.

        :raises InvalidArgument: not an event id. :raises NotFound: no such event.
        :raises Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded, ServiceError:
        """
        request = pb.GetDiffRequest(id=event_id)
        response: pb.GetDiffResponse = call_with_retry(
            lambda: self.stub.GetDiff(request, timeout=self._timeout, metadata=self._metadata),
            self._retry,
            convert_error,
        )
        return Diff.from_pb(response)

"""``AsyncAuditClient``: the asyncio twin of ``AuditClient``, on ``grpc.aio``.

Same arguments, same values, same errors, same retry rules; every call is awaited, ``list``
and ``follow`` are async iterators.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncGenerator, Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc

from clients._channel import (
    DEFAULT_TARGET,
    TLS,
    call_metadata,
    check_token,
    make_aio_channel,
    resolve_tls,
)
from clients._client import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMEOUT,
    convert_error,
    follow_filters,
    is_after,
    list_request,
)
from clients._errors import AuditClientError, error_from_rpc, error_from_status
from clients._generated.auditlog.v1 import audit_pb2 as pb
from clients._generated.auditlog.v1 import audit_pb2_grpc as pb_grpc
from clients._retry import Retrier, RetryPolicy, call_with_retry_async
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
    FilterLike,
    Page,
    RecordResult,
    event_to_pb,
    from_timestamp,
)


class AsyncAuditClient:
    """A connection to an audit service for asyncio code; see ``AuditClient`` for the
    arguments. Create it inside a running event loop; ``async with`` closes it."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        self.target = target
        self._tls = resolve_tls(tls)
        self._metadata = call_metadata(check_token(token, target, self._tls))
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._channel = make_aio_channel(target, self._tls, interceptors)
        self.stub = pb_grpc.AuditServiceStub(self._channel)
        # RecordStream as record_many calls it: requests are messages or their wire bytes.
        self._record_stream = self._channel.stream_stream(
            RECORD_STREAM_METHOD,
            request_serializer=serialize_request,
            response_deserializer=pb.RecordStreamResponse.FromString,
        )

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def record(self, event: EventLike) -> RecordResult:
        "As ``AuditClient.record``."
        request = pb.RecordRequest(event=event_to_pb(event))

        async def call() -> pb.RecordResponse:
            return await self.stub.Record(request, timeout=self._timeout, metadata=self._metadata)

        response = await call_with_retry_async(
            call, self._retry, convert_error, safe=bool(request.event.idempotency_key)
        )
        return RecordResult(
            id=response.id,
            duplicate=response.duplicate,
            recorded_at=from_timestamp(response.recorded_at),
        )

    async def record_many(
        self,
        events: Iterable[RecordInput],
        *,
        batch_size: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        window: int = 4,
        timeout: float | None = None,
    ) -> builtins.list[RecordResult]:
        "As ``AuditClient.record_many`` (``events`` is a plain iterable, bytes included)."
        if window < 1:
            raise ValueError("window must be at least 1")
        state = RecordStreamState(events, batch_size=batch_size, max_batch_bytes=max_batch_bytes)
        retrier = Retrier(self._retry)
        while True:
            acknowledged = state.acknowledged
            try:
                await self._stream_once(state, window, timeout)
                return state.results()
            except AuditClientError as exc:
                if exc.code is None:  # found here, not reported by the service
                    raise
                error = exc
            if state.acknowledged > acknowledged:
                retrier = Retrier(self._retry)
            delay = retrier.next_delay(error) if state.safe_to_resend() else None
            if delay is None:
                raise error
            await asyncio.sleep(delay)

    async def _stream_once(
        self, state: RecordStreamState, window: int, timeout: float | None = None
    ) -> None:
        # The requests are written to the call below.
        call = self._record_stream(None, metadata=self._metadata, timeout=timeout)
        in_flight = 0
        exhausted = False
        try:
            for batch in state.unacknowledged():
                await _write(call, batch.request)
                in_flight += 1
            while True:
                while in_flight < window and not exhausted:
                    fresh = state.next_batch()
                    if fresh is None:
                        exhausted = True
                        await _done_writing(call)
                    else:
                        await _write(call, fresh.request)
                        in_flight += 1
                if in_flight == 0:
                    # Everything sent is acknowledged: read the end of the stream, so that a
                    # refusal of the stream as a whole is reported even when no batch was
                    # sent (``record_many([])`` with a token that may not record).
                    await _read(call)
                    return
                response = await _read(call)
                if response is None:
                    return  # state.results() names the batch left unanswered
                state.accept(response)
                in_flight -= 1
        finally:
            call.cancel()

    async def list(
        self,
        *filters: FilterLike,
        order_by: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        include_snapshots: bool = False,
        limit: int | None = None,
    ) -> AsyncGenerator[Event, None]:
        "As ``AuditClient.list``, as an async iterator."
        request = list_request(filters, order_by, page_size, include_snapshots)
        remaining = limit
        while remaining is None or remaining > 0:
            if remaining is not None:
                request.page_size = min(page_size, remaining)
            page = await self._list_page(request)
            for message in page.events:
                yield Event.from_pb(message)
            if remaining is not None:
                remaining -= len(page.events)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def list_page(
        self,
        *filters: FilterLike,
        order_by: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        include_snapshots: bool = False,
    ) -> Page:
        "As ``AuditClient.list_page``."
        request = list_request(filters, order_by, page_size, include_snapshots)
        request.page_token = page_token
        response = await self._list_page(request)
        return Page([Event.from_pb(m) for m in response.events], response.next_page_token)

    async def _list_page(self, request: pb.ListRequest) -> pb.ListResponse:
        async def call() -> pb.ListResponse:
            return await self.stub.List(request, timeout=self._timeout, metadata=self._metadata)

        return await call_with_retry_async(call, self._retry, convert_error)

    async def follow(
        self,
        *filters: FilterLike,
        after: Event | None = None,
        interval: float = 1.0,
        include_snapshots: bool = False,
    ) -> AsyncGenerator[Event, None]:
        "As ``AuditClient.follow``, as an async iterator."
        cursor = after
        while True:
            async for event in self.list(
                *follow_filters(filters, cursor),
                order_by="recorded_at asc",
                include_snapshots=include_snapshots,
            ):
                if is_after(event, cursor):
                    cursor = event
                    yield event
            await asyncio.sleep(interval)

    async def get_diff(self, event_id: str) -> Diff:
        "As ``AuditClient.get_diff``."
        request = pb.GetDiffRequest(id=event_id)

        async def call() -> pb.GetDiffResponse:
            return await self.stub.GetDiff(request, timeout=self._timeout, metadata=self._metadata)

        return Diff.from_pb(await call_with_retry_async(call, self._retry, convert_error))


_Stream = grpc.aio.StreamStreamCall[pb.RecordStreamRequest | bytes, pb.RecordStreamResponse]


async def _write(call: _Stream, request: pb.RecordStreamRequest | bytes) -> None:
    try:
        await call.write(request)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from None
    except asyncio.InvalidStateError:  # the call already ended: report how
        raise await _ended(call) from None


async def _done_writing(call: _Stream) -> None:
    try:
        await call.done_writing()
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from None


async def _read(call: _Stream) -> pb.RecordStreamResponse | None:
    try:
        response = await call.read()
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from None
    if isinstance(response, pb.RecordStreamResponse):
        return response
    # grpc.aio.EOF: the service ended the stream
    if await call.code() is not grpc.StatusCode.OK:
        raise await _ended(call)
    return None


async def _ended(call: _Stream) -> AuditClientError:
    return error_from_status(await call.code(), await call.details() or "")

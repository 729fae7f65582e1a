"""``auditlog.v1.AuditService``: converts protobuf to models, calls AuditLog, converts back."""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from audit_service import convert, query
from audit_service.audit_log import AuditLog, PendingRecord
from audit_service.auth import Authenticator
from audit_service.errors import AuditError, InvalidArgument, TooLarge
from audit_service.models import NewEvent, RecordOutcome
from audit_service.principals import Principal
from audit_service.status import result_error, status_code
from audit_service.validation import MAX_EVENT_BYTES
from audit_service.wire import Serialized, decode, diff_response_bytes
from clients import pb, pb_grpc

log = logging.getLogger(__name__)

MAX_BATCH_EVENTS = 5000
# RecordStream batches converted and queued for the writer ahead of their acknowledgement.
STREAM_AHEAD = 4
# gRPC clients refuse responses over 4 MiB unless told otherwise; stay well under it.
MAX_LIST_RESPONSE_BYTES = 3 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])


def _reports_errors(method: F) -> F:
    "Map domain errors to status codes; anything else is our bug: log it, answer INTERNAL."

    @functools.wraps(method)
    def wrapper(self: AuditServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except AuditError as exc:
            context.abort(status_code(exc), exc.message)
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has details")

    return wrapper  # type: ignore[return-value]


def _too_large(size: int) -> TooLarge:
    return TooLarge(
        f"event is {size} bytes serialized; the limit is {MAX_EVENT_BYTES} bytes (1 MiB)"
    )


def _peer(context: grpc.ServicerContext) -> str:
    "The caller's address; empty where the context has no transport (e.g. grpc_testing)."
    try:
        return context.peer()
    except NotImplementedError:
        return ""


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, audit_log: AuditLog, authenticator: Authenticator) -> None:
        self._log = audit_log
        self._auth = authenticator

    def _principal(self, context: grpc.ServicerContext) -> Principal:
        return self._auth.authenticate(context.invocation_metadata(), _peer(context))

    def _event(
        self, event: pb.AuditEvent | bytes, now: int, principal: Principal
    ) -> NewEvent | AuditError:
        "One event of a request, decoded (when raw) and converted; errors are returned."
        try:
            if isinstance(event, bytes):
                if len(event) > MAX_EVENT_BYTES:
                    raise _too_large(len(event))
                event = decode(pb.AuditEvent, event)
            elif (size := event.ByteSize()) > MAX_EVENT_BYTES:
                raise _too_large(size)
            return convert.event_from_pb(event, now, principal.id)
        except AuditError as exc:
            return exc

    @_reports_errors
    def Record(self, request: pb.RecordRequest, context: grpc.ServicerContext) -> pb.RecordResponse:
        principal = self._principal(context)
        if not request.HasField("event"):
            raise InvalidArgument("event", "required")
        (result,) = self._log.record(
            principal, [self._event(request.event, self._log.now(), principal)], depth_checked=True
        )
        if isinstance(result, AuditError):
            raise result
        response = pb.RecordResponse(id=result.id, duplicate=result.duplicate)
        convert.ns_to_timestamp(result.recorded_at, response.recorded_at)
        return response

    def RecordStream(
        self, request_iterator: Iterable[Any], context: grpc.ServicerContext
    ) -> Iterator[pb.RecordStreamResponse]:
        """Batches are read, converted and queued for the writer by a thread of their own,
        up to ``STREAM_AHEAD`` batches ahead, while this one answers them in order, each once
        it is durable: batch N+1 is converted while batch N commits."""
        try:
            principal = self._principal(context)
            self._log.require_recorder(principal)
        except AuditError as exc:
            context.abort(status_code(exc), exc.message)
        ahead: queue.Queue[tuple[int, PendingRecord] | BaseException | None] = queue.Queue(
            STREAM_AHEAD
        )
        stop = threading.Event()
        reader = threading.Thread(
            target=self._read_batches,
            args=(principal, request_iterator, ahead, stop),
            name="record-stream-reader",
            daemon=True,
        )
        reader.start()
        try:
            while (item := ahead.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                batch, pending = item
                yield _stream_response(batch, pending.results())
        except AuditError as exc:
            context.abort(status_code(exc), exc.message)
        except grpc.RpcError:
            raise
        except Exception:
            log.exception("RecordStream failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has details")
        finally:
            stop.set()

    def _read_batches(
        self,
        principal: Principal,
        requests: Iterable[Any],
        ahead: queue.Queue[tuple[int, PendingRecord] | BaseException | None],
        stop: threading.Event,
    ) -> None:
        "The reading side of RecordStream: ends with None, or the exception that ended it."

        def put(item: tuple[int, PendingRecord] | BaseException | None) -> bool:
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False  # the call ended: nobody reads on

        try:
            for request in requests:
                if not put((request.batch, self._submit_batch(principal, request))):
                    return
        except BaseException as exc:
            put(exc)
            return
        put(None)

    def _submit_batch(self, principal: Principal, request: Any) -> PendingRecord:
        if len(request.events) > MAX_BATCH_EVENTS:
            raise InvalidArgument(
                "events",
                f"batch {request.batch} has {len(request.events)} events;"
                f" at most {MAX_BATCH_EVENTS} per batch",
            )
        now = self._log.now()
        events = [self._event(e, now, principal) for e in request.events]
        return self._log.submit(principal, events, depth_checked=True)

    @_reports_errors
    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        principal = self._principal(context)
        query.check_filter_count(len(request.filters))
        conditions = tuple(
            query.parse_condition(
                f.field,
                pb.FilterOp.Name(f.op).removeprefix("FILTER_OP_") if f.op in _FILTER_OPS else "?",
                list(f.values),
                f"filters[{i}]",
            )
            for i, f in enumerate(request.filters)
        )
        q = query.Query(
            conditions=conditions,
            sort=query.parse_sort(request.order_by),
            page_size=query.coerce_page_size(request.page_size),
            include_snapshots=request.include_snapshots,
        )
        page = self._log.list(principal, q, request.page_token)
        response = pb.ListResponse(next_page_token=page.next_page_token)
        size = 0
        for i, event in enumerate(page.events):
            item = response.events.add()
            convert.event_to_pb(event, item)
            size += item.ByteSize() + 8
            if size > MAX_LIST_RESPONSE_BYTES and i > 0:
                # Cut the page short rather than send more than clients accept by default.
                del response.events[-1]
                response.next_page_token = page.token_after(i - 1)
                break
        return response

    @_reports_errors
    def GetDiff(
        self, request: pb.GetDiffRequest, context: grpc.ServicerContext
    ) -> Serialized[pb.GetDiffResponse]:
        principal = self._principal(context)
        # Sent as written (most of after's bytes are before's), never parsed on the way.
        diff = self._log.get_diff(principal, request.id)
        return Serialized(pb.GetDiffResponse, diff_response_bytes(diff))


_FILTER_OPS = frozenset(pb.FilterOp.values())


def _stream_response(
    batch: int, results: list[RecordOutcome | AuditError]
) -> pb.RecordStreamResponse:
    response = pb.RecordStreamResponse(batch=batch)
    add = response.results.add
    for result in results:
        if isinstance(result, RecordOutcome):
            add(id=result.id, duplicate=result.duplicate)
        else:
            add(error=result_error(result))
    return response

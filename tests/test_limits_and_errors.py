"""Limits and errors: sizes, nesting, malformed protobuf, bad filters. Client input is never
answered with UNKNOWN or INTERNAL, and the server keeps serving afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from audit_service import query
from clients import pb, pb_grpc
from tests.helpers import (
    TestServer,
    assert_still_serving,
    event,
    event_bytes_with_before,
    record,
    rule,
    varint,
)

MIB = 1024 * 1024
SERVICE = "/auditlog.v1.AuditService/"
CONTRACT_FIELDS = [
    "occurred_at", "recorded_at", "resource", "identifier", "blueprint", "integration",
    "run_id", "operation", "source", "source_kind", "origin", "status", "error", "recorded_by",
    "context.<key>",
]  # fmt: skip


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    details: str


def _error(call: Any, *args: Any, **kwargs: Any) -> Failure:
    "The status a call fails with; never UNKNOWN or INTERNAL, whatever the client sent."
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    failure = Failure(raised.value.code(), raised.value.details() or "")
    assert failure.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), failure
    return failure


def _nothing_stored(stub: pb_grpc.AuditServiceStub) -> bool:
    return len(stub.List(pb.ListRequest()).events) == 0


def _raw(server: TestServer, method: str, response_type: Any) -> Any:
    return server.channel.unary_unary(
        SERVICE + method, request_serializer=None, response_deserializer=response_type.FromString
    )


def _nested(levels: int, *, lists: bool = False) -> dict[str, Any]:
    "A snapshot nesting ``levels`` deep: the top-level object is level 1."
    inner: Any = "leaf"
    for _ in range(levels - 1):
        inner = [inner] if lists else {"k": inner}
    return {"top": inner}


# -- sizes ---------------------------------------------------------------------------------------


def _event_of_size(size: int) -> pb.AuditEvent:
    "An event exactly ``size`` bytes serialized."
    message = event(after={"blob": ""})
    blob = size - message.ByteSize()
    for _ in range(10):
        message = event(after={"blob": "x" * blob})
        if message.ByteSize() == size:
            return message
        blob += size - message.ByteSize()
    raise AssertionError(f"cannot build an event of exactly {size} bytes")


def test_event_of_exactly_one_mib_is_accepted(stub: pb_grpc.AuditServiceStub) -> None:
    response = stub.Record(pb.RecordRequest(event=_event_of_size(MIB)))
    assert response.id


@pytest.mark.parametrize("size", [MIB + 1, 2 * MIB, 17 * MIB])
def test_event_over_one_mib_is_resource_exhausted(
    stub: pb_grpc.AuditServiceStub, size: int
) -> None:
    error = _error(stub.Record, pb.RecordRequest(event=_event_of_size(size)))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _nothing_stored(stub)
    assert_still_serving(stub)


def test_oversized_identifier_counts_against_the_size_limit(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    error = _error(record, stub, identifier="i" * (MIB + 100))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(stub)


def test_identifier_of_512_characters_is_accepted(stub: pb_grpc.AuditServiceStub) -> None:
    record(stub, identifier="é" * 512)  # 1024 bytes: the limit counts characters
    (listed,) = stub.List(pb.ListRequest()).events
    assert listed.identifier == "é" * 512


def test_identifier_over_512_characters_is_invalid(stub: pb_grpc.AuditServiceStub) -> None:
    error = _error(record, stub, identifier="x" * 513)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("event.identifier:")
    assert _nothing_stored(stub)


def test_error_of_4_kib_is_accepted(stub: pb_grpc.AuditServiceStub) -> None:
    text = "é" * 2048  # 4096 bytes
    record(stub, status=pb.STATUS_FAILURE, error=text)
    (listed,) = stub.List(pb.ListRequest()).events
    assert listed.error == text


@pytest.mark.parametrize("text", ["x" * 4097, "é" * 2048 + "x", "😀" * 1025])
def test_error_over_4_kib_is_invalid(stub: pb_grpc.AuditServiceStub, text: str) -> None:
    assert len(text.encode()) > 4096
    error = _error(record, stub, status=pb.STATUS_FAILURE, error=text)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("event.error:")
    assert _nothing_stored(stub)


# -- nesting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lists", [False, True], ids=["objects", "lists"])
@pytest.mark.parametrize("snapshot", ["before", "after"])
def test_snapshot_of_exactly_32_levels_is_accepted(
    stub: pb_grpc.AuditServiceStub, snapshot: str, lists: bool
) -> None:
    response = record(stub, **{snapshot: _nested(32, lists=lists)})
    assert stub.GetDiff(pb.GetDiffRequest(id=response.id)).available


@pytest.mark.parametrize("lists", [False, True], ids=["objects", "lists"])
@pytest.mark.parametrize("snapshot", ["before", "after"])
def test_snapshot_deeper_than_32_levels_is_invalid(
    stub: pb_grpc.AuditServiceStub, snapshot: str, lists: bool
) -> None:
    error = _error(record, stub, **{snapshot: _nested(33, lists=lists)})
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(f"event.{snapshot}:")
    assert _nothing_stored(stub)


@pytest.mark.parametrize("levels", [33, 34, 40, 64, 1000])
def test_nesting_in_crafted_bytes_is_invalid_argument(server: TestServer, levels: int) -> None:
    "Past protobuf's own decode limit too: INVALID_ARGUMENT, never INTERNAL."
    data = event_bytes_with_before(levels, identifier="deep")
    request = b"\x0a" + varint(len(data)) + data  # RecordRequest{event: data}
    error = _error(_raw(server, "Record", pb.RecordResponse), request, timeout=30)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details
    assert _nothing_stored(server.stub)
    assert_still_serving(server.stub)


def test_crafted_nesting_of_32_levels_is_accepted(server: TestServer) -> None:
    "Control for the test above: the crafted bytes themselves are a valid event."
    data = event_bytes_with_before(32, identifier="deep-ok")
    response = _raw(server, "Record", pb.RecordResponse)(b"\x0a" + varint(len(data)) + data)
    assert response.id


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_json_number_in_snapshot_is_invalid(
    stub: pb_grpc.AuditServiceStub, number: float
) -> None:
    error = _error(record, stub, after={"ok": 1, "bad": number})
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("event.after")
    assert_still_serving(stub)


@pytest.mark.parametrize(
    "occurred_at",
    [
        timestamp_pb2.Timestamp(seconds=-62135596800),  # 0001-01-01
        timestamp_pb2.Timestamp(seconds=-(10**10)),  # 1653
        timestamp_pb2.Timestamp(seconds=253402300799),  # 9999-12-31
        timestamp_pb2.Timestamp(seconds=0, nanos=1_000_000_000),
    ],
)
def test_occurred_at_out_of_range_is_invalid(
    stub: pb_grpc.AuditServiceStub, occurred_at: timestamp_pb2.Timestamp
) -> None:
    error = _error(record, stub, occurred_at=occurred_at)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("event.occurred_at:")
    assert_still_serving(stub)


def test_out_of_range_event_fails_alone_in_a_stream(stub: pb_grpc.AuditServiceStub) -> None:
    batch = pb.RecordStreamRequest(
        batch=1,
        events=[
            event(identifier="ok"),
            event(occurred_at=timestamp_pb2.Timestamp(seconds=-(10**10))),
        ],
    )
    (response,) = stub.RecordStream(iter([batch]), timeout=30)
    ok, bad = response.results
    assert ok.id
    assert not ok.error
    assert bad.error.startswith("INVALID_ARGUMENT: event.occurred_at:")


# -- malformed protobuf --------------------------------------------------------------------------

GARBAGE = [
    pytest.param(b"\xff\xff\xff\xff\xff", id="garbage"),
    pytest.param(b"\x0a\x10abc", id="truncated"),
    pytest.param(b"\x0a\x02\xc3\x28", id="invalid-utf8"),
    pytest.param(b"\x0b", id="unterminated-group"),
    pytest.param(b"\x80", id="truncated-varint"),
]


@pytest.mark.parametrize(
    ("method", "response_type"),
    [
        ("Record", pb.RecordResponse),
        ("List", pb.ListResponse),
        ("GetDiff", pb.GetDiffResponse),
    ],
)
@pytest.mark.parametrize("data", GARBAGE)
def test_malformed_request_is_invalid_argument(
    server: TestServer, method: str, response_type: Any, data: bytes
) -> None:
    error = _error(_raw(server, method, response_type), data, timeout=30)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in error.details
    assert_still_serving(server.stub)


def test_malformed_list_filter_bytes_are_invalid_argument(server: TestServer) -> None:
    bad_filter = b"\x0a\x02\xc3\x28"  # Filter{field: invalid UTF-8}
    request = b"\x0a" + varint(len(bad_filter)) + bad_filter
    error = _error(_raw(server, "List", pb.ListResponse), request, timeout=30)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(server.stub)


# -- List errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["nope", "", "id", "Identifier", "source.id", "context"])
def test_unknown_filter_field_lists_the_valid_ones(
    stub: pb_grpc.AuditServiceStub, field: str
) -> None:
    error = _error(stub.List, pb.ListRequest(filters=[rule(field, pb.FILTER_OP_EQUALS, "x")]))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details
    assert details.startswith("filters[0].field:")
    assert repr(field) in details
    for name in CONTRACT_FIELDS:
        assert name in details, name


def test_filter_error_names_the_rule(stub: pb_grpc.AuditServiceStub) -> None:
    filters = [rule("resource", pb.FILTER_OP_EQUALS, "entity"), rule("bogus", pb.FILTER_OP_EQUALS)]
    error = _error(stub.List, pb.ListRequest(filters=filters))
    assert error.details.startswith("filters[1].field:")


OP = pb.FILTER_OP_EQUALS


@pytest.mark.parametrize(
    ("field", "op", "values", "where"),
    [
        ("resource", pb.FILTER_OP_CONTAINS, ["entity"], "op"),
        ("resource", pb.FILTER_OP_GT, ["entity"], "op"),
        ("status", pb.FILTER_OP_STARTS_WITH, ["s"], "op"),
        ("operation", pb.FILTER_OP_LTE, ["create"], "op"),
        ("source_kind", pb.FILTER_OP_CONTAINS, ["user"], "op"),
        ("origin", pb.FILTER_OP_GTE, ["ui"], "op"),
        ("occurred_at", pb.FILTER_OP_CONTAINS, ["2026"], "op"),
        ("occurred_at", pb.FILTER_OP_STARTS_WITH, ["2026"], "op"),
        ("recorded_at", pb.FILTER_OP_CONTAINS, ["2026-01-01T00:00:00Z"], "op"),
        ("identifier", pb.FILTER_OP_UNSPECIFIED, ["x"], "op"),
        ("identifier", 99, ["x"], "op"),
        ("resource", OP, ["bogus"], "values[0]"),
        ("resource", OP, ["entity", "nope"], "values[1]"),
        ("operation", OP, ["RESOURCE_TYPE_ENTITY"], "values[0]"),
        ("origin", OP, ["ORIGIN_"], "values[0]"),
        ("identifier", OP, [], "values"),
        ("identifier", pb.FILTER_OP_CONTAINS, [""], "values[0]"),
        ("identifier", pb.FILTER_OP_STARTS_WITH, [""], "values[0]"),
        ("context.", OP, ["x"], "field"),
    ],
)
def test_bad_op_or_value_is_invalid_argument(
    stub: pb_grpc.AuditServiceStub, field: str, op: Any, values: list[str], where: str
) -> None:
    request = pb.ListRequest(filters=[pb.Filter(field=field, op=op, values=values)])
    error = _error(stub.List, request)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(f"filters[0].{where}:")


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2026-01-31",
        "2026-01-31T12:00:00",
        "2026-13-01T00:00:00Z",
        "2026-01-31T25:00:00Z",
        "2026-01-31T12:00:00+25:00",
        "1769860800",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ],
)
@pytest.mark.parametrize("field", ["occurred_at", "recorded_at"])
def test_malformed_time_is_invalid_argument(
    stub: pb_grpc.AuditServiceStub, field: str, value: str
) -> None:
    request = pb.ListRequest(filters=[rule(field, pb.FILTER_OP_GT, value)])
    error = _error(stub.List, request)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("filters[0].values[0]:")
    assert_still_serving(stub)


def test_times_at_the_edges_of_the_stored_range_are_accepted(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    record(stub)
    for value, expected in [("1677-09-22T00:00:00Z", 1), ("2262-04-10T00:00:00Z", 0)]:
        response = stub.List(pb.ListRequest(filters=[rule("occurred_at", pb.FILTER_OP_GT, value)]))
        assert len(response.events) == expected
    assert query.parse_time("1970-01-01T00:00:00.000000001Z", "t") == 1
    assert query.parse_time("1969-12-31T23:59:59.5Z", "t") == -500_000_000


def test_client_errors_never_break_the_server(server: TestServer) -> None:
    "A burst of every kind of bad request, then the server still records and lists."
    stub = server.stub
    for data in (b"\xff", b"\x0a\x05ab"):
        for method, response_type in (("Record", pb.RecordResponse), ("List", pb.ListResponse)):
            _error(_raw(server, method, response_type), data)
    _error(record, stub, identifier="")
    _error(stub.List, pb.ListRequest(order_by="nope"))
    _error(stub.GetDiff, pb.GetDiffRequest(id="nope"))
    _error(stub.List, pb.ListRequest(page_token="forged"))
    assert_still_serving(stub)
    assert [e.identifier for e in stub.List(pb.ListRequest()).events] == ["still-serving"]

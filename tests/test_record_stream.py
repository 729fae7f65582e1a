"""RecordStream: one response per batch, per-event errors, duplicates, oversized and malformed
events failing alone."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest

from clients import pb, pb_grpc
from tests.helpers import TestServer, event, event_bytes_with_before, list_ids, record, varint

STREAM_METHOD = "/auditlog.v1.AuditService/RecordStream"
MIB = 1024 * 1024


def _batch_bytes(batch: int, events: list[bytes]) -> bytes:
    "A RecordStreamRequest on the wire, each event given as its own (possibly bad) bytes."
    out = b"\x08" + varint(batch)
    for data in events:
        out += b"\x12" + varint(len(data)) + data
    return out


def _send_raw(server: TestServer, batches: list[bytes]) -> list[pb.RecordStreamResponse]:
    call = server.channel.stream_stream(
        STREAM_METHOD,
        request_serializer=None,
        response_deserializer=pb.RecordStreamResponse.FromString,
    )
    return list(call(iter(batches), timeout=30))


def _listed(stub: pb_grpc.AuditServiceStub) -> dict[str, pb.AuditEvent]:
    return {e.id: e for e in stub.List(pb.ListRequest(page_size=1000)).events}


def test_one_response_per_batch_echoing_batch_in_order(stub: pb_grpc.AuditServiceStub) -> None:
    requests = [
        pb.RecordStreamRequest(batch=7, events=[event(identifier="a"), event(identifier="b")]),
        pb.RecordStreamRequest(batch=3, events=[event(identifier="c")]),
        pb.RecordStreamRequest(
            batch=2**64 - 1, events=[event(identifier=f"d{i}") for i in range(5)]
        ),
    ]
    responses = list(stub.RecordStream(iter(requests), timeout=30))
    assert [r.batch for r in responses] == [7, 3, 2**64 - 1]
    assert [len(r.results) for r in responses] == [2, 1, 5]
    listed = _listed(stub)
    identifiers = [[listed[r.id].identifier for r in resp.results] for resp in responses]
    assert identifiers == [["a", "b"], ["c"], [f"d{i}" for i in range(5)]]
    assert all(not r.error and not r.duplicate for resp in responses for r in resp.results)


def test_each_batch_is_acknowledged_before_the_next_is_sent(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    "Responses come per batch, while the stream stays open, and acknowledged events are listed."
    outbox: queue.Queue[pb.RecordStreamRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.RecordStreamRequest]:
        while (item := outbox.get(timeout=20)) is not None:
            yield item

    responses = iter(stub.RecordStream(requests(), timeout=30))
    for batch in range(1, 4):
        outbox.put(pb.RecordStreamRequest(batch=batch, events=[event(identifier=f"b{batch}")]))
        response = next(responses)
        assert response.batch == batch
        (result,) = response.results
        assert result.id in _listed(stub)  # durable and visible once acknowledged
    outbox.put(None)
    assert list(responses) == []


def test_empty_batch_gets_an_empty_response(stub: pb_grpc.AuditServiceStub) -> None:
    (response,) = stub.RecordStream(iter([pb.RecordStreamRequest(batch=5)]), timeout=30)
    assert response.batch == 5
    assert list(response.results) == []


def test_invalid_event_fails_alone_with_its_error(stub: pb_grpc.AuditServiceStub) -> None:
    batch = pb.RecordStreamRequest(
        batch=1,
        events=[
            event(identifier="ok-1"),
            event(identifier=""),
            event(identifier="ok-2"),
            event(identifier="bad-status", status=pb.STATUS_SUCCESS, error="boom"),
            event(identifier="no-origin", origin=pb.ORIGIN_UNSPECIFIED),
        ],
    )
    (response,) = stub.RecordStream(iter([batch]), timeout=30)
    results = list(response.results)
    assert results[1].error == "INVALID_ARGUMENT: event.identifier: required"
    assert results[3].error.startswith("INVALID_ARGUMENT: event.error:")
    assert results[4].error.startswith("INVALID_ARGUMENT: event.origin:")
    for bad in (results[1], results[3], results[4]):
        assert bad.id == ""
        assert not bad.duplicate
    listed = _listed(stub)
    assert set(listed) == {results[0].id, results[2].id}
    assert [listed[results[i].id].identifier for i in (0, 2)] == ["ok-1", "ok-2"]
    assert results[0].error == results[2].error == ""


def test_duplicates_within_and_across_batches(stub: pb_grpc.AuditServiceStub) -> None:
    first = pb.RecordStreamRequest(
        batch=1,
        events=[
            event(idempotency_key="k1", identifier="first"),
            event(idempotency_key="k1", identifier="repeat-in-batch"),
            event(idempotency_key="k2", identifier="other"),
        ],
    )
    second = pb.RecordStreamRequest(
        batch=2,
        events=[
            event(idempotency_key="k2", identifier="repeat-across-batches"),
            event(idempotency_key="k3", identifier="new"),
        ],
    )
    r1, r2 = stub.RecordStream(iter([first, second]), timeout=30)
    a, a_again, b = r1.results
    b_again, c = r2.results
    assert (a.duplicate, a_again.duplicate, b.duplicate) == (False, True, False)
    assert a_again.id == a.id
    assert (b_again.duplicate, c.duplicate) == (True, False)
    assert b_again.id == b.id
    listed = _listed(stub)
    assert {e.identifier for e in listed.values()} == {"first", "other", "new"}
    assert len(listed) == 3


def test_stream_duplicate_of_a_unary_record(stub: pb_grpc.AuditServiceStub) -> None:
    first = record(stub, idempotency_key="delivery-9")
    batch = pb.RecordStreamRequest(batch=1, events=[event(idempotency_key="delivery-9")])
    (response,) = stub.RecordStream(iter([batch]), timeout=30)
    assert response.results[0].id == first.id
    assert response.results[0].duplicate
    assert list_ids(stub, pb.ListRequest()) == [first.id]


def test_event_over_one_mib_fails_alone_with_resource_exhausted(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    big = event(identifier="big", after={"blob": "x" * (MIB + 10)})
    assert big.ByteSize() > MIB
    batch = pb.RecordStreamRequest(
        batch=9, events=[event(identifier="small-1"), big, event(identifier="small-2")]
    )
    (response,) = stub.RecordStream(iter([batch]), timeout=30)
    ok1, too_big, ok2 = response.results
    assert too_big.error.startswith("RESOURCE_EXHAUSTED: ")
    assert too_big.id == ""
    assert set(_listed(stub)) == {ok1.id, ok2.id}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"\xff\xff\xff\xff", id="garbage"),
        pytest.param(b"\x32\x05ab", id="truncated-length"),  # identifier says 5 bytes, has 2
        pytest.param(b"\x32\x02\xc3\x28", id="invalid-utf8-string"),
        pytest.param(b"\x2a", id="dangling-tag"),
    ],
)
def test_malformed_event_bytes_fail_only_that_event(server: TestServer, bad: bytes) -> None:
    good_a = event(identifier="good-a").SerializeToString()
    good_b = event(identifier="good-b").SerializeToString()
    first, second = _send_raw(
        server,
        [
            _batch_bytes(1, [good_a, bad, good_b]),
            _batch_bytes(2, [event(identifier="next-batch").SerializeToString()]),
        ],
    )
    assert first.batch == 1
    a, broken, b = first.results
    assert broken.error.startswith("INVALID_ARGUMENT: ")
    assert "malformed" in broken.error
    assert broken.id == ""
    (after,) = second.results
    listed = _listed(server.stub)
    assert {listed[r.id].identifier for r in (a, b, after)} == {"good-a", "good-b", "next-batch"}
    assert len(listed) == 3


def test_malformed_batch_ends_the_stream_with_invalid_argument(server: TestServer) -> None:
    good = _batch_bytes(1, [event(identifier="kept").SerializeToString()])
    call = server.channel.stream_stream(
        STREAM_METHOD,
        request_serializer=None,
        response_deserializer=pb.RecordStreamResponse.FromString,
    )
    responses = iter(call(iter([good, b"\x12\xff\xff\xff"]), timeout=30))
    first = next(responses)
    assert first.batch == 1
    with pytest.raises(grpc.RpcError) as raised:
        next(responses)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [e.identifier for e in server.stub.List(pb.ListRequest()).events] == ["kept"]


def test_deeply_nested_event_in_a_batch_fails_alone(server: TestServer) -> None:
    # 200 levels of Struct nesting: past protobuf's own decode limit for the event.
    deep = event_bytes_with_before(200, identifier="deep")
    too_deep = event_bytes_with_before(33, identifier="too-deep")  # decodes; breaks the rule
    (response,) = _send_raw(
        server,
        [_batch_bytes(4, [deep, event(identifier="shallow").SerializeToString(), too_deep])],
    )
    broken, ok, rejected = response.results
    assert broken.error.startswith("INVALID_ARGUMENT: ")
    assert rejected.error.startswith("INVALID_ARGUMENT: event.before: ")
    assert ok.id
    assert not ok.error
    assert list_ids(server.stub, pb.ListRequest()) == [ok.id]

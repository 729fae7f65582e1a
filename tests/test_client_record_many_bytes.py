"""``record_many`` with events already serialized (AuditEvent wire bytes), alone and mixed with
messages and ``Event`` values: the same batches, requests, results and idempotency as the
message path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from clients import AsyncAuditClient, AuditClient, Event, InvalidEvent, TooLarge, pb
from clients._stream import MAX_EVENT_BYTES, Batch, RecordStreamState, request_bytes
from collectors.runtime.spool import Spool
from tests.collector_helpers import wait_until
from tests.helpers import TestServer
from tests.test_client_library import Recording, entity
from tests.test_collector_runtime import k8s_event, make_delivery, stored


def _batches(state: RecordStreamState) -> list[Batch]:
    batches = []
    while (batch := state.next_batch()) is not None:
        batches.append(batch)
    return batches


def _as_message(request: pb.RecordStreamRequest | bytes) -> pb.RecordStreamRequest:
    if isinstance(request, bytes):
        return pb.RecordStreamRequest.FromString(request)
    return request


def _events(count: int, **fields: Any) -> list[pb.AuditEvent]:
    return [
        entity(f"svc-{i}", after={"blob": "x" * (i * 37 % 900)}, **fields).to_pb()
        for i in range(count)
    ]


def test_request_bytes_are_the_message_paths_request() -> None:
    events = _events(3, idempotency_key="k")
    for number in (0, 1, 127, 128, 300, 2**40):
        message = pb.RecordStreamRequest(batch=number, events=events)
        built = request_bytes(number, [e.SerializeToString() for e in events])
        assert built == message.SerializeToString()
        assert pb.RecordStreamRequest.FromString(built) == message


def test_bytes_are_batched_at_the_same_limits_and_build_the_same_requests() -> None:
    events = _events(400)
    serialized = [e.SerializeToString() for e in events]
    mixed: list[Any] = [e if i % 3 else e.SerializeToString() for i, e in enumerate(events)]
    for options in ({"batch_size": 7}, {"max_batch_bytes": 20_000}, {}):
        from_messages = _batches(RecordStreamState(events, **options))
        for given in (serialized, mixed):
            from_bytes = _batches(RecordStreamState(given, **options))
            assert [b.positions for b in from_bytes] == [b.positions for b in from_messages]
            assert [b.number for b in from_bytes] == [b.number for b in from_messages]
            assert all(isinstance(b.request, bytes) for b in from_bytes)
            for sent, expected in zip(from_bytes, from_messages, strict=True):
                assert _as_message(sent.request) == expected.request
    assert len(_batches(RecordStreamState(events, max_batch_bytes=20_000))) > 1


def test_a_batch_of_messages_only_is_still_a_message() -> None:
    state = RecordStreamState([*_events(2), _events(1)[0].SerializeToString()], batch_size=2)
    first, second = _batches(state)
    assert isinstance(first.request, pb.RecordStreamRequest)
    assert isinstance(second.request, bytes)


def test_bytes_keep_the_resend_rule_of_their_idempotency_keys() -> None:
    keyed = [e.SerializeToString() for e in _events(3, idempotency_key="k")]
    state = RecordStreamState(keyed)
    _batches(state)
    assert state.safe_to_resend()
    state = RecordStreamState([*keyed, _events(1)[0].SerializeToString()])
    _batches(state)
    assert not state.safe_to_resend()


def test_malformed_and_oversized_bytes_are_refused_before_sending() -> None:
    good = _events(2)
    huge = entity("huge", after={"blob": "x" * MAX_EVENT_BYTES}).to_pb().SerializeToString()
    given: list[Any] = [good[0], b"\xff\xff\xff", huge, b"\x0a\x05ab", good[1].SerializeToString()]
    state = RecordStreamState(given)
    (batch,) = _batches(state)
    assert batch.positions == [0, 4]
    assert list(_as_message(batch.request).events) == good
    answer = [pb.RecordResult(id="first"), pb.RecordResult(id="last")]
    state.accept(pb.RecordStreamResponse(batch=0, results=answer))
    results = state.results()
    assert [r.id for r in results] == ["first", "", "", "", "last"]
    for index in (1, 3):
        error = results[index].error
        assert isinstance(error, InvalidEvent)
        assert error.field == "event"
        assert error.code is None
        assert "do not parse as an AuditEvent" in str(error)
    assert isinstance(results[2].error, TooLarge)


def test_record_many_stores_mixed_messages_and_bytes(server: TestServer) -> None:
    recording = Recording()
    keyed: list[Event] = [entity(f"svc-{i}", idempotency_key=f"k-{i}") for i in range(250)]
    given: list[Any] = []
    for i, event in enumerate(keyed):
        given.append([event, event.to_pb(), event.to_pb().SerializeToString()][i % 3])
    given[10] = b"not an event"
    given[11] = entity("").to_pb().SerializeToString()  # the service refuses it
    with AuditClient(server.endpoint, interceptors=[recording]) as client:
        results = client.record_many(given, batch_size=100)
        assert len(results) == 250
        failed = {i: r.error for i, r in enumerate(results) if not r.ok}
        assert set(failed) == {10, 11}
        assert isinstance(failed[10], InvalidEvent)
        assert failed[10].field == "event"
        assert isinstance(failed[11], InvalidEvent)
        assert failed[11].field == "event.identifier"
        sent = [_as_message(r) for r in recording.requests]
        assert sum(len(r.events) for r in sent) == 249  # #10 never left
        assert [r.batch for r in sent] == [0, 1, 2]

        stored = {e.identifier: e.id for e in client.list(limit=1000)}
        assert len(stored) == 248
        assert stored["svc-42"] == results[42].id

        again = client.record_many(e.to_pb().SerializeToString() for e in keyed[:10])
        assert [r.id for r in again] == [r.id for r in results[:10]]
        assert all(r.duplicate for r in again)


def test_async_record_many_takes_bytes_the_same_way(server: TestServer) -> None:
    async def scenario() -> list[Any]:
        async with AsyncAuditClient(server.endpoint) as client:
            return await client.record_many(
                [entity(f"a-{i}").to_pb().SerializeToString() for i in range(60)]
                + [b"\xff", entity("a-last")],
                batch_size=25,
            )

    results = asyncio.run(scenario())
    assert all(r.ok for r in results[:60])
    assert isinstance(results[60].error, InvalidEvent)
    assert results[61].ok
    with AuditClient(server.endpoint) as client:
        assert len(list(client.list(limit=1000))) == 61


def test_delivery_sends_the_spooled_bytes_and_dead_letters_a_corrupt_row(
    server: TestServer, tmp_path: Path
) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        spool.add([k8s_event(1), k8s_event(2)])
        with spool.transaction() as tx:
            tx.add_serialized("k8s:corrupt", b"\xff\xff\xff")
        spool.add([k8s_event(3)])
        delivery, stats = make_delivery(spool, server.endpoint)
        delivery.start()
        try:
            wait_until(lambda: spool.pending == 0)
        finally:
            delivery.stop(drain_seconds=5)
        assert stats.get("delivered") == 3
        [dead] = spool.dead_letters()
        assert dead.key == "k8s:corrupt"
        assert "do not parse as an AuditEvent" in dead.reason
    keys = {e.idempotency_key for e in stored(server)}
    assert keys == {"k8s:test-1", "k8s:test-2", "k8s:test-3"}

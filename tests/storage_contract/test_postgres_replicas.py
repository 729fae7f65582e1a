"""Several audit-service processes on one PostgreSQL database, as behind a load balancer:
any replica records and lists the same events, page tokens travel between them, repeated
idempotency keys are stored once, a SIGKILLed replica loses nothing it acknowledged, and
only one replica sweeps at a time."""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from audit_service.storage.postgres import PostgresStorage
from audit_service.storage.postgres_schema import SWEEP_LOCK
from clients import pb, pb_grpc
from tests.helpers import ServerProcess, event, list_all, spawn_server
from tests.storage_contract.test_storage_contract import DAY, NOW, new_event

pytestmark = pytest.mark.slow

STREAMS_PER_REPLICA = 2
BATCHES = 8
SHARED_KEYS_PER_BATCH = 25
OWN_EVENTS_PER_BATCH = 25


def _spawn(url: str, *extra: str) -> ServerProcess:
    return spawn_server("--dev", "--listen", "127.0.0.1:0", "--db", url, *extra)


@pytest.fixture
def two_replicas(pg_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # Sweeps every 0.6 s on both while the tests run.
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: _spawn(pg_url, "--retention-interval-minutes", "0.01"), "ab")
    try:
        yield a, b
    finally:
        for replica in (a, b):
            if replica.process.stdout is not None and not replica.process.stdout.closed:
                replica.stop()


def _ids(endpoint: str, request: pb.ListRequest | None = None) -> list[str]:
    with grpc.insecure_channel(endpoint) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        return [e.id for e in list_all(stub, request or pb.ListRequest(page_size=1000))]


def _stream(endpoint: str, stream: str) -> list[tuple[str, str, bool]]:
    "Send BATCHES batches; return (key or own name, id, duplicate) for every event."
    sent: list[list[str]] = []

    def batches() -> Iterator[pb.RecordStreamRequest]:
        for n in range(BATCHES):
            shared = [f"shared-{n}-{i}" for i in range(SHARED_KEYS_PER_BATCH)]
            own = [f"{stream}-{n}-{i}" for i in range(OWN_EVENTS_PER_BATCH)]
            sent.append(shared + own)
            yield pb.RecordStreamRequest(
                batch=n,
                events=[event(identifier=k, idempotency_key=k) for k in shared]
                + [event(identifier=name) for name in own],
            )

    results: list[tuple[str, str, bool]] = []
    with grpc.insecure_channel(endpoint) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        for response in stub.RecordStream(batches(), timeout=60):
            names = sent[response.batch]
            assert all(not r.error for r in response.results)
            results += [
                (n, r.id, r.duplicate) for n, r in zip(names, response.results, strict=True)
            ]
    return results


def test_concurrent_streams_into_two_replicas(
    two_replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_replicas
    targets = [a.endpoint, b.endpoint] * STREAMS_PER_REPLICA
    with ThreadPoolExecutor(len(targets)) as pool:
        streams = pool.map(_stream, targets, [f"s{i}" for i in range(len(targets))])
        results = [r for stream in streams for r in stream]

    by_name: dict[str, set[str]] = {}
    stored_by: dict[str, int] = {}
    for name, event_id, duplicate in results:
        by_name.setdefault(name, set()).add(event_id)
        stored_by[name] = stored_by.get(name, 0) + (not duplicate)
    shared = [n for n in by_name if n.startswith("shared-")]
    assert len(shared) == BATCHES * SHARED_KEYS_PER_BATCH
    # Every sender of a key, on either replica, got the first event's id; one stored it.
    assert all(len(by_name[n]) == 1 for n in shared)
    assert all(stored_by[n] == 1 for n in shared)
    acknowledged = {i for ids in by_name.values() for i in ids}
    expected = BATCHES * (SHARED_KEYS_PER_BATCH + OWN_EVENTS_PER_BATCH * len(targets))
    assert len(acknowledged) == expected

    # Every acknowledged event is visible through List on either replica, once.
    for endpoint in (a.endpoint, b.endpoint):
        listed = _ids(endpoint)
        assert len(listed) == len(set(listed)) == expected
        assert set(listed) == acknowledged

    # Page tokens from one replica work on the other: alternate replicas page by page.
    request = pb.ListRequest(page_size=97, order_by="identifier asc")
    whole = _ids(a.endpoint, pb.ListRequest(page_size=1000, order_by="identifier asc"))
    walked: list[str] = []
    channels = [grpc.insecure_channel(e) for e in (a.endpoint, b.endpoint)]
    try:
        stubs = [pb_grpc.AuditServiceStub(c) for c in channels]
        for turn in range(1000):
            response = stubs[turn % 2].List(request)
            walked += [e.id for e in response.events]
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
    finally:
        for channel in channels:
            channel.close()
    assert walked == whole


def test_sigkill_of_one_replica_mid_stream_loses_no_acknowledged_event(
    two_replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    victim, survivor = two_replicas
    acked: set[str] = set()
    stop = threading.Event()

    def batches() -> Iterator[pb.RecordStreamRequest]:
        for n in range(10_000):
            if stop.is_set():
                return
            yield pb.RecordStreamRequest(
                batch=n,
                events=[
                    event(identifier=f"k-{n}-{i}", idempotency_key=f"k-{n}-{i}") for i in range(50)
                ],
            )

    channel, stub = victim.stub()
    ended_with = grpc.StatusCode.OK
    try:
        responses = stub.RecordStream(batches())
        try:
            for response in responses:
                acked.update(r.id for r in response.results)
                if response.batch == 10:
                    victim.process.send_signal(signal.SIGKILL)  # batches still on the wire
        except grpc.RpcError as exc:
            ended_with = exc.code()
        stop.set()
    finally:
        channel.close()
        code, _ = victim.finish(timeout=10)
    assert code == -signal.SIGKILL
    assert ended_with == grpc.StatusCode.UNAVAILABLE
    assert len(acked) >= 11 * 50
    listed = set(_ids(survivor.endpoint))
    assert acked <= listed, f"{len(acked - listed)} acknowledged events are missing"


def _ts(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def _follow(replica: ServerProcess) -> tuple[list[str], threading.Thread]:
    "Collect the replica's output lines as they come (its log goes there too)."
    lines: list[str] = []
    stdout = replica.process.stdout
    assert stdout is not None

    def pump() -> None:
        lines.extend(stdout)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return lines, reader


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _has_line(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)


SKIPPED = "retention sweep skipped: another process sharing the database is sweeping"


def test_every_replica_schedules_sweeps_but_one_sweeps_at_a_time(pg_url: str) -> None:
    # Events already past retention, written straight to storage (Record would refuse them).
    storage = PostgresStorage(pg_url)
    try:
        storage.insert_batch(
            [new_event(identifier=f"old-{i}", occurred_at=NOW - 200 * DAY) for i in range(5)]
            + [new_event(identifier="recent", occurred_at=NOW - DAY)]
        )
    finally:
        storage.close()
    holder = psycopg.connect(pg_url, autocommit=True)  # a sweep in progress, as far as they know
    holder.execute("SELECT pg_advisory_lock(%s)", [SWEEP_LOCK])
    replicas: list[ServerProcess] = []
    followed: list[tuple[list[str], threading.Thread]] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            replicas = list(
                pool.map(lambda _: _spawn(pg_url, "--retention-interval-minutes", "0.005"), "ab")
            )
        followed = [_follow(replica) for replica in replicas]
        for lines, _ in followed:
            _wait_for(
                functools.partial(_has_line, lines, SKIPPED), "a replica did not try to sweep"
            )
        assert len(_ids(replicas[0].endpoint)) == 6, "no replica swept while the lock was held"
        holder.execute("SELECT pg_advisory_unlock(%s)", [SWEEP_LOCK])
        _wait_for(
            lambda: len(_ids(replicas[1].endpoint)) == 1, "no replica swept once the lock was free"
        )
        time.sleep(1)  # more sweeps on both: they find nothing left
    finally:
        holder.close()
        for replica in replicas:
            replica.process.terminate()
        for replica, (_, reader) in zip(replicas, followed, strict=False):
            replica.process.wait(30)
            reader.join(10)
            assert replica.process.stdout is not None
            replica.process.stdout.close()
    removed = [line for lines, _ in followed for line in lines if "removed 5 events" in line]
    assert len(removed) == 1, "the expired events were swept by exactly one replica"

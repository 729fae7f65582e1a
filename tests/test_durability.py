"""Crash and shutdown: an acknowledged event is never lost."""

from __future__ import annotations

import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc

from clients import pb, pb_grpc
from tests.helpers import event, list_all, spawn_server

BATCH = 200


def _batches(stop: threading.Event, limit: int) -> Iterator[pb.RecordStreamRequest]:
    for n in range(limit):
        if stop.is_set():
            return
        yield pb.RecordStreamRequest(
            batch=n,
            events=[
                event(identifier=f"svc-{n}-{i}", idempotency_key=f"k-{n}-{i}") for i in range(BATCH)
            ],
        )


def _all_ids(endpoint: str) -> set[str]:
    with grpc.insecure_channel(endpoint) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        return {e.id for e in list_all(stub, pb.ListRequest(page_size=1000))}


def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    server = spawn_server("--dev", "--listen", "127.0.0.1:0", "--db", str(db))
    channel, stub = server.stub()
    acked: set[str] = set()
    stop = threading.Event()
    responses = stub.RecordStream(_batches(stop, limit=500))
    try:
        for response in responses:
            assert all(not r.error for r in response.results)
            acked.update(r.id for r in response.results)
            if response.batch == 5:
                # More batches are on the wire and in the writer's queue right now.
                server.process.send_signal(signal.SIGKILL)
                break
        for response in responses:  # whatever else was acknowledged before the kill landed
            acked.update(r.id for r in response.results)
    except grpc.RpcError as exc:
        ended_with = exc.code()
    else:
        ended_with = grpc.StatusCode.OK
    finally:
        stop.set()
        code, _ = server.finish(timeout=10)
        channel.close()
    assert code == -signal.SIGKILL
    assert ended_with in (
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    )
    assert len(acked) >= 6 * BATCH

    restarted = spawn_server("--dev", "--listen", "127.0.0.1:0", "--db", str(db))
    try:
        stored = _all_ids(restarted.endpoint)
    finally:
        restarted.stop()
    assert acked <= stored, f"{len(acked - stored)} acknowledged events are missing"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_sigterm_commits_in_flight_batches_and_exits_zero(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    server = spawn_server(
        "--dev", "--listen", "127.0.0.1:0", "--db", str(db), "--grace-seconds", "1"
    )
    channel, stub = server.stub()
    acked: set[str] = set()
    stop = threading.Event()
    try:
        for response in stub.RecordStream(_batches(stop, limit=500)):
            acked.update(r.id for r in response.results)
            if response.batch == 3:
                server.process.send_signal(signal.SIGTERM)
    except grpc.RpcError as exc:
        ended_with = exc.code()  # the shutdown ends the stream once the grace period is over
    else:
        ended_with = grpc.StatusCode.OK
    finally:
        stop.set()
        channel.close()
    assert ended_with in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    code, log = server.finish(timeout=30)
    assert code == 0, log
    assert "received SIGTERM" in log

    restarted = spawn_server("--dev", "--listen", "127.0.0.1:0", "--db", str(db))
    try:
        stored = _all_ids(restarted.endpoint)
    finally:
        restarted.stop()
    assert len(acked) >= 4 * BATCH
    assert acked <= stored

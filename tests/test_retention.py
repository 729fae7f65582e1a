"""Retention: 90 days by default, 30 for sign-ins, per-type overrides, swept on a schedule."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from audit_service.models import ResourceType
from audit_service.retention import (
    DAY_NS,
    JOB_ID,
    RetentionConfigError,
    RetentionPolicy,
    sweep,
)
from audit_service.storage import SQLiteStorage
from clients import pb
from tests.helpers import TestServer, event, list_all, start_server

NOW = time.time_ns()


def _at(days_ago: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(NOW - int(days_ago * DAY_NS))
    return ts


def _record(server: TestServer, resource: int, days_ago: float, identifier: str) -> str:
    extra = {"blueprint": "service"} if resource == pb.RESOURCE_TYPE_ENTITY else {"blueprint": ""}
    response = server.stub.Record(
        pb.RecordRequest(
            event=event(
                resource=resource,
                identifier=identifier,
                occurred_at=_at(days_ago),
                status=pb.STATUS_FAILURE,
                error=f"failed {identifier}",
                context={"age": str(days_ago)},
                after={"n": 1},
                **extra,
            )
        )
    )
    return str(response.id)


def _identifiers(server: TestServer) -> set[str]:
    return {e.identifier for e in list_all(server.stub, pb.ListRequest(page_size=1000))}


def test_defaults_are_90_days_and_30_for_sign_ins() -> None:
    policy = RetentionPolicy()
    assert policy.days_for(ResourceType.ENTITY) == 90
    assert policy.days_for(ResourceType.SECRET) == 90
    assert policy.days_for(ResourceType.SIGN_IN) == 30


def test_sweep_boundaries_with_an_injected_clock(server: TestServer) -> None:
    _record(server, pb.RESOURCE_TYPE_ENTITY, 89, "entity-89d")
    _record(server, pb.RESOURCE_TYPE_ENTITY, 60, "entity-60d")
    _record(server, pb.RESOURCE_TYPE_SIGN_IN, 29, "sign-in-29d")
    _record(server, pb.RESOURCE_TYPE_SIGN_IN, 10, "sign-in-10d")
    writer, policy = server.service.writer, RetentionPolicy()

    assert sweep(writer.storage, policy, NOW) == {}
    assert len(_identifiers(server)) == 4
    # Two days later: the 89-day entity is 91 days old, the 29-day sign-in 31 days old.
    removed = sweep(writer.storage, policy, NOW + 2 * DAY_NS)
    assert removed == {ResourceType.ENTITY: 1, ResourceType.SIGN_IN: 1}
    assert _identifiers(server) == {"entity-60d", "sign-in-10d"}
    # Everything stored beside the deleted events went with them.
    storage = server.service.storage
    assert isinstance(storage, SQLiteStorage)
    conn = storage._writer
    assert conn.execute("SELECT count(*) FROM snapshots").fetchone() == (2,)
    assert conn.execute("SELECT count(*) FROM event_context").fetchone() == (2,)
    hits = server.stub.List(
        pb.ListRequest(
            filters=[pb.Filter(field="error", op=pb.FILTER_OP_CONTAINS, values=["entity-89d"])]
        )
    )
    assert list(hits.events) == []
    conn.execute("INSERT INTO error_fts(error_fts) VALUES ('integrity-check')")


def test_sweep_deletes_in_bounded_batches(server: TestServer) -> None:
    batch = pb.RecordStreamRequest(
        batch=1,
        events=[
            event(identifier=f"old-{i}", occurred_at=_at(80), context={"i": str(i)})
            for i in range(250)
        ],
    )
    list(server.stub.RecordStream(iter([batch])))
    groups_before = server.service.writer.groups_committed
    removed = sweep(
        server.service.writer.storage, RetentionPolicy(), NOW + 11 * DAY_NS, batch_size=100
    )
    assert removed == {ResourceType.ENTITY: 250}
    assert server.service.writer.groups_committed == groups_before  # deletes are no groups
    assert _identifiers(server) == set()


def test_per_type_overrides(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "a.db",
        retention_days=10,
        retention_overrides="sign_in=2,RESOURCE_TYPE_SECRET=365",
    )
    try:
        _record(server, pb.RESOURCE_TYPE_ENTITY, 9, "entity-9d")
        _record(server, pb.RESOURCE_TYPE_SIGN_IN, 1, "sign-in-1d")
        _record(server, pb.RESOURCE_TYPE_SECRET, 300, "secret-300d")
        removed = sweep(
            server.service.writer.storage, server.service.retention.policy, NOW + 2 * DAY_NS
        )
        assert removed == {ResourceType.ENTITY: 1, ResourceType.SIGN_IN: 1}
        assert _identifiers(server) == {"secret-300d"}
    finally:
        server.close()


@pytest.mark.parametrize(
    ("resource", "days_ago"),
    [(pb.RESOURCE_TYPE_ENTITY, 91), (pb.RESOURCE_TYPE_SIGN_IN, 31), (pb.RESOURCE_TYPE_RUN, 365)],
)
def test_an_event_already_past_retention_is_invalid(
    server: TestServer, resource: int, days_ago: int
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _record(server, resource, days_ago, "too-old")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.occurred_at" in str(caught.value.details())
    assert "retention" in str(caught.value.details())


def test_scheduled_job_is_registered_and_sweeps_at_start(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    first = start_server(db, retention_days=365)
    _record(first, pb.RESOURCE_TYPE_ENTITY, 200, "entity-200d")
    _record(first, pb.RESOURCE_TYPE_ENTITY, 5, "entity-5d")
    first.close()

    second = start_server(db, retention_days=90, retention_interval_minutes=30)
    try:
        job = second.service.retention.scheduler.get_job(JOB_ID)
        assert job is not None
        assert job.trigger.interval.total_seconds() == 30 * 60
        deadline = time.monotonic() + 10
        while second.service.retention.sweeps < 1:
            assert time.monotonic() < deadline, "the start-up sweep did not run"
            time.sleep(0.05)
        assert _identifiers(second) == {"entity-5d"}
    finally:
        second.close()


@pytest.mark.parametrize(
    ("days", "overrides", "problem"),
    [
        (0, "", "at least 1"),
        (90, "SIGN_IN", "TYPE=DAYS"),
        (90, "LOGIN=3", "unknown type"),
        (90, "SIGN_IN=soon", "not a number"),
        (90, "SIGN_IN=0", "at least 1"),
    ],
)
def test_bad_retention_settings_are_named(days: int, overrides: str, problem: str) -> None:
    with pytest.raises(RetentionConfigError, match=problem):
        RetentionPolicy.from_settings(days, overrides)

"""Record: ids, times, idempotency, the rules an event must meet, and what is stored."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from clients import pb, pb_grpc
from tests.helpers import event, list_ids, record

MINUTE_NS = 60 * 1_000_000_000


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _only_event(stub: pb_grpc.AuditServiceStub) -> pb.AuditEvent:
    response = stub.List(pb.ListRequest(include_snapshots=True))
    assert len(response.events) == 1
    return response.events[0]


def test_ids_are_uuid7_unique_and_increasing(stub: pb_grpc.AuditServiceStub) -> None:
    ids = [record(stub, identifier=f"svc-{i}").id for i in range(20)]
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == event_id  # canonical lowercase form
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # Time-ordered: the 48-bit millisecond prefix is about now.
    millis = uuid.UUID(ids[-1]).int >> 80
    assert abs(millis - time.time_ns() // 1_000_000) < 60_000


def test_ids_within_one_group_commit_still_increase(stub: pb_grpc.AuditServiceStub) -> None:
    batch = pb.RecordStreamRequest(batch=1, events=[event(identifier=f"e{i}") for i in range(200)])
    (response,) = stub.RecordStream(iter([batch]))
    ids = [r.id for r in response.results]
    assert ids == sorted(ids)
    assert len(set(ids)) == 200
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_recorded_at_is_the_store_time_and_listed(stub: pb_grpc.AuditServiceStub) -> None:
    start = time.time_ns()
    response = record(stub)
    end = time.time_ns()
    recorded_at = _ns(response.recorded_at)
    assert start <= recorded_at <= end
    assert _ns(_only_event(stub).recorded_at) == recorded_at


def test_occurred_at_defaults_to_receipt_time(stub: pb_grpc.AuditServiceStub) -> None:
    start = time.time_ns()
    record(stub)
    end = time.time_ns()
    assert start <= _ns(_only_event(stub).occurred_at) <= end


def test_occurred_at_is_kept_to_the_nanosecond(stub: pb_grpc.AuditServiceStub) -> None:
    when = time.time_ns() - 3 * MINUTE_NS + 123_456_789 - time.time_ns() % 1_000_000_000
    record(stub, occurred_at=_ts(when))
    assert _ns(_only_event(stub).occurred_at) == when


def test_occurred_at_up_to_five_minutes_ahead_is_accepted(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    record(stub, occurred_at=_ts(time.time_ns() + 4 * MINUTE_NS))
    assert len(stub.List(pb.ListRequest()).events) == 1


@pytest.mark.parametrize("ahead_ns", [5 * MINUTE_NS + 30_000_000_000, 24 * 60 * MINUTE_NS])
def test_occurred_at_more_than_five_minutes_ahead_is_invalid(
    stub: pb_grpc.AuditServiceStub, ahead_ns: int
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        record(stub, occurred_at=_ts(time.time_ns() + ahead_ns))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.occurred_at" in (raised.value.details() or "")
    assert list(stub.List(pb.ListRequest()).events) == []


def test_idempotency_key_repeat_returns_first_id_and_stores_nothing(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    first = record(stub, idempotency_key="delivery-1", identifier="first")
    again = record(stub, idempotency_key="delivery-1", identifier="second")
    assert not first.duplicate
    assert again.duplicate
    assert again.id == first.id
    assert again.recorded_at == first.recorded_at
    listed = _only_event(stub)
    assert listed.id == first.id
    assert listed.identifier == "first"
    assert listed.idempotency_key == "delivery-1"


def test_different_idempotency_keys_and_no_key_are_separate_events(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    a = record(stub, idempotency_key="k-a")
    b = record(stub, idempotency_key="k-b")
    c = record(stub)
    d = record(stub)
    assert len({a.id, b.id, c.id, d.id}) == 4
    assert not any(r.duplicate for r in (a, b, c, d))
    assert sorted(list_ids(stub, pb.ListRequest())) == sorted([a.id, b.id, c.id, d.id])


def test_status_unspecified_is_stored_as_success(stub: pb_grpc.AuditServiceStub) -> None:
    record(stub, status=pb.STATUS_UNSPECIFIED)
    assert _only_event(stub).status == pb.STATUS_SUCCESS


def test_failure_keeps_its_error(stub: pb_grpc.AuditServiceStub) -> None:
    record(stub, status=pb.STATUS_FAILURE, error="quota exceeded")
    listed = _only_event(stub)
    assert listed.status == pb.STATUS_FAILURE
    assert listed.error == "quota exceeded"


def test_failure_without_error_is_accepted(stub: pb_grpc.AuditServiceStub) -> None:
    record(stub, status=pb.STATUS_FAILURE)
    assert _only_event(stub).status == pb.STATUS_FAILURE


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param(
            {"status": pb.STATUS_SUCCESS, "error": "boom"}, "event.error", id="error-on-success"
        ),
        pytest.param(
            {"status": pb.STATUS_UNSPECIFIED, "error": "boom"},
            "event.error",
            id="error-on-unspecified-status",
        ),
        pytest.param({"blueprint": ""}, "event.blueprint", id="entity-without-blueprint"),
        pytest.param({"identifier": ""}, "event.identifier", id="no-identifier"),
        pytest.param(
            {"resource": pb.RESOURCE_TYPE_UNSPECIFIED}, "event.resource", id="resource-unspecified"
        ),
        pytest.param(
            {"operation": pb.OPERATION_UNSPECIFIED}, "event.operation", id="operation-unspecified"
        ),
        pytest.param({"origin": pb.ORIGIN_UNSPECIFIED}, "event.origin", id="origin-unspecified"),
        pytest.param({"resource": 99}, "event.resource", id="resource-unknown-number"),
        pytest.param({"operation": 42}, "event.operation", id="operation-unknown-number"),
        pytest.param({"origin": 1000}, "event.origin", id="origin-unknown-number"),
        pytest.param({"status": 7}, "event.status", id="status-unknown-number"),
        pytest.param(
            {"source": pb.Source(kind=77, id="u-1")},  # type: ignore[arg-type]
            "event.source.kind",
            id="source-kind-unknown-number",
        ),
        pytest.param(
            {"occurred_at": timestamp_pb2.Timestamp(seconds=1, nanos=-5)},
            "event.occurred_at",
            id="negative-nanos",
        ),
    ],
)
def test_invalid_event_is_rejected_and_nothing_stored(
    stub: pb_grpc.AuditServiceStub, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        record(stub, **overrides)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(field + ":")
    assert list(stub.List(pb.ListRequest()).events) == []


def test_record_without_event_is_invalid(stub: pb_grpc.AuditServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Record(pb.RecordRequest())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event" in (raised.value.details() or "")


@pytest.mark.parametrize(
    "resource",
    [
        pb.RESOURCE_TYPE_BLUEPRINT,
        pb.RESOURCE_TYPE_ACTION,
        pb.RESOURCE_TYPE_AUTOMATION,
        pb.RESOURCE_TYPE_SCORECARD,
        pb.RESOURCE_TYPE_RUN,
        pb.RESOURCE_TYPE_INTEGRATION,
        pb.RESOURCE_TYPE_SECRET,
        pb.RESOURCE_TYPE_SIGN_IN,
    ],
)
def test_blueprint_is_optional_for_other_resources(
    stub: pb_grpc.AuditServiceStub, resource: pb.ResourceType.ValueType
) -> None:
    record(stub, resource=resource, blueprint="")
    listed = _only_event(stub)
    assert listed.resource == resource
    assert listed.blueprint == ""


@pytest.mark.parametrize("origin", [o for o in pb.Origin.values() if o != pb.ORIGIN_UNSPECIFIED])
def test_every_origin_is_accepted_and_round_trips(
    stub: pb_grpc.AuditServiceStub, origin: pb.Origin.ValueType
) -> None:
    record(stub, origin=origin)
    assert _only_event(stub).origin == origin


def test_recorded_by_is_the_principal_not_what_the_client_claims(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    response = record(
        stub,
        recorded_by="mallory",
        id="0190f0f0-0000-7000-8000-000000000000",
        recorded_at=timestamp_pb2.Timestamp(seconds=1),
        diff_available=True,
    )
    listed = _only_event(stub)
    assert listed.recorded_by == "dev"
    assert listed.id == response.id
    assert listed.id != "0190f0f0-0000-7000-8000-000000000000"
    assert listed.recorded_at == response.recorded_at
    assert not listed.diff_available  # no snapshots


def test_every_field_round_trips(stub: pb_grpc.AuditServiceStub) -> None:
    when = _ts(time.time_ns() - MINUTE_NS)
    sent = event(
        idempotency_key="sha-1:path",
        occurred_at=when,
        resource=pb.RESOURCE_TYPE_ENTITY,
        identifier="checkout ÄÖÜ 😀",
        blueprint="service",
        integration="k8s-prod",
        run_id="r_123",
        operation=pb.OPERATION_DELETE,
        source=pb.Source(kind=pb.SOURCE_KIND_INTEGRATION, id="int-9", name="K8s exporter"),
        origin=pb.ORIGIN_K8S_EXPORTER,
        status=pb.STATUS_FAILURE,
        error="admission webhook denied",
        before={"replicas": 3, "labels": {"team": "pay"}, "ports": [80, 443], "on": True},
        context={"cluster": "prod-eu", "namespace": "shop"},
    )
    response = stub.Record(pb.RecordRequest(event=sent))
    listed = _only_event(stub)
    expected = pb.AuditEvent()
    expected.CopyFrom(sent)
    expected.id = response.id
    expected.recorded_at.CopyFrom(response.recorded_at)
    expected.recorded_by = "dev"
    expected.diff_available = True
    assert listed == expected


def test_list_leaves_snapshots_out_unless_asked(stub: pb_grpc.AuditServiceStub) -> None:
    record(stub, before={"a": 1}, after={"a": 2})
    plain = stub.List(pb.ListRequest()).events[0]
    assert not plain.HasField("before")
    assert not plain.HasField("after")
    assert plain.diff_available
    full = stub.List(pb.ListRequest(include_snapshots=True)).events[0]
    assert dict(full.before) == {"a": 1}
    assert dict(full.after) == {"a": 2}


@pytest.mark.parametrize(
    ("overrides", "available"),
    [
        pytest.param({"before": {"a": 1}, "after": {"a": 2}}, True, id="update-both"),
        pytest.param(
            {"operation": pb.OPERATION_CREATE, "after": {"a": 1}}, True, id="create-after-only"
        ),
        pytest.param(
            {"operation": pb.OPERATION_DELETE, "before": {"a": 1}}, True, id="delete-before-only"
        ),
        pytest.param({}, False, id="no-snapshots"),
        pytest.param(
            {"operation": pb.OPERATION_READ, "before": {"a": 1}, "after": {"a": 2}},
            False,
            id="read-with-snapshots",
        ),
        pytest.param(
            {"resource": pb.RESOURCE_TYPE_SIGN_IN, "operation": pb.OPERATION_READ},
            False,
            id="sign-in",
        ),
    ],
)
def test_diff_available_says_what_get_diff_would(
    stub: pb_grpc.AuditServiceStub, overrides: dict[str, Any], available: bool
) -> None:
    response = record(stub, **overrides)
    assert _only_event(stub).diff_available is available
    assert stub.GetDiff(pb.GetDiffRequest(id=response.id)).available is available

"""The client library against the real service: values in and out, batching, paging, errors,
tokens, TLS, retries, and the asyncio twin."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients import (
    TLS,
    AsyncAuditClient,
    AuditClient,
    AuditClientError,
    DeadlineExceeded,
    Event,
    Filter,
    InsecureTokenWarning,
    InvalidArgument,
    InvalidEvent,
    NotFound,
    PermissionDenied,
    RecordResult,
    RetryPolicy,
    ServiceError,
    Source,
    TooLarge,
    Unauthenticated,
    Unavailable,
    enum_names,
    pb,
)
from clients._channel import is_loopback
from clients._errors import error_from_result, error_from_status
from tests.auditctl_helpers import free_port
from tests.helpers import TestServer, Token, start_server, write_tokens_file
from tests.tls_certs import make_pki

# Recent enough to be inside the service's retention period, at a fixed time of day.
YESTERDAY_NOON = (datetime.now(UTC) - timedelta(days=1)).replace(
    hour=12, minute=0, second=0, microsecond=0
)
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02, deadline=5)


def entity(identifier: str = "payments-api", **fields: Any) -> Event:
    values: dict[str, Any] = {
        "resource": "entity",
        "identifier": identifier,
        "blueprint": "service",
        "operation": "update",
        "origin": "ui",
        "source": Source(kind="user", id="u-1", name="alice@example.com"),
    }
    values.update(fields)
    return Event(**values)


@pytest.fixture
def client(server: TestServer) -> Iterator[AuditClient]:
    with AuditClient(server.endpoint) as audit:
        yield audit


class Recording(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    "Notes every call and every RecordStream request that goes out (a tracing seam)."

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.requests: list[pb.RecordStreamRequest] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append((details.method, dict(details.metadata or ())))
        return continuation(details, request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.calls.append((details.method, dict(details.metadata or ())))

        def noted() -> Iterator[Any]:
            for request in requests:
                self.requests.append(request)
                yield request

        return continuation(details, noted())


# -- plain values in and out --------------------------------------------------------------


def test_record_then_list_gives_back_plain_values(client: AuditClient) -> None:
    occurred = YESTERDAY_NOON.replace(microsecond=123456).astimezone(timezone(timedelta(hours=2)))
    result = client.record(
        entity(
            occurred_at=occurred,
            before={"replicas": 2, "tags": ["a"]},
            after={"replicas": 3, "tags": ["a", "b"], "owner": None},
            context={"cluster": "prod"},
            idempotency_key="change-1",
        )
    )
    assert result.ok
    assert result.id
    assert not result.duplicate
    assert result.recorded_at is not None
    assert result.recorded_at.tzinfo is not None

    (event,) = client.list(include_snapshots=True)
    assert event.id == result.id
    assert event.occurred_at == occurred  # the same instant, as an aware UTC datetime
    assert event.occurred_at.tzinfo == UTC
    assert (event.resource, event.operation, event.origin) == ("ENTITY", "UPDATE", "UI")
    assert event.source == Source(kind="USER", id="u-1", name="alice@example.com")
    assert event.status == "SUCCESS"
    assert event.before == {"replicas": 2, "tags": ["a"]}  # whole numbers stay ints
    assert event.after == {"replicas": 3, "tags": ["a", "b"], "owner": None}
    assert event.context == {"cluster": "prod"}
    assert event.recorded_by == "dev"
    assert event.diff_available

    diff = client.get_diff(result.id)
    assert diff.available
    assert diff.before["replicas"] == 2
    assert {"op": "replace", "path": "/replicas", "value": 3} in diff.patch

    again = client.record(entity(idempotency_key="change-1"))
    assert again.duplicate
    assert again.id == result.id


def test_enums_by_short_or_full_name_in_any_case(client: AuditClient) -> None:
    for name in ("entity", "ENTITY", "RESOURCE_TYPE_ENTITY", "Entity"):
        assert entity(resource=name).resource == "ENTITY"
    assert Event(resource="sign-in", identifier="x", operation="read", origin="ui").resource == (
        "SIGN_IN"
    )
    assert "K8S_EXPORTER" in enum_names("origin")
    with pytest.raises(InvalidEvent) as caught:
        entity(origin="k8s")
    assert caught.value.field == "event.origin"
    assert caught.value.code is None  # found here, nothing was sent
    assert "k8s_exporter" in caught.value.problem
    # The protobuf types are there for those who want them, and accepted as they are.
    message = entity().to_pb()
    assert message.resource == pb.RESOURCE_TYPE_ENTITY
    assert client.record(message).ok


def test_dicts_are_accepted_as_events(client: AuditClient) -> None:
    result = client.record(
        {
            "resource": "run",
            "identifier": "deploy-7",
            "operation": "create",
            "origin": "gh_action",
            "occurred_at": YESTERDAY_NOON.isoformat(),
            "source": {"kind": "integration", "id": "gh"},
        }
    )
    (event,) = client.list(("resource", "=", "run"))
    assert event.id == result.id
    assert event.occurred_at == YESTERDAY_NOON
    with pytest.raises(InvalidEvent) as caught:
        client.record({"resource": "run", "identifier": "x", "operation": "create", "colour": 1})
    assert caught.value.field == "event.colour"


def test_a_time_without_a_timezone_is_refused() -> None:
    with pytest.raises(InvalidEvent) as caught:
        entity(occurred_at=datetime(2026, 1, 10, 12))
    assert caught.value.field == "event.occurred_at"
    assert "timezone" in caught.value.problem


def test_the_service_rules_come_back_as_invalid_event_naming_the_field(
    client: AuditClient,
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        client.record(entity(identifier=""))
    assert caught.value.field == "event.identifier"
    assert caught.value.problem == "required"
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidEvent) as caught:
        client.record(entity(blueprint=""))
    assert caught.value.field == "event.blueprint"
    with pytest.raises(TooLarge):
        client.record(entity(after={"blob": "x" * (1024 * 1024)}))


# -- record_many ----------------------------------------------------------------------------


def test_record_many_batches_and_answers_in_input_order(server: TestServer) -> None:
    recording = Recording()
    events: list[Any] = [entity(f"svc-{i}", idempotency_key=f"k-{i}") for i in range(1234)]
    events[3] = entity("")  # the service refuses it
    events[700] = {"resource": "entity", "identifier": "x", "operation": "update", "origin": "?"}
    events[701] = entity(blueprint="")  # the service refuses it
    with AuditClient(server.endpoint, interceptors=[recording]) as client:
        results = client.record_many(events, batch_size=100)
        assert len(results) == 1234
        failed = {i: r.error for i, r in enumerate(results) if not r.ok}
        assert set(failed) == {3, 700, 701}
        assert isinstance(failed[3], InvalidEvent)
        assert failed[3].field == "event.identifier"
        assert isinstance(failed[700], InvalidEvent)
        assert failed[700].field == "event.origin"
        assert isinstance(failed[701], InvalidEvent)
        assert failed[701].field == "event.blueprint"
        assert all(r.id for i, r in enumerate(results) if i not in failed)
        assert all(len(r.events) <= 100 for r in recording.requests)
        assert sum(len(r.events) for r in recording.requests) == 1233  # #700 never left

        stored = {e.identifier: e.id for e in client.list()}
        assert len(stored) == 1231
        assert stored["svc-42"] == results[42].id

        again = client.record_many(e for e in events if isinstance(e, Event) and e.identifier)
        assert all(r.duplicate for r in again if r.ok)


def test_record_many_cuts_batches_by_bytes(server: TestServer) -> None:
    recording = Recording()
    big = "x" * (200 * 1024)
    with AuditClient(server.endpoint, interceptors=[recording]) as client:
        results = client.record_many(
            (entity(f"big-{i}", after={"blob": big}) for i in range(12)),
            max_batch_bytes=1024 * 1024,
        )
    assert all(r.ok for r in results)
    sizes = [r.ByteSize() for r in recording.requests]
    assert len(sizes) >= 3
    assert max(sizes) <= 1024 * 1024 + 64


def test_record_many_of_nothing(client: AuditClient) -> None:
    assert client.record_many([]) == []


# -- list -----------------------------------------------------------------------------------


def test_list_pages_through_everything_and_stops_at_limit(client: AuditClient) -> None:
    base = YESTERDAY_NOON
    results = client.record_many(
        entity(f"svc-{i:04d}", occurred_at=base + timedelta(seconds=i)) for i in range(2500)
    )
    assert all(r.ok for r in results)
    everything = list(client.list(page_size=1000))
    assert [e.identifier for e in everything] == [f"svc-{i:04d}" for i in reversed(range(2500))]
    assert len(list(client.list(limit=1500))) == 1500
    oldest = list(client.list(order_by="occurred_at asc", limit=3))
    assert [e.identifier for e in oldest] == ["svc-0000", "svc-0001", "svc-0002"]

    window = list(
        client.list(
            ("occurred_at", ">=", base + timedelta(seconds=100)),
            Filter.of("occurred_at", "<", base + timedelta(seconds=110)),
            ("identifier", "^", "svc-01"),
        )
    )
    assert sorted(e.identifier for e in window) == [f"svc-{i:04d}" for i in range(100, 110)]


def test_filters_by_symbol_word_or_name(client: AuditClient) -> None:
    client.record(entity("a", operation="create"))
    client.record(entity("b", operation="delete", source=Source(kind="user", name="Bob")))
    client.record(entity("c", operation="update"))

    def ids(*rules: Any) -> list[str]:
        return sorted(e.identifier for e in client.list(*rules))

    assert ids(("operation", "=", ["create", "delete"])) == ["a", "b"]
    assert ids(("operation", "!=", "create")) == ["b", "c"]
    assert ids(("source", "contains", "BOB")) == ["b"]
    assert ids(Filter("operation", "EQUALS", ("UPDATE",))) == ["c"]
    with pytest.raises(InvalidArgument) as caught:
        Filter.of("operation", "===", "x")
    assert caught.value.code is None


def test_a_bad_filter_names_the_rule_and_lists_valid_fields(client: AuditClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        list(client.list(("identifier", "=", "x"), ("colour", "=", "red")))
    assert caught.value.field == "filters[1].field"
    assert "recorded_by" in caught.value.problem
    assert not isinstance(caught.value, InvalidEvent)


def test_follow_yields_what_is_recorded_after_the_cursor(client: AuditClient) -> None:
    results = client.record_many(entity(f"first-{i}") for i in range(5))  # one commit
    newest_first = list(client.list(order_by="recorded_at desc"))
    assert len({e.recorded_at for e in newest_first}) == 1  # one commit: one recorded_at
    cursor = newest_first[2]  # in the middle of a commit: same recorded_at on both sides
    follow = client.follow(after=cursor, interval=0.05)
    assert [next(follow).id for _ in range(2)] == [newest_first[1].id, newest_first[0].id]
    later = client.record(entity("later"))
    assert next(follow).id == later.id
    assert {r.id for r in results} >= {e.id for e in newest_first}


def test_get_diff_errors(client: AuditClient) -> None:
    with pytest.raises(InvalidArgument):
        client.get_diff("not-an-id")
    with pytest.raises(NotFound):
        client.get_diff("01a2154f-50c1-7000-8d6e-8b730436e28f")
    read = client.record(
        Event(resource="sign_in", identifier="alice", operation="read", origin="ui")
    )
    diff = client.get_diff(read.id)
    assert not diff.available
    assert "READ" in diff.reason


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "event.identifier: required", InvalidEvent),
        (grpc.StatusCode.INVALID_ARGUMENT, "filters[0].op: nope", InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", TooLarge),
        (grpc.StatusCode.NOT_FOUND, "no event", NotFound),
        (grpc.StatusCode.UNAUTHENTICATED, "who?", Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, "no", PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, "down", Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "slow", DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, "bug", ServiceError),
        (grpc.StatusCode.UNKNOWN, "bug", ServiceError),
    ],
)
def test_each_status_maps_to_one_error(
    code: grpc.StatusCode, details: str, expected: type[AuditClientError]
) -> None:
    error = error_from_status(code, details)
    assert type(error) is expected
    assert error.code == code
    assert error.details == details


def test_record_stream_result_errors_are_parsed() -> None:
    error = error_from_result("INVALID_ARGUMENT: event.context['a b']: longer than 128 characters")
    assert isinstance(error, InvalidEvent)
    assert error.field == "event.context['a b']"
    assert error.problem == "longer than 128 characters"
    denied = error_from_result("PERMISSION_DENIED: k8s may not record events with origin UI")
    assert isinstance(denied, PermissionDenied)
    assert denied.details == "k8s may not record events with origin UI"


# -- tokens and TLS -------------------------------------------------------------------------

ADMIN = Token("admin@example.com", "admin", "alog_admin-token-for-tests")
RECORDER = Token("k8s-exporter", "recorder", "alog_recorder-token-for-tests", ("K8S_EXPORTER",))


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[TestServer]:
    tokens = write_tokens_file(tmp_path / "tokens.toml", [ADMIN, RECORDER])
    running = start_server(tmp_path / "audit.db", dev=False, tokens=str(tokens))
    try:
        yield running
    finally:
        running.close()


def test_the_token_travels_as_bearer_metadata(secured: TestServer) -> None:
    recording = Recording()
    with AuditClient(secured.endpoint, token=ADMIN.value, interceptors=[recording]) as admin:
        recorded = admin.record(entity())
        assert [e.id for e in admin.list(("resource", "=", "entity"))] == [recorded.id]
    assert recording.calls[0][1]["authorization"] == f"Bearer {ADMIN.value}"
    (event,) = [
        e for e in AuditClient(secured.endpoint, token=ADMIN.value).list() if e.id == recorded.id
    ]
    assert event.recorded_by == ADMIN.principal_id

    with (
        AuditClient(secured.endpoint, token="alog_wrong") as stranger,
        pytest.raises(Unauthenticated),
    ):
        list(stranger.list())
    with AuditClient(secured.endpoint) as anonymous, pytest.raises(Unauthenticated):
        anonymous.record(entity())
    with AuditClient(secured.endpoint, token=RECORDER.value) as recorder:
        with pytest.raises(PermissionDenied):
            list(recorder.list())
        results = recorder.record_many([entity(origin="k8s_exporter"), entity(origin="ui")])
        assert results[0].ok
        assert isinstance(results[1].error, PermissionDenied)


def test_a_token_for_a_remote_host_in_plaintext_warns() -> None:
    assert is_loopback("127.0.0.1:4443")
    assert is_loopback("localhost:1")
    assert is_loopback("[::1]:4443")
    assert not is_loopback("audit.invalid:50051")
    with pytest.warns(InsecureTokenWarning):
        AuditClient("audit.invalid:50051", token="alog_x").close()  # no call is made
    with pytest.raises(ValueError, match="whitespace"):
        AuditClient("127.0.0.1:1", token="alog x")
    with pytest.raises(ValueError, match="both"):
        TLS(certificate_chain=b"cert")


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tokens = write_tokens_file(tmp_path / "tokens.toml", [ADMIN])
    running = start_server(
        tmp_path / "audit.db",
        dev=False,
        tokens=str(tokens),
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca_cert),
    )
    target = f"localhost:{running.service.port}"
    try:
        mutual = TLS(
            root_certificates=pki.ca_cert,
            certificate_chain=pki.client_cert,
            private_key=pki.client_key.read_bytes(),
        )
        with AuditClient(target, token=ADMIN.value, tls=mutual, retry=FAST_RETRY) as client:
            assert client.record(entity()).ok
        no_cert = TLS(root_certificates=pki.ca_cert)
        refused = AuditClient(target, token=ADMIN.value, tls=no_cert, retry=FAST_RETRY)
        with refused, pytest.raises(Unavailable):
            list(refused.list())
    finally:
        running.close()


# -- retries ---------------------------------------------------------------------------------


def _start_later(db: Path, port: int, delay: float) -> tuple[threading.Thread, list[TestServer]]:
    started: list[TestServer] = []

    def start() -> None:
        time.sleep(delay)
        started.append(start_server(db, listen=f"127.0.0.1:{port}"))

    thread = threading.Thread(target=start)
    thread.start()
    return thread, started


def test_safe_calls_retry_until_the_service_comes_up(tmp_path: Path) -> None:
    port = free_port()
    recording = Recording()
    patient = RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.2, deadline=20)
    with AuditClient(f"127.0.0.1:{port}", retry=patient, interceptors=[recording]) as client:
        thread, started = _start_later(tmp_path / "a.db", port, 0.5)
        try:
            result = client.record(entity(idempotency_key="retry-1"))  # keyed: safe
            thread.join()
            assert result.ok
            assert len(recording.calls) > 1  # it failed at least once, then got through
            assert [e.id for e in client.list()] == [result.id]
        finally:
            thread.join()
            for running in started:
                running.close()


def test_record_without_a_key_is_not_retried(tmp_path: Path) -> None:
    port = free_port()
    recording = Recording()
    with AuditClient(f"127.0.0.1:{port}", retry=FAST_RETRY, interceptors=[recording]) as client:
        with pytest.raises(Unavailable):
            client.record(entity())
        assert len(recording.calls) == 1
        with pytest.raises(Unavailable):
            client.record(entity(idempotency_key="k"))
        assert len(recording.calls) == 1 + FAST_RETRY.attempts
        with pytest.raises(Unavailable):
            client.record_many([entity()])  # one unkeyed event: the stream is not resent
        assert len(recording.calls) == 2 + FAST_RETRY.attempts


def test_record_many_sends_keyed_batches_again_when_the_service_comes_up(
    tmp_path: Path,
) -> None:
    port = free_port()
    patient = RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.2, deadline=20)
    with AuditClient(f"127.0.0.1:{port}", retry=patient) as client:
        thread, started = _start_later(tmp_path / "a.db", port, 0.5)
        try:
            results = client.record_many(
                (entity(f"svc-{i}", idempotency_key=f"k-{i}") for i in range(300)), batch_size=50
            )
            thread.join()
            assert all(r.ok for r in results)
            assert len({e.id for e in client.list()}) == 300
        finally:
            thread.join()
            for running in started:
                running.close()


# -- asyncio ---------------------------------------------------------------------------------


def _run(coroutine: Callable[[], Any]) -> Any:
    return asyncio.run(coroutine())


def test_async_client_does_the_same(server: TestServer) -> None:
    async def scenario() -> None:
        async with AsyncAuditClient(server.endpoint) as client:
            first = await client.record(entity(before={"a": 1}, after={"a": 2}))
            results = await client.record_many(
                [entity(f"svc-{i}") for i in range(120)] + [entity("")], batch_size=50
            )
            assert len(results) == 121
            assert all(r.ok for r in results[:120])
            assert isinstance(results[120].error, InvalidEvent)
            seen = [e async for e in client.list(limit=1000)]
            assert len(seen) == 121
            assert seen[-1].id == first.id
            diff = await client.get_diff(first.id)
            assert diff.patch == [{"op": "replace", "path": "/a", "value": 2}]
            with pytest.raises(NotFound):
                await client.get_diff("01a2154f-50c1-7000-8d6e-8b730436e28f")
            with pytest.raises(InvalidArgument):
                [e async for e in client.list(("colour", "=", "red"))]
            follow = client.follow(after=seen[0], interval=0.05)
            later = await client.record(entity("later"))
            assert (await anext(follow)).id == later.id
            await follow.aclose()

    _run(scenario)


def test_async_client_retries_and_reports_unavailable(tmp_path: Path) -> None:
    port = free_port()

    async def scenario() -> RecordResult:
        async with AsyncAuditClient(f"127.0.0.1:{port}", retry=FAST_RETRY) as client:
            with pytest.raises(Unavailable):
                await client.record(entity())
            patient = RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.2, deadline=20)
        async with AsyncAuditClient(f"127.0.0.1:{port}", retry=patient) as client:
            return await client.record(entity(idempotency_key="a-1"))

    thread, started = _start_later(tmp_path / "a.db", port, 0.5)
    try:
        assert _run(scenario).ok
    finally:
        thread.join()
        for running in started:
            running.close()

"""Pagination: page sizes, keyset pages that neither skip nor repeat while events are being
recorded, tamper-proof page tokens, and pages cut short under the response byte budget."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from audit_service import servicer
from clients import pb, pb_grpc
from tests.helpers import TestServer, event, list_ids, record, rule, start_server

SECOND = 1_000_000_000
ORIGINS = [pb.ORIGIN_UI, pb.ORIGIN_API, pb.ORIGIN_TERRAFORM, pb.ORIGIN_K8S_EXPORTER]
RESOURCES = [pb.RESOURCE_TYPE_ENTITY, pb.RESOURCE_TYPE_RUN, pb.RESOURCE_TYPE_ACTION]


def _stream(stub: pb_grpc.AuditServiceStub, events: list[pb.AuditEvent]) -> list[str]:
    "Record ``events`` in one RecordStream batch; their ids in order."
    (response,) = stub.RecordStream(iter([pb.RecordStreamRequest(batch=1, events=events)]))
    assert all(r.id and not r.error for r in response.results)
    return [r.id for r in response.results]


def _varied(rng: random.Random, now_ns: int, n: int) -> list[pb.AuditEvent]:
    "Events with occurred_at in the last hour, a few identifiers and resources (many ties)."
    events = []
    for _ in range(n):
        occurred = now_ns - rng.randrange(3600) * SECOND
        resource = rng.choice(RESOURCES)
        events.append(
            event(
                identifier=f"svc-{rng.randrange(6)}",
                resource=resource,
                blueprint="service",
                origin=rng.choice(ORIGINS),
                occurred_at=timestamp_pb2.Timestamp(seconds=occurred // SECOND),
            )
        )
    return events


# -- page size ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thousand_and_one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    server = start_server(tmp_path_factory.mktemp("pages") / "audit.db")
    try:
        _stream(server.stub, [event(identifier=f"e{i:04d}") for i in range(1001)])
        yield server
    finally:
        server.close()


@pytest.mark.parametrize(
    ("page_size", "expected"),
    [(0, 100), (1, 1), (100, 100), (999, 999), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)],
)
def test_page_size(thousand_and_one: TestServer, page_size: int, expected: int) -> None:
    response = thousand_and_one.stub.List(pb.ListRequest(page_size=page_size))
    assert len(response.events) == expected
    assert response.next_page_token  # 1001 events: there is always more


def test_default_page_size_pages_through_all(thousand_and_one: TestServer) -> None:
    ids = list_ids(thousand_and_one.stub, pb.ListRequest())
    assert len(ids) == 1001
    assert len(set(ids)) == 1001


def test_last_page_has_no_token(thousand_and_one: TestServer) -> None:
    first = thousand_and_one.stub.List(pb.ListRequest(page_size=1000))
    last = thousand_and_one.stub.List(
        pb.ListRequest(page_size=1000, page_token=first.next_page_token)
    )
    assert len(last.events) == 1
    assert last.next_page_token == ""
    exact = thousand_and_one.stub.List(
        pb.ListRequest(filters=[rule("identifier", pb.FILTER_OP_STARTS_WITH, "e000")], page_size=10)
    )
    assert len(exact.events) == 10
    assert exact.next_page_token == ""  # exactly one full page: nothing more to ask for


@pytest.mark.parametrize("page_size", [-1, -1000, -(2**31)])
def test_negative_page_size_is_invalid(stub: pb_grpc.AuditServiceStub, page_size: int) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.List(pb.ListRequest(page_size=page_size))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (raised.value.details() or "")


# -- no skips, no repeats while events are being recorded ------------------------------------


@pytest.mark.parametrize(
    "order_by",
    [
        "occurred_at desc",
        "occurred_at asc",
        "recorded_at asc",
        "recorded_at desc",
        "identifier asc",
        "identifier desc",
        "resource desc",
        "origin asc",
    ],
)
def test_pages_neither_skip_nor_repeat_while_recording(
    stub: pb_grpc.AuditServiceStub, order_by: str
) -> None:
    rng = random.Random(order_by)
    now = time.time_ns()
    before = set(_stream(stub, _varied(rng, now, 40)))
    seen: list[str] = []
    request = pb.ListRequest(order_by=order_by, page_size=4)
    for _ in range(100):
        response = stub.List(request)
        seen.extend(e.id for e in response.events)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
        # New events between pages: some sort before the cursor, some after it (fewer than a
        # page, so a sort where every new event comes last still reaches its end).
        _stream(stub, _varied(rng, time.time_ns(), 2))
        record(stub, identifier=f"svc-{rng.randrange(6)}")
    else:
        pytest.fail("paging did not reach the end")
    assert len(seen) == len(set(seen)), "an event was repeated"
    assert before <= set(seen), "an event that existed before the first page was skipped"


def test_pages_hold_while_another_client_records_concurrently(
    server: TestServer,
) -> None:
    import threading

    before = set(_stream(server.stub, _varied(random.Random(1), time.time_ns(), 60)))
    stop = threading.Event()

    def keep_recording() -> None:
        rng = random.Random(2)
        channel = grpc.insecure_channel(server.endpoint)
        writer = pb_grpc.AuditServiceStub(channel)
        try:
            while not stop.is_set():
                _stream(writer, _varied(rng, time.time_ns(), 3))
        finally:
            channel.close()

    thread = threading.Thread(target=keep_recording)
    thread.start()
    try:
        for order_by in ("occurred_at desc", "identifier asc", "recorded_at asc"):
            seen = list_ids(server.stub, pb.ListRequest(order_by=order_by, page_size=4))
            assert len(seen) == len(set(seen))
            assert before <= set(seen)
    finally:
        stop.set()
        thread.join()


# -- page tokens ---------------------------------------------------------------------------


def _first_token(stub: pb_grpc.AuditServiceStub, request: pb.ListRequest) -> str:
    response = stub.List(request)
    assert response.next_page_token
    return response.next_page_token


def _assert_bad_token(stub: pb_grpc.AuditServiceStub, request: pb.ListRequest, token: str) -> None:
    bad = pb.ListRequest()
    bad.CopyFrom(request)
    bad.page_token = token
    with pytest.raises(grpc.RpcError) as raised:
        stub.List(bad)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
    assert "page_token" in (raised.value.details() or "")


@pytest.fixture
def paged(stub: pb_grpc.AuditServiceStub) -> tuple[pb.ListRequest, str]:
    _stream(stub, [event(identifier=f"t{i}") for i in range(5)])
    request = pb.ListRequest(
        filters=[rule("resource", pb.FILTER_OP_EQUALS, "entity")],
        order_by="identifier asc",
        page_size=2,
    )
    return request, _first_token(stub, request)


def test_token_continues_the_same_query(
    stub: pb_grpc.AuditServiceStub, paged: tuple[pb.ListRequest, str]
) -> None:
    request, token = paged
    request.page_token = token
    assert [e.identifier for e in stub.List(request).events] == ["t2", "t3"]


@pytest.mark.parametrize(
    "forged",
    [
        "x",
        "not-a-token",
        "....",
        "eyJ2IjoxfQ.AAAA",
        "eyJ2IjoxLCJxIjoiIiwiayI6MCwiaSI6IjAifQ.AAAAAAAAAAAAAAAAAAAAAA",
        "ÄÖÜ",
        "\x00",
        "a" * 5000,
    ],
)
def test_forged_token_is_invalid_argument(
    stub: pb_grpc.AuditServiceStub, paged: tuple[pb.ListRequest, str], forged: str
) -> None:
    _assert_bad_token(stub, paged[0], forged)


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_every_single_character_change_of_a_token_is_rejected(
    stub: pb_grpc.AuditServiceStub, paged: tuple[pb.ListRequest, str]
) -> None:
    request, token = paged
    for i, char in enumerate(token):
        replacements = {"A" if char != "A" else "B", "!", " "}
        if char in B64URL:  # the neighbouring letter: differs only in the lowest bit
            replacements.add(B64URL[B64URL.index(char) ^ 1])
        for replacement in replacements:
            _assert_bad_token(stub, request, token[:i] + replacement + token[i + 1 :])
    for garbled in (
        token + "A",
        token + "=",
        token + "==",
        token[:-1],
        " " + token,
        token + "\n",
        token.replace(".", ".."),
        token.replace(".", "=."),
        token[::-1],
    ):
        _assert_bad_token(stub, request, garbled)


def test_altered_cursor_keeps_no_valid_mac(
    stub: pb_grpc.AuditServiceStub, paged: tuple[pb.ListRequest, str]
) -> None:
    "Rewriting what the token says (its cursor), even keeping its MAC, is rejected."
    request, token = paged
    payload_b64, _, mac = token.partition(".")
    payload = base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4))
    altered = payload.replace(b"t1", b"t0")
    assert altered != payload
    forged = base64.urlsafe_b64encode(altered).rstrip(b"=").decode() + "." + mac
    _assert_bad_token(stub, request, forged)


def test_token_from_another_server_is_rejected(
    stub: pb_grpc.AuditServiceStub, paged: tuple[pb.ListRequest, str], tmp_path: Path
) -> None:
    request, _ = paged
    other = start_server(tmp_path / "other" / "audit.db")
    try:
        _stream(other.stub, [event(identifier=f"t{i}") for i in range(5)])
        foreign = _first_token(other.stub, request)
    finally:
        other.close()
    _assert_bad_token(stub, request, foreign)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"order_by": "identifier desc"}, id="other-direction"),
        pytest.param({"order_by": "occurred_at asc"}, id="other-sort-field"),
        pytest.param({"order_by": ""}, id="default-sort"),
        pytest.param({"filters": []}, id="no-filters"),
        pytest.param(
            {"filters": [rule("resource", pb.FILTER_OP_EQUALS, "run")]}, id="other-filter-value"
        ),
        pytest.param(
            {"filters": [rule("resource", pb.FILTER_OP_NOT_EQUALS, "entity")]}, id="other-op"
        ),
        pytest.param(
            {
                "filters": [
                    rule("resource", pb.FILTER_OP_EQUALS, "entity"),
                    rule("status", pb.FILTER_OP_EQUALS, "success"),
                ]
            },
            id="extra-filter",
        ),
        pytest.param(
            {"filters": [rule("context.resource", pb.FILTER_OP_EQUALS, "entity")]},
            id="other-field",
        ),
    ],
)
def test_token_reused_with_other_filters_or_order_is_invalid(
    stub: pb_grpc.AuditServiceStub,
    paged: tuple[pb.ListRequest, str],
    change: dict[str, object],
) -> None:
    request, token = paged
    other = pb.ListRequest(page_size=request.page_size)
    other.order_by = str(change.get("order_by", request.order_by))
    filters = change.get("filters", list(request.filters))
    assert isinstance(filters, list)
    other.filters.extend(filters)
    _assert_bad_token(stub, other, token)


def test_token_accepts_enum_value_spelled_differently(
    stub: pb_grpc.AuditServiceStub, paged: tuple[pb.ListRequest, str]
) -> None:
    "The same query written another way (RESOURCE_TYPE_ENTITY for entity) is the same query."
    request, token = paged
    same = pb.ListRequest(
        filters=[rule("resource", pb.FILTER_OP_EQUALS, "RESOURCE_TYPE_ENTITY")],
        order_by=request.order_by,
        page_size=2,
        page_token=token,
    )
    assert [e.identifier for e in stub.List(same).events] == ["t2", "t3"]


# -- pages cut short under the byte budget --------------------------------------------------


def _big_snapshot_events(n: int, blob_bytes: int) -> list[pb.AuditEvent]:
    return [
        event(
            identifier=f"big-{i}",
            before={"blob": f"{i}" * blob_bytes},
            after={"blob": f"{i + 1}" * blob_bytes, "n": i},
        )
        for i in range(n)
    ]


def test_large_snapshots_are_paged_within_the_default_budget(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    # Five events of ~900 KB: together over what a client accepts in one message (4 MiB).
    ids = [stub.Record(pb.RecordRequest(event=e)).id for e in _big_snapshot_events(5, 450_000)]
    request = pb.ListRequest(include_snapshots=True, order_by="recorded_at asc")
    first = stub.List(request)
    assert 0 < len(first.events) < 5
    assert first.ByteSize() <= servicer.MAX_LIST_RESPONSE_BYTES
    assert first.next_page_token
    seen = [e.id for e in first.events]
    request.page_token = first.next_page_token
    seen += list_ids(stub, request)
    assert seen == ids


@pytest.mark.parametrize(
    "order_by",
    ["occurred_at desc", "identifier asc", "recorded_at desc", "resource asc", "source desc"],
)
def test_cut_pages_list_every_event_exactly_once(
    stub: pb_grpc.AuditServiceStub, monkeypatch: pytest.MonkeyPatch, order_by: str
) -> None:
    monkeypatch.setattr(servicer, "MAX_LIST_RESPONSE_BYTES", 5_000)
    ids = set(_stream(stub, _big_snapshot_events(30, 700)))
    small = set(_stream(stub, [event(identifier=f"small-{i}") for i in range(10)]))
    request = pb.ListRequest(include_snapshots=True, order_by=order_by, page_size=50)
    pages: list[list[str]] = []
    while True:
        response = stub.List(request)
        pages.append([e.id for e in response.events])
        assert len(response.events) == 1 or response.ByteSize() <= 5_000 + 2_000
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    seen = [i for page in pages for i in page]
    assert len(pages) > 5  # the budget did cut pages
    assert len(seen) == len(set(seen))
    assert set(seen) == ids | small
    whole = list_ids(stub, pb.ListRequest(order_by=order_by, page_size=1000))
    assert seen == whole  # same order as uncut pages

"""List sorting: every field ascending and descending, the default order, ties broken by id in
the same direction, enums by short name, text by byte order, and paging through each order."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from clients import pb
from tests.helpers import TestServer, event, list_all, start_server

SECOND = 1_000_000_000
T0 = (time.time_ns() // SECOND - 600) * SECOND

SORT_FIELDS = [
    "occurred_at", "recorded_at", "resource", "identifier", "blueprint", "integration",
    "run_id", "operation", "source", "source_kind", "origin", "status", "error", "recorded_by",
]  # fmt: skip

# identifier, resource, operation, (kind, id, name), origin, status, error, occurred_at offset (s)
ROWS: list[tuple[Any, ...]] = [
    ("a", "SIGN_IN", "READ", ("USER", "u-9", "Zed"), "UI", "SUCCESS", "", 5),
    ("B", "ACTION", "UPDATE", ("WEBHOOK", "hook", ""), "WEBHOOK", "FAILURE", "b-err", 3),
    ("é", "ENTITY", "DELETE", ("SYSTEM", "sys", "System"), "PORT_INTERNAL", "SUCCESS", "", 5),
    ("z", "SECRET", "CREATE", ("INTEGRATION", "int", "Über"), "TERRAFORM", "FAILURE", "Zap", 1),
    ("😀", "RUN", "TIMER_EXPIRED", ("AUTOMATION", "auto", ""), "PULUMI", "SUCCESS", "", 9),
    ("\uffff", "AUTOMATION", "UPDATE", ("USER", "u-1", "alice"), "API", "FAILURE", "é", 2),
    # recorded in one batch below: they share one recorded_at
    ("a", "BLUEPRINT", "CREATE", ("USER", "u-2", "Bob"), "K8S_EXPORTER", "SUCCESS", "", 5),
    ("Zz", "SCORECARD", "READ", ("USER", "u-3", "bob"), "GH_ACTION", "FAILURE", "a", 7),
    ("ab", "INTEGRATION", "DELETE", ("SYSTEM", "sys", "System"), "UI", "FAILURE", "😀", 3),
    ("É", "ENTITY", "TIMER_EXPIRED", ("WEBHOOK", "hook", ""), "CODEFRESH", "SUCCESS", "", 8),
    ("1", "RUN", "UPDATE", ("USER", "u-2", "Bob"), "API", "FAILURE", "\uffff", 1),
    ("~", "ENTITY", "CREATE", ("INTEGRATION", "int", "Über"), "AWS_EXPORTER", "SUCCESS", "", 6),
]
INDIVIDUAL = 6  # the first rows are recorded one Record at a time


def _row_event(index: int, row: tuple[Any, ...]) -> pb.AuditEvent:
    identifier, resource, operation, (kind, sid, name), origin, status, error, offset = row
    is_entity = resource == "ENTITY"
    return event(
        identifier=identifier,
        resource=pb.ResourceType.Value("RESOURCE_TYPE_" + resource),
        operation=pb.Operation.Value("OPERATION_" + operation),
        source=pb.Source(kind=pb.SourceKind.Value("SOURCE_KIND_" + kind), id=sid, name=name),
        origin=pb.Origin.Value("ORIGIN_" + origin),
        status=pb.Status.Value("STATUS_" + status),
        error=error,
        blueprint=["service", "Service", "ßvc", "svc"][index % 4] if is_entity else "",
        integration=["", "gh-1", "GH-1", "k8s"][index % 4],
        run_id=["", "r-2", "r-10", "R-1", "r-2"][index % 5],
        occurred_at=timestamp_pb2.Timestamp(seconds=(T0 + offset * SECOND) // SECOND),
    )


@pytest.fixture(scope="module")
def sorted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    server = start_server(tmp_path_factory.mktemp("sorting") / "audit.db")
    try:
        events = [_row_event(i, row) for i, row in enumerate(ROWS)]
        for message in events[:INDIVIDUAL]:
            server.stub.Record(pb.RecordRequest(event=message))
        batch = pb.RecordStreamRequest(batch=1, events=events[INDIVIDUAL:])
        (response,) = server.stub.RecordStream(iter([batch]), timeout=30)
        assert all(r.id and not r.error for r in response.results)
        yield server
    finally:
        server.close()


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * SECOND + ts.nanos


def _short(enum_type: Any, prefix: str) -> Callable[[int], str]:
    return lambda number: str(enum_type.Name(number)).removeprefix(prefix)


_resource = _short(pb.ResourceType, "RESOURCE_TYPE_")
_operation = _short(pb.Operation, "OPERATION_")
_kind = _short(pb.SourceKind, "SOURCE_KIND_")
_origin = _short(pb.Origin, "ORIGIN_")
_status = _short(pb.Status, "STATUS_")

# The documented sort key of each field: times as instants, enums by short name, text by bytes.
SORT_KEYS: dict[str, Callable[[pb.AuditEvent], Any]] = {
    "occurred_at": lambda e: _ns(e.occurred_at),
    "recorded_at": lambda e: _ns(e.recorded_at),
    "resource": lambda e: _resource(e.resource),
    "identifier": lambda e: e.identifier.encode(),
    "blueprint": lambda e: e.blueprint.encode(),
    "integration": lambda e: e.integration.encode(),
    "run_id": lambda e: e.run_id.encode(),
    "operation": lambda e: _operation(e.operation),
    "source": lambda e: (e.source.name or e.source.id).encode(),  # what the Source column shows
    "source_kind": lambda e: _kind(e.source.kind),
    "origin": lambda e: _origin(e.origin),
    "status": lambda e: _status(e.status),
    "error": lambda e: e.error.encode(),
    "recorded_by": lambda e: e.recorded_by.encode(),
}


def _listed(server: TestServer, order_by: str, page_size: int = 1000) -> list[pb.AuditEvent]:
    return list(list_all(server.stub, pb.ListRequest(order_by=order_by, page_size=page_size)))


def _expected(server: TestServer, field: str, descending: bool) -> list[str]:
    events = _listed(server, "occurred_at asc")
    key = SORT_KEYS[field]
    ordered = sorted(events, key=lambda e: (key(e), e.id), reverse=descending)
    return [e.id for e in ordered]


@dataclass(frozen=True)
class Order:
    field: str
    descending: bool

    @property
    def order_by(self) -> str:
        return f"{self.field} {'desc' if self.descending else 'asc'}"


ORDERS = [Order(f, d) for f in SORT_FIELDS for d in (False, True)]


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.order_by)
def test_sort_by_each_field(sorted_server: TestServer, order: Order) -> None:
    got = [e.id for e in _listed(sorted_server, order.order_by)]
    assert got == _expected(sorted_server, order.field, order.descending)


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.order_by)
def test_paging_through_each_order_matches_one_page(
    sorted_server: TestServer, order: Order
) -> None:
    one_page = [e.id for e in _listed(sorted_server, order.order_by)]
    for page_size in (1, 2, 5):
        paged = [e.id for e in _listed(sorted_server, order.order_by, page_size)]
        assert paged == one_page


def test_default_order_is_occurred_at_desc(sorted_server: TestServer) -> None:
    default = [e.id for e in _listed(sorted_server, "")]
    assert default == _expected(sorted_server, "occurred_at", descending=True)
    assert default == [e.id for e in _listed(sorted_server, "occurred_at desc")]
    assert default == [e.id for e in _listed(sorted_server, "occurred_at asc")][::-1]


def test_direction_defaults_to_ascending(sorted_server: TestServer) -> None:
    assert [e.id for e in _listed(sorted_server, "identifier")] == [
        e.id for e in _listed(sorted_server, "identifier asc")
    ]


def test_text_sorts_by_utf8_byte_order(sorted_server: TestServer) -> None:
    identifiers = [e.identifier for e in _listed(sorted_server, "identifier asc")]
    # Byte order: digits < upper case < lower case < "~" < 2-byte < 3-byte (U+FFFF) < 4-byte.
    assert identifiers == ["1", "B", "Zz", "a", "a", "ab", "z", "~", "É", "é", "\uffff", "😀"]


def test_enums_sort_by_short_name(sorted_server: TestServer) -> None:
    resources = [_resource(e.resource) for e in _listed(sorted_server, "resource asc")]
    assert list(dict.fromkeys(resources)) == [
        "ACTION", "AUTOMATION", "BLUEPRINT", "ENTITY", "INTEGRATION", "RUN", "SCORECARD",
        "SECRET", "SIGN_IN",
    ]  # fmt: skip
    statuses = [_status(e.status) for e in _listed(sorted_server, "status desc")]
    assert list(dict.fromkeys(statuses)) == ["SUCCESS", "FAILURE"]
    kinds = [_kind(e.source.kind) for e in _listed(sorted_server, "source_kind asc")]
    assert list(dict.fromkeys(kinds)) == ["AUTOMATION", "INTEGRATION", "SYSTEM", "USER", "WEBHOOK"]
    operations = [_operation(e.operation) for e in _listed(sorted_server, "operation asc")]
    assert list(dict.fromkeys(operations)) == [
        "CREATE",
        "DELETE",
        "READ",
        "TIMER_EXPIRED",
        "UPDATE",
    ]


@pytest.mark.parametrize("descending", [False, True])
def test_ties_are_broken_by_id_in_the_same_direction(
    sorted_server: TestServer, descending: bool
) -> None:
    order_by = "identifier desc" if descending else "identifier asc"
    tied = [e.id for e in _listed(sorted_server, order_by) if e.identifier == "a"]
    assert len(tied) == 2
    assert tied == sorted(tied, reverse=descending)
    # One RecordStream batch shares one recorded_at: ids order those events.
    events = _listed(sorted_server, "recorded_at desc" if descending else "recorded_at asc")
    newest = max(_ns(e.recorded_at) for e in events)
    shared = [e.id for e in events if _ns(e.recorded_at) == newest]
    assert len(shared) == len(ROWS) - INDIVIDUAL
    assert shared == sorted(shared, reverse=descending)


@pytest.mark.parametrize(
    "order_by",
    ["context.cluster asc", "nope", "identifier sideways", "identifier asc extra", "id asc"],
)
def test_bad_order_by_is_invalid_argument(sorted_server: TestServer, order_by: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        sorted_server.stub.List(pb.ListRequest(order_by=order_by))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("order_by:")


def test_rows_are_what_the_expectations_assume(sorted_server: TestServer) -> None:
    "Guards the table: every field varies, so each sort above can tell orders apart."
    events = _listed(sorted_server, "occurred_at asc")
    assert len(events) == len(ROWS)
    for field, key in SORT_KEYS.items():
        if field != "recorded_by":
            assert len({key(e) for e in events}) > 1, field

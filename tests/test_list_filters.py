"""List filters: every field of the contract with every operator that applies to it.

One server holds nine hand-made events (``e1`` .. ``e9``); each case names the exact set of
events a filter must return.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from clients import pb
from tests.helpers import TestServer, event, list_all, rfc3339, rule, start_server

EQ, NE, CONTAINS, STARTS = (
    pb.FILTER_OP_EQUALS,
    pb.FILTER_OP_NOT_EQUALS,
    pb.FILTER_OP_CONTAINS,
    pb.FILTER_OP_STARTS_WITH,
)
GT, GTE, LT, LTE = pb.FILTER_OP_GT, pb.FILTER_OP_GTE, pb.FILTER_OP_LT, pb.FILTER_OP_LTE

SECOND = 1_000_000_000
T0 = (time.time_ns() // SECOND - 3600) * SECOND  # an hour ago, on a whole second
E1_NS = T0 + 1 * SECOND + 123_456_789


def t(seconds: int) -> str:
    "RFC 3339 for T0 + ``seconds`` (e2 occurred at t(2), e3 at t(3), ...)."
    return rfc3339(T0 + seconds * SECOND)


def _in_offset(ns: int, offset_hours: int) -> str:
    "RFC 3339 for ``ns`` written in another UTC offset, nanoseconds kept."
    seconds, nanos = divmod(ns, SECOND)
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds + offset_hours * 3600))
    sign = "+" if offset_hours >= 0 else "-"
    return f"{local}.{nanos:09d}{sign}{abs(offset_hours):02d}:00"


def _user(id_: str, name: str) -> pb.Source:
    return pb.Source(kind=pb.SOURCE_KIND_USER, id=id_, name=name)


def _fields(**overrides: Any) -> dict[str, Any]:
    return overrides


EVENTS: dict[str, dict[str, Any]] = {
    "e1": _fields(
        resource=pb.RESOURCE_TYPE_ENTITY, identifier="payments-api", blueprint="service",
        operation=pb.OPERATION_CREATE, source=_user("u-1", "alice@example.com"),
        origin=pb.ORIGIN_UI, context={"cluster": "prod", "region": "eu-west-1"},
    ),
    "e2": _fields(
        resource=pb.RESOURCE_TYPE_ENTITY, identifier="Payments-Worker", blueprint="service",
        operation=pb.OPERATION_UPDATE, source=_user("u-2", "Bob"), origin=pb.ORIGIN_API,
        status=pb.STATUS_FAILURE, error="Timeout while contacting ÄBC gateway",
        context={"cluster": "staging"},
    ),
    "e3": _fields(
        resource=pb.RESOURCE_TYPE_BLUEPRINT, identifier="service", blueprint="",
        integration="github-42", operation=pb.OPERATION_UPDATE,
        source=pb.Source(kind=pb.SOURCE_KIND_INTEGRATION, id="gh-app"),
        origin=pb.ORIGIN_GITHUB_GITOPS, context={"repo": "org/catalog"},
    ),
    "e4": _fields(
        resource=pb.RESOURCE_TYPE_RUN, identifier="run-001", blueprint="", run_id="run-001",
        operation=pb.OPERATION_CREATE,
        source=pb.Source(kind=pb.SOURCE_KIND_AUTOMATION, id="auto-7", name="Nightly sync"),
        origin=pb.ORIGIN_PORT_AUTOMATION, status=pb.STATUS_FAILURE,
        error="permission denied: äbc",
    ),
    "e5": _fields(
        resource=pb.RESOURCE_TYPE_SECRET, identifier="db-password", blueprint="",
        operation=pb.OPERATION_DELETE, source=pb.Source(kind=pb.SOURCE_KIND_SYSTEM, id="system"),
        origin=pb.ORIGIN_PORT_INTERNAL, context={"cluster": "prod"},
    ),
    "e6": _fields(
        resource=pb.RESOURCE_TYPE_SIGN_IN, identifier="alice@example.com", blueprint="",
        operation=pb.OPERATION_READ, source=_user("u-1", "alice@example.com"),
        origin=pb.ORIGIN_UI,
    ),
    "e7": _fields(
        resource=pb.RESOURCE_TYPE_INTEGRATION, identifier="github-42", blueprint="",
        integration="github-42", operation=pb.OPERATION_TIMER_EXPIRED,
        source=pb.Source(kind=pb.SOURCE_KIND_WEBHOOK, id="hook-1", name="Deploy hook"),
        origin=pb.ORIGIN_WEBHOOK, status=pb.STATUS_FAILURE, error="x",
        context={"cluster": "PROD-east"},
    ),
    "e8": _fields(
        resource=pb.RESOURCE_TYPE_ENTITY, identifier="checkout", blueprint="Service",
        integration="k8s-1", run_id="run-002", operation=pb.OPERATION_UPDATE,
        source=_user("u-3", "carol@example.com"), origin=pb.ORIGIN_K8S_EXPORTER,
        context={"cluster": "prod", "namespace": "shop"},
    ),
    "e9": _fields(
        resource=pb.RESOURCE_TYPE_ACTION, identifier="Été-Déploiement", blueprint="",
        operation=pb.OPERATION_CREATE, source=_user("u-4", "Zoë"), origin=pb.ORIGIN_API,
        context={"team": "Équipe Ä"},
    ),
}  # fmt: skip
ALL = frozenset(EVENTS)


def but(*labels: str) -> frozenset[str]:
    return ALL - set(labels)


def only(*labels: str) -> frozenset[str]:
    return frozenset(labels)


NONE: frozenset[str] = frozenset()


@dataclass
class Recorded:
    server: TestServer
    label_of: dict[str, str]  # event id -> label
    recorded_at: dict[str, int]  # label -> ns


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    server = start_server(tmp_path_factory.mktemp("filters") / "audit.db")
    try:
        label_of: dict[str, str] = {}
        recorded_at: dict[str, int] = {}
        for n, (label, fields) in enumerate(EVENTS.items(), start=1):
            occurred = E1_NS if label == "e1" else T0 + n * SECOND
            seconds, nanos = divmod(occurred, SECOND)
            message = event(
                **fields, occurred_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
            )
            response = server.stub.Record(pb.RecordRequest(event=message))
            label_of[response.id] = label
            recorded_at[label] = response.recorded_at.seconds * SECOND + response.recorded_at.nanos
        times = [recorded_at[label] for label in EVENTS]
        assert times == sorted(times)
        assert len(set(times)) == len(times)
        yield Recorded(server, label_of, recorded_at)
    finally:
        server.close()


def _labels(recorded: Recorded, filters: list[pb.Filter]) -> frozenset[str]:
    request = pb.ListRequest(filters=filters, page_size=1000)
    return frozenset(recorded.label_of[e.id] for e in list_all(recorded.server.stub, request))


def _case(expected: frozenset[str], *filters: pb.Filter) -> Any:
    shown = " & ".join(
        f"{f.field} {pb.FilterOp.Name(f.op).removeprefix('FILTER_OP_')} {list(f.values)}"
        for f in filters
    )
    return pytest.param(list(filters), expected, id=shown)


CASES = [
    # -- occurred_at: RFC 3339, nanoseconds kept, any offset ----------------------------------
    _case(only("e1"), rule("occurred_at", EQ, rfc3339(E1_NS))),
    _case(only("e1"), rule("occurred_at", EQ, _in_offset(E1_NS, 1))),
    _case(only("e1"), rule("occurred_at", EQ, _in_offset(E1_NS, -7))),
    _case(NONE, rule("occurred_at", EQ, rfc3339(E1_NS - 789))),
    _case(ALL, rule("occurred_at", GT, rfc3339(E1_NS - 1))),
    _case(but("e1"), rule("occurred_at", GT, rfc3339(E1_NS))),
    _case(only("e1"), rule("occurred_at", LTE, rfc3339(E1_NS))),
    _case(NONE, rule("occurred_at", LT, rfc3339(E1_NS))),
    _case(only("e2", "e5"), rule("occurred_at", EQ, t(2), t(5))),
    _case(but("e2", "e5"), rule("occurred_at", NE, t(2), t(5))),
    _case(only("e7", "e8", "e9"), rule("occurred_at", GT, t(6))),
    _case(only("e6", "e7", "e8", "e9"), rule("occurred_at", GTE, t(6))),
    _case(only("e1"), rule("occurred_at", LT, t(2))),
    _case(only("e1", "e2"), rule("occurred_at", LTE, t(2))),
    _case(but("e1", "e2", "e3"), rule("occurred_at", GT, t(7), t(3))),
    _case(only("e1", "e2", "e3"), rule("occurred_at", LT, t(2), t(4))),
    _case(only("e9"), rule("occurred_at", EQ, t(9).replace("T", "t").replace("Z", "z"))),
    # -- resource: enum values short, any case, or full -------------------------------------
    _case(only("e1", "e2", "e8"), rule("resource", EQ, "entity")),
    _case(only("e1", "e2", "e8"), rule("resource", EQ, "ENTITY")),
    _case(only("e1", "e2", "e8"), rule("resource", EQ, "RESOURCE_TYPE_ENTITY")),
    _case(only("e1", "e2", "e8"), rule("resource", EQ, "resource_type_Entity")),
    _case(only("e4", "e5"), rule("resource", EQ, "run", "SECRET")),
    _case(only("e6"), rule("resource", EQ, "Sign_In")),
    _case(but("e1", "e2", "e8", "e6"), rule("resource", NE, "entity", "RESOURCE_TYPE_SIGN_IN")),
    # -- identifier ---------------------------------------------------------------------------
    _case(only("e1"), rule("identifier", EQ, "payments-api")),
    _case(NONE, rule("identifier", EQ, "PAYMENTS-API")),
    _case(only("e7", "e8"), rule("identifier", EQ, "checkout", "github-42")),
    _case(but("e1", "e3"), rule("identifier", NE, "payments-api", "service")),
    _case(only("e1", "e2"), rule("identifier", CONTAINS, "PAYMENTS")),
    _case(only("e9"), rule("identifier", CONTAINS, "été")),
    _case(only("e9"), rule("identifier", CONTAINS, "DÉPLOI")),
    _case(only("e7", "e8"), rule("identifier", CONTAINS, "ckou", "42")),
    _case(only("e1"), rule("identifier", STARTS, "payments")),
    _case(only("e2"), rule("identifier", STARTS, "Payments")),
    _case(only("e9"), rule("identifier", STARTS, "Été")),
    _case(NONE, rule("identifier", STARTS, "été")),
    _case(only("e4", "e5"), rule("identifier", STARTS, "run", "db")),
    _case(only("e3", "e4", "e9"), rule("identifier", GT, "r")),  # "É" sorts after "z"
    _case(only("e9"), rule("identifier", GT, "z")),
    _case(only("e3", "e9"), rule("identifier", GTE, "service")),
    _case(only("e2", "e6"), rule("identifier", LT, "c")),  # "P" < "a" < "c" in byte order
    _case(only("e2", "e6"), rule("identifier", LTE, "alice@example.com")),
    # -- blueprint ----------------------------------------------------------------------------
    _case(only("e1", "e2"), rule("blueprint", EQ, "service")),
    _case(but("e1", "e2", "e8"), rule("blueprint", EQ, "")),
    _case(but("e1", "e2"), rule("blueprint", NE, "service")),
    _case(only("e1", "e2", "e8"), rule("blueprint", CONTAINS, "SERV")),
    _case(only("e8"), rule("blueprint", STARTS, "S")),
    _case(only("e1", "e2"), rule("blueprint", STARTS, "serv")),
    _case(only("e1", "e2", "e8"), rule("blueprint", GT, "S")),
    _case(only("e1", "e2"), rule("blueprint", GTE, "service")),
    _case(but("e1", "e2"), rule("blueprint", LT, "s")),
    _case(but("e1", "e2"), rule("blueprint", LTE, "Service")),
    # -- integration --------------------------------------------------------------------------
    _case(only("e3", "e7"), rule("integration", EQ, "github-42")),
    _case(only("e8"), rule("integration", NE, "github-42", "")),
    _case(only("e3", "e7"), rule("integration", CONTAINS, "HUB")),
    _case(only("e8"), rule("integration", STARTS, "k8s")),
    _case(only("e8"), rule("integration", GT, "h")),
    _case(but("e8"), rule("integration", LTE, "github-42")),
    _case(only("e8"), rule("integration", GTE, "k8s-1")),
    _case(but("e8"), rule("integration", LT, "k")),
    # -- run_id -------------------------------------------------------------------------------
    _case(only("e4"), rule("run_id", EQ, "run-001")),
    _case(but("e4", "e8"), rule("run_id", NE, "run-001", "run-002")),
    _case(only("e8"), rule("run_id", CONTAINS, "002")),
    _case(only("e4", "e8"), rule("run_id", STARTS, "run-")),
    _case(only("e8"), rule("run_id", GTE, "run-002")),
    _case(but("e8"), rule("run_id", LT, "run-002")),
    _case(only("e4", "e8"), rule("run_id", GT, "")),
    _case(but("e8"), rule("run_id", LTE, "run-001")),
    # -- operation ----------------------------------------------------------------------------
    _case(only("e1", "e4", "e9"), rule("operation", EQ, "create")),
    _case(only("e6"), rule("operation", EQ, "OPERATION_READ")),
    _case(only("e7"), rule("operation", EQ, "timer_expired")),
    _case(only("e5"), rule("operation", EQ, "Delete")),
    _case(only("e5", "e6", "e7"), rule("operation", NE, "update", "CREATE")),
    # -- source: matches the source's id or its name ------------------------------------------
    _case(only("e1", "e6"), rule("source", EQ, "u-1")),
    _case(only("e2"), rule("source", EQ, "Bob")),
    _case(NONE, rule("source", EQ, "bob")),
    _case(only("e3", "e4"), rule("source", EQ, "gh-app", "Nightly sync")),
    _case(but("e1", "e6"), rule("source", NE, "u-1")),
    _case(but("e1", "e6"), rule("source", NE, "alice@example.com")),
    _case(but("e2", "e8"), rule("source", NE, "u-2", "carol@example.com")),
    _case(only("e1", "e6", "e8"), rule("source", CONTAINS, "EXAMPLE")),
    _case(only("e7"), rule("source", CONTAINS, "hook")),
    _case(only("e9"), rule("source", CONTAINS, "zoË")),
    _case(but("e5"), rule("source", CONTAINS, "-")),
    _case(only("e4"), rule("source", STARTS, "auto")),
    _case(only("e4"), rule("source", STARTS, "Nightly")),
    _case(NONE, rule("source", STARTS, "nightly")),
    _case(only("e1", "e2", "e6", "e8", "e9"), rule("source", STARTS, "u-")),
    _case(only("e8", "e9"), rule("source", GT, "u-2")),
    _case(only("e2", "e8", "e9"), rule("source", GTE, "u-2")),
    # A source without a name has the name "", which sorts before every other text.
    _case(only("e2", "e3", "e4", "e5", "e7", "e9"), rule("source", LT, "a")),
    _case(only("e2", "e3", "e5"), rule("source", LTE, "Bob")),
    # -- source_kind --------------------------------------------------------------------------
    _case(only("e1", "e2", "e6", "e8", "e9"), rule("source_kind", EQ, "user")),
    _case(only("e5"), rule("source_kind", EQ, "SOURCE_KIND_SYSTEM")),
    _case(only("e7"), rule("source_kind", EQ, "Webhook")),
    _case(only("e3", "e4", "e7"), rule("source_kind", NE, "user", "system")),
    # -- origin -------------------------------------------------------------------------------
    _case(only("e1", "e6"), rule("origin", EQ, "ui")),
    _case(only("e8"), rule("origin", EQ, "ORIGIN_K8S_EXPORTER")),
    _case(only("e3"), rule("origin", EQ, "github_gitops")),
    _case(only("e5"), rule("origin", EQ, "Port_Internal")),
    _case(only("e2", "e7", "e9"), rule("origin", EQ, "api", "WEBHOOK")),
    _case(but("e1", "e6", "e2", "e9"), rule("origin", NE, "UI", "origin_api")),
    # -- status -------------------------------------------------------------------------------
    _case(only("e2", "e4", "e7"), rule("status", EQ, "failure")),
    _case(but("e2", "e4", "e7"), rule("status", EQ, "STATUS_SUCCESS")),
    _case(but("e2", "e4", "e7"), rule("status", NE, "Failure")),
    _case(ALL, rule("status", EQ, "success", "failure")),
    # -- error: CONTAINS via the trigram index (>= 3 chars) and by scan (1-2 chars) ------------
    _case(only("e2"), rule("error", CONTAINS, "timeout")),
    _case(only("e2"), rule("error", CONTAINS, "TIMEOUT")),
    _case(only("e2"), rule("error", CONTAINS, "while contacting")),
    _case(only("e2", "e4"), rule("error", CONTAINS, "äbc")),
    _case(only("e2", "e4"), rule("error", CONTAINS, "ÄBC")),
    _case(NONE, rule("error", CONTAINS, "abc")),
    _case(only("e2", "e4"), rule("error", CONTAINS, "Ä")),
    _case(only("e2", "e4"), rule("error", CONTAINS, "äb")),
    _case(only("e7"), rule("error", CONTAINS, "X")),
    _case(only("e4"), rule("error", CONTAINS, "De")),
    _case(only("e2"), rule("error", CONTAINS, "ga")),
    _case(only("e2"), rule("error", CONTAINS, "zzz", "gateway")),
    _case(only("e2"), rule("error", CONTAINS, "zz", "gateway")),
    _case(only("e2", "e4"), rule("error", CONTAINS, "GATEWAY", "denied")),
    _case(NONE, rule("error", CONTAINS, 'a"b')),
    _case(NONE, rule("error", CONTAINS, "time*")),
    _case(only("e7"), rule("error", EQ, "x")),
    _case(but("e2", "e4", "e7"), rule("error", EQ, "")),
    _case(only("e2", "e4", "e7"), rule("error", NE, "")),
    _case(only("e4"), rule("error", STARTS, "perm")),
    _case(NONE, rule("error", STARTS, "Perm")),
    _case(only("e7"), rule("error", GT, "q")),
    _case(but("e2", "e4", "e7"), rule("error", LT, "T")),
    _case(only("e2", "e4", "e7"), rule("error", GTE, "x", "Timeout")),
    _case(but("e4", "e7"), rule("error", LTE, "Timeout while contacting ÄBC gateway")),
    # -- recorded_by: every event here was recorded by "dev" ----------------------------------
    _case(ALL, rule("recorded_by", EQ, "dev")),
    _case(NONE, rule("recorded_by", NE, "dev")),
    _case(ALL, rule("recorded_by", NE, "alice")),
    _case(ALL, rule("recorded_by", CONTAINS, "EV")),
    _case(ALL, rule("recorded_by", STARTS, "d")),
    _case(NONE, rule("recorded_by", STARTS, "D")),
    _case(ALL, rule("recorded_by", GT, "de")),
    _case(NONE, rule("recorded_by", GTE, "dew")),
    _case(NONE, rule("recorded_by", LT, "dev")),
    _case(ALL, rule("recorded_by", LTE, "dev")),
    # -- context.<key> ------------------------------------------------------------------------
    _case(only("e1", "e5", "e8"), rule("context.cluster", EQ, "prod")),
    _case(NONE, rule("context.cluster", EQ, "PROD")),
    _case(only("e2", "e7"), rule("context.cluster", EQ, "staging", "PROD-east")),
    _case(but("e1", "e5", "e8"), rule("context.cluster", NE, "prod")),
    _case(but("e1", "e5", "e8", "e2"), rule("context.cluster", NE, "prod", "staging")),
    _case(only("e1", "e5", "e7", "e8"), rule("context.cluster", CONTAINS, "prod")),
    _case(only("e9"), rule("context.team", CONTAINS, "ÉQUIPE ä")),
    _case(only("e7"), rule("context.cluster", STARTS, "PROD")),
    _case(only("e1", "e5", "e8"), rule("context.cluster", STARTS, "pro")),
    _case(only("e2"), rule("context.cluster", GT, "q")),
    _case(only("e1", "e2", "e5", "e8"), rule("context.cluster", GTE, "prod")),
    _case(only("e7"), rule("context.cluster", LT, "p")),
    _case(only("e7"), rule("context.cluster", LTE, "PROD-east")),
    _case(only("e1"), rule("context.region", EQ, "eu-west-1")),
    _case(only("e8"), rule("context.namespace", EQ, "shop")),
    _case(only("e3"), rule("context.repo", STARTS, "org/")),
    _case(NONE, rule("context.missing", EQ, "x")),
    # -- rules are ANDed ----------------------------------------------------------------------
    _case(only("e2"), rule("resource", EQ, "entity"), rule("status", EQ, "failure")),
    _case(
        only("e6"),
        rule("source_kind", EQ, "user"),
        rule("origin", EQ, "ui"),
        rule("operation", EQ, "read"),
    ),
    _case(only("e2", "e3", "e4"), rule("occurred_at", GTE, t(2)), rule("occurred_at", LT, t(5))),
    _case(only("e5"), rule("context.cluster", EQ, "prod"), rule("resource", EQ, "secret")),
    _case(
        only("e2", "e4", "e5", "e7", "e9"),
        rule("identifier", CONTAINS, "-"),
        rule("source", NE, "u-1"),
    ),
    _case(only("e4"), rule("error", CONTAINS, "äbc"), rule("resource", EQ, "run")),
    _case(NONE, rule("resource", EQ, "entity"), rule("resource", EQ, "run")),
]


@pytest.mark.parametrize(("filters", "expected"), CASES)
def test_filter(recorded: Recorded, filters: list[pb.Filter], expected: frozenset[str]) -> None:
    assert _labels(recorded, filters) == expected


@pytest.mark.parametrize(
    ("op", "pivot", "expected"),
    [
        pytest.param(EQ, "e3", only("e3"), id="EQUALS"),
        pytest.param(NE, "e3", but("e3"), id="NOT_EQUALS"),
        pytest.param(GT, "e4", only("e5", "e6", "e7", "e8", "e9"), id="GT"),
        pytest.param(GTE, "e4", only("e4", "e5", "e6", "e7", "e8", "e9"), id="GTE"),
        pytest.param(LT, "e2", only("e1"), id="LT"),
        pytest.param(LTE, "e2", only("e1", "e2"), id="LTE"),
    ],
)
def test_filter_recorded_at(
    recorded: Recorded, op: pb.FilterOp.ValueType, pivot: str, expected: frozenset[str]
) -> None:
    "Events were recorded one by one, e1 first: recorded_at increases with the label."
    value = rfc3339(recorded.recorded_at[pivot])
    assert _labels(recorded, [rule("recorded_at", op, value)]) == expected


def test_filter_recorded_at_several_values(recorded: Recorded) -> None:
    values = [rfc3339(recorded.recorded_at[label]) for label in ("e1", "e9")]
    assert _labels(recorded, [rule("recorded_at", EQ, *values)]) == only("e1", "e9")
    assert _labels(recorded, [rule("recorded_at", NE, *values)]) == but("e1", "e9")


def test_no_filters_returns_everything(recorded: Recorded) -> None:
    assert _labels(recorded, []) == ALL


def test_every_contract_field_is_covered() -> None:
    "Each filter field of api.md appears in the table above, with each operator it allows."
    text_fields = ["identifier", "blueprint", "integration", "run_id", "source", "error"]
    text_fields += ["recorded_by", "context.cluster"]
    enum_fields = ["resource", "operation", "source_kind", "origin", "status"]
    covered = {(f.field, f.op) for case in CASES for f in case.values[0]}
    all_ops = {EQ, NE, CONTAINS, STARTS, GT, GTE, LT, LTE}
    for field in text_fields:
        assert {op for name, op in covered if name == field} == all_ops, field
    for field in enum_fields:
        assert {op for name, op in covered if name == field} == {EQ, NE}, field
    assert {op for name, op in covered if name == "occurred_at"} == {EQ, NE, GT, GTE, LT, LTE}

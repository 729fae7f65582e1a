"""The storage contract: every behaviour the service relies on, on SQLite and PostgreSQL alike.

Filters and sorts are checked against a small reference implementation written here in
Python (``matches``, ``expected_order``): both backends must return exactly what it says.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from audit_service import models
from audit_service.ids import is_event_id
from audit_service.models import NewEvent, Operation, Origin, ResourceType, StoredEvent
from audit_service.query import (
    FIELDS,
    SORTABLE,
    Condition,
    Cursor,
    Kind,
    Op,
    Query,
    Sort,
    parse_condition,
    parse_sort,
    sort_value,
)
from audit_service.storage import Storage
from tests.helpers import rfc3339

NOW = time.time_ns()
SECOND = 1_000_000_000
DAY = 86_400 * SECOND
OpenStorage = Callable[[], Storage]


def new_event(**overrides: Any) -> NewEvent:
    values: dict[str, Any] = {
        "resource": ResourceType.ENTITY,
        "identifier": "payments-api",
        "operation": Operation.UPDATE,
        "origin": Origin.UI,
        "occurred_at": NOW,
        "recorded_by": "dev",
        "blueprint": "service",
    }
    values.update(overrides)
    return NewEvent(**values)


def list_all(storage: Storage, *conditions: Condition, order_by: str = "") -> list[StoredEvent]:
    events, cursor = storage.list_events(Query(tuple(conditions), parse_sort(order_by), 1000))
    assert cursor is None
    return events


# -- the data set the filter and sort tests share ------------------------------------------

S = models.Source
K = models.SourceKind
_ROWS: list[dict[str, Any]] = [
    {"identifier": "payments-api", "source": S(K.USER, "u-1", "alice@example.com"),
     "context": {"cluster": "prod-eu", "namespace": "payments"}},
    {"identifier": "Payments-API", "blueprint": "Service", "source": S(K.USER, "u-2", "Bob"),
     "context": {"cluster": "prod-us"}},
    {"identifier": "orders", "resource": ResourceType.BLUEPRINT, "blueprint": "",
     "operation": Operation.CREATE, "origin": Origin.API, "source": S(K.INTEGRATION, "gh-1", "")},
    {"identifier": "\u00c9COLE-svc", "integration": "gh-1", "run_id": "r-1",
     "status": models.Status.FAILURE, "error": "Timeout contacting the \u00c9COLE API",
     "context": {"cluster": "dev", "region": "eu-west-1"}},
    {"identifier": "\u00e9cole", "resource": ResourceType.RUN, "run_id": "r-2", "blueprint": "",
     "source": S(K.USER, "u-1", "alice@example.com"), "origin": Origin.PORT_AUTOMATION},
    {"identifier": "zeta", "resource": ResourceType.SECRET, "blueprint": "",
     "operation": Operation.DELETE, "recorded_by": "alice", "origin": Origin.TERRAFORM},
    {"identifier": "a%b_c\\d", "blueprint": "svc_%", "status": models.Status.FAILURE,
     "error": "100% failed_x \\ back", "context": {"cluster": "prod-%", "ns": "a_b"}},
    {"identifier": "\u03a3\u0391\u03a3 service", "source": S(K.SYSTEM, "", "System"),
     "status": models.Status.FAILURE, "error": "\u03c3\u03b1\u03c2 permission DENIED",
     "context": {"cluster": "\u00e9t\u00e9"}},
    {"identifier": "\u65e5\u672c\u8a9e-svc", "resource": ResourceType.SIGN_IN,
     "operation": Operation.READ, "blueprint": "", "recorded_by": "bob",
     "source": S(K.WEBHOOK, "wh-9", "\u65e5\u672c"), "origin": Origin.WEBHOOK},
    {"identifier": "Zeta", "integration": "k8s-prod", "resource": ResourceType.INTEGRATION,
     "operation": Operation.TIMER_EXPIRED, "origin": Origin.K8S_EXPORTER,
     "source": S(K.AUTOMATION, "auto-1", "nightly"), "context": {"cluster": "prod-eu"}},
    {"identifier": "payments-api", "run_id": "r-1", "recorded_by": "alice",
     "status": models.Status.FAILURE, "error": "timeout", "source": S(K.USER, "u-3", "carol")},
    {"identifier": "\U0001f600 emoji", "blueprint": "\U0001f600", "context": {"\u00e9": "x"}},
]  # fmt: skip


def _dataset() -> list[list[NewEvent]]:
    """Three batches; occurred_at ties (rows 0-2, 6-7) exercise the tie-break by id."""
    offsets = [0, 0, 0, -5, -9, 3, 7, 7, -2, 11, -20, 1]
    events = [
        new_event(**row, occurred_at=NOW - 30 * SECOND + offset * SECOND)
        for row, offset in zip(_ROWS, offsets, strict=True)
    ]
    return [events[:4], events[4:9], events[9:]]


@pytest.fixture
def loaded(storage: Storage) -> tuple[Storage, list[StoredEvent]]:
    for batch in _dataset():
        storage.insert_batch(batch)
    stored = list_all(storage)
    assert len(stored) == len(_ROWS)
    return storage, stored


# -- the reference implementation ----------------------------------------------------------


def _values_of(event: StoredEvent, c: Condition) -> list[str | int] | None:
    "The values a rule looks at (source: id and name); None when a context key is absent."
    if c.context_key is not None:
        found = event.context.get(c.context_key)
        return None if found is None else [found]
    if c.field == "source":
        return [event.source.id, event.source.name]
    if c.field == "source_id":
        return [event.source.id]
    value = sort_value(event, Sort(c.field, c.kind, False))
    return [value]


def _compare(value: str | int, op: Op, wanted: str | int) -> bool:
    if op is Op.EQUALS:
        return value == wanted
    if op is Op.CONTAINS:
        return str(wanted).casefold() in str(value).casefold()
    if op is Op.STARTS_WITH:
        return str(value).startswith(str(wanted))
    # Python compares str by code point: the same order as UTF-8 bytes.
    if op is Op.GT:
        return value > wanted  # type: ignore[operator]
    if op is Op.GTE:
        return value >= wanted  # type: ignore[operator]
    if op is Op.LT:
        return value < wanted  # type: ignore[operator]
    return value <= wanted  # type: ignore[operator]


def matches(event: StoredEvent, c: Condition) -> bool:
    values = _values_of(event, c)
    if c.op is Op.NOT_EQUALS:
        return values is None or all(v not in c.values for v in values)
    if values is None:
        return False
    return any(_compare(v, c.op, w) for v in values for w in c.values)


def expected_order(events: list[StoredEvent], sort: Sort) -> list[str]:
    ordered = sorted(events, key=lambda e: (sort_value(e, sort), e.id), reverse=sort.descending)
    return [e.id for e in ordered]


# -- inserts and idempotency ---------------------------------------------------------------


def test_a_batch_gets_one_outcome_per_event_with_unique_time_ordered_ids(
    storage: Storage,
) -> None:
    outcomes = storage.insert_batch([new_event(identifier=f"e{i}") for i in range(5)])
    assert len(outcomes) == 5
    assert not any(o.duplicate for o in outcomes)
    ids = [o.id for o in outcomes]
    assert all(is_event_id(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert len({o.recorded_at for o in outcomes}) == 1
    later = storage.insert_batch([new_event(identifier="later")])
    assert later[0].id > ids[-1]
    assert later[0].recorded_at >= outcomes[0].recorded_at


def test_idempotency_within_one_batch(storage: Storage) -> None:
    outcomes = storage.insert_batch(
        [
            new_event(identifier="first", idempotency_key="k1"),
            new_event(identifier="repeat", idempotency_key="k1"),
            new_event(identifier="other", idempotency_key="k2"),
            new_event(identifier="no key"),
            new_event(identifier="no key"),
            new_event(identifier="again", idempotency_key="k1"),
            new_event(identifier="another principal", idempotency_key="k1", recorded_by="bob"),
        ]
    )
    first = outcomes[0]
    assert [o.duplicate for o in outcomes] == [False, True, False, False, False, True, False]
    assert outcomes[1].id == outcomes[5].id == first.id
    assert outcomes[1].recorded_at == first.recorded_at
    assert len({outcomes[i].id for i in (0, 2, 3, 4, 6)}) == 5
    stored = list_all(storage)
    assert sorted(e.identifier for e in stored) == sorted(
        ["first", "other", "no key", "no key", "another principal"]
    )
    by_id = {e.id: e for e in stored}
    assert by_id[first.id].idempotency_key == "k1"
    assert by_id[outcomes[3].id].idempotency_key == ""


def test_idempotency_across_batches_and_reopens(open_db: OpenStorage) -> None:
    storage = open_db()
    [first] = storage.insert_batch([new_event(identifier="first", idempotency_key="k")])
    again = storage.insert_batch(
        [new_event(identifier="repeat", idempotency_key="k"), new_event(identifier="new")]
    )
    assert again[0].duplicate
    assert again[0].id == first.id
    assert again[0].recorded_at == first.recorded_at
    assert not again[1].duplicate
    storage.close()
    reopened = open_db()
    [third] = reopened.insert_batch([new_event(identifier="third", idempotency_key="k")])
    assert third.duplicate
    assert third.id == first.id
    [fresh] = reopened.insert_batch([new_event(identifier="after reopen")])
    assert fresh.id > again[1].id  # ids keep increasing after a restart
    assert sorted(e.identifier for e in list_all(reopened)) == ["after reopen", "first", "new"]


def test_get_event_returns_every_field_and_the_snapshots(storage: Storage) -> None:
    before = {
        "replicas": 2,
        "ratio": 0.1,
        "huge": 1e300,
        "big_int": 2**53,
        "tiny": 5e-324,
        "negative": -7,
        "nested": {"list": [1, "two", None, True, False, {"deep": []}], "empty": {}},
        "unicode": "\u00e9\u65e5\U0001f600",
        "nul": "a\x00b",
        "quote": 'say "hi" \\ there',
    }
    event = new_event(
        identifier="full",
        resource=ResourceType.ACTION,
        operation=Operation.CREATE,
        origin=Origin.GITHUB_GITOPS,
        occurred_at=NOW - 123_456_789,
        source=models.Source(models.SourceKind.USER, "u-9", "Ann \u00c5"),
        status=models.Status.FAILURE,
        error="bad thing",
        integration="int-1",
        run_id="run-7",
        idempotency_key="idem",
        before=before,
        after={},
        context={"cluster": "prod", "\u00e9": "\U0001f600"},
    )
    [outcome] = storage.insert_batch([event])
    stored = storage.get_event(outcome.id)
    assert stored is not None
    assert stored == StoredEvent(
        id=outcome.id,
        recorded_at=outcome.recorded_at,
        recorded_by="dev",
        resource=ResourceType.ACTION,
        identifier="full",
        operation=Operation.CREATE,
        origin=Origin.GITHUB_GITOPS,
        occurred_at=NOW - 123_456_789,
        source=models.Source(models.SourceKind.USER, "u-9", "Ann \u00c5"),
        status=models.Status.FAILURE,
        error="bad thing",
        blueprint="service",
        integration="int-1",
        run_id="run-7",
        idempotency_key="idem",
        context={"cluster": "prod", "\u00e9": "\U0001f600"},
        diff_available=True,
        before=before,
        after={},
    )
    assert type(stored.before["huge"]) is float  # type: ignore[index]
    assert type(stored.before["big_int"]) is int  # type: ignore[index]
    assert stored.before["nested"]["list"][3] is True  # type: ignore[index]


def test_get_event_without_snapshots_and_unknown_ids(storage: Storage) -> None:
    [outcome] = storage.insert_batch([new_event(operation=Operation.READ)])
    stored = storage.get_event(outcome.id)
    assert stored is not None
    assert stored.before is None
    assert stored.after is None
    assert not stored.diff_available
    assert storage.get_event(str(uuid.UUID(int=uuid.UUID(outcome.id).int + 1))) is None
    assert storage.get_event("not-an-id") is None


def test_list_loads_snapshots_only_when_asked(storage: Storage) -> None:
    storage.insert_batch([new_event(before={"a": 1}, after={"a": 2})])
    sort = parse_sort("")
    [plain], _ = storage.list_events(Query((), sort, 10))
    assert plain.before is None
    assert plain.after is None
    assert plain.diff_available
    [full], _ = storage.list_events(Query((), sort, 10, include_snapshots=True))
    assert full.before == {"a": 1}
    assert full.after == {"a": 2}


# -- filters -------------------------------------------------------------------------------

_TEXT_VALUES: dict[str, list[list[str]]] = {
    "identifier": [
        ["payments-api"], ["PAYMENTS-API"], ["Payments-API", "orders"], ["payments"],
        ["\u00e9cole"], ["\u00c9COLE"], ["COLE"], ["a%b"], ["%"], ["_"], ["\\"], ["b_c"],
        ["\u03c3\u03b1\u03c3"], ["\u03a3\u0391\u03a3"], ["\u65e5\u672c"], ["Z"], ["zeta"],
        ["\U0001f600"], ["missing"], ["payments-api\x00"], ["pay\x00"], ["zeta", "\x00"],
        ["\u00e9"], ["\uffff"],
    ],
    "blueprint": [["service"], ["SERVICE"], [""], ["svc_"], ["svc_%"], ["ser"], ["\U0001f600"]],
    "integration": [["gh-1"], [""], ["k8s"], ["GH"], ["gh-1", "k8s-prod"]],
    "run_id": [["r-1"], ["r-"], ["R-2"], [""], ["r-1", "r-2"]],
    "source": [
        ["u-1"], ["alice@example.com"], ["ALICE"], ["u-"], ["gh-1"], ["System"], ["\u65e5"],
        [""], ["nightly", "carol"],
    ],
    "error": [
        ["timeout"], ["TIMEOUT"], ["Timeout"], ["\u00e9cole"], ["\u00c9COLE API"], ["100%"],
        ["failed_x"], ["_x"], ["\\ back"], ["denied"], ["\u03a3\u0391\u03a3"],
        ["\u03c3\u03b1\u03c3"], ["ti"], ["t"], [""], ["permission", "nothing"], ["e\x00"],
    ],
    "recorded_by": [["dev"], ["ALICE"], ["al"], ["bob", "alice"], ["c"]],
    "context.cluster": [
        ["prod-eu"], ["prod-"], ["PROD"], ["prod-%"], ["%"], ["\u00c9T\u00c9"], ["dev"],
        ["prod-eu", "dev"], ["p"], ["\x00"],
    ],
    "context.region": [["eu-west-1"], ["EU"], ["eu-west-2"]],
    "context.ns": [["a_b"], ["a%"], ["_"]],
    "context.\u00e9": [["x"], ["X"]],
    "context.absent": [["x"], [""]],
    "context.a\x00b": [["x"]],
}  # fmt: skip
_TIME_OFFSETS = [-21, -20, -9, 0, 3, 7, 11, 12]
_ENUM_VALUES: dict[str, list[list[str]]] = {
    "resource": [["entity"], ["RESOURCE_TYPE_RUN", "secret"], ["SIGN_IN"], ["scorecard"]],
    "operation": [["update"], ["CREATE", "OPERATION_DELETE"], ["read"], ["timer_expired"]],
    "source_kind": [["user"], ["UNSPECIFIED"], ["SOURCE_KIND_SYSTEM", "webhook"]],
    "origin": [["ui"], ["api", "ORIGIN_TERRAFORM"], ["k8s_exporter"], ["pulumi"]],
    "status": [["success"], ["STATUS_FAILURE"]],
}


def _rules_for(field: str, stored: list[StoredEvent]) -> list[Condition]:
    rules: list[Condition] = []
    if field in _ENUM_VALUES:
        for values in _ENUM_VALUES[field]:
            for op in ("EQUALS", "NOT_EQUALS"):
                rules.append(parse_condition(field, op, values, "f"))
        return rules
    if field in ("occurred_at", "recorded_at"):
        times = sorted({getattr(e, field) for e in stored})
        if field == "occurred_at":
            candidates = [NOW - 30 * SECOND + o * SECOND for o in _TIME_OFFSETS]
        else:
            candidates = [times[0] - 1, *times, times[-1] + 1]
        for ns in candidates:
            for op in ("EQUALS", "NOT_EQUALS", "GT", "GTE", "LT", "LTE"):
                rules.append(parse_condition(field, op, [rfc3339(ns)], "f"))
        rules.append(parse_condition(field, "EQUALS", [rfc3339(times[0]), rfc3339(times[-1])], "f"))
        return rules
    for values in _TEXT_VALUES[field]:
        for op in Op:
            if op in (Op.CONTAINS, Op.STARTS_WITH) and "" in values:
                continue  # refused by parse_condition: needs a non-empty value
            rules.append(parse_condition(field, op.value, values, "f"))
    return rules


FILTER_FIELDS = [
    *(f for f in FIELDS if f != "snapshot_text"),  # (its own test below: it needs snapshots)
    *(f for f in _TEXT_VALUES if f.startswith("context.")),
]


@pytest.mark.parametrize("field", FILTER_FIELDS)
def test_every_filter_op_matches_the_reference(
    loaded: tuple[Storage, list[StoredEvent]], field: str
) -> None:
    storage, stored = loaded
    wrong: list[str] = []
    rules = _rules_for(field, stored)
    assert rules
    for rule in rules:
        want = [e.id for e in stored if matches(e, rule)]
        got = [e.id for e in list_all(storage, rule)]
        if got != want:
            names = {e.id: e.identifier for e in stored}
            wrong.append(
                f"{rule.op.value} {rule.values!r}: got {[names[i] for i in got]},"
                f" want {[names[i] for i in want]}"
            )
    assert not wrong, f"{field}:\n" + "\n".join(wrong)


def test_rules_are_anded_and_members_see_their_runs(
    loaded: tuple[Storage, list[StoredEvent]],
) -> None:
    storage, stored = loaded
    rules = (
        parse_condition("identifier", "CONTAINS", ["pay"], "f"),
        parse_condition("status", "EQUALS", ["failure"], "f"),
        parse_condition("context.cluster", "NOT_EQUALS", ["prod-us"], "f"),
    )
    assert [e.identifier for e in list_all(storage, *rules)] == ["payments-api"]
    # The condition audit_log adds for members: RUN events whose source id is theirs.
    mine = (
        Condition("resource", Kind.ENUM, Op.EQUALS, ("RUN",)),
        Condition("source_id", Kind.TEXT, Op.EQUALS, ("u-1",)),
    )
    want = [e.id for e in stored if all(matches(e, c) for c in mine)]
    assert want
    assert [e.id for e in list_all(storage, *mine)] == want


# -- sorting and keyset pages ----------------------------------------------------------------


@pytest.mark.parametrize("field", list(SORTABLE))
def test_every_sort_in_keyset_pages_matches_the_reference(
    loaded: tuple[Storage, list[StoredEvent]], field: str
) -> None:
    storage, stored = loaded
    for direction in ("asc", "desc"):
        sort = parse_sort(f"{field} {direction}")
        want = expected_order(stored, sort)
        assert [e.id for e in list_all(storage, order_by=str(sort))] == want
        got: list[str] = []
        cursor: Cursor | None = None
        while True:
            page, cursor = storage.list_events(Query((), sort, 5, after=cursor))
            got += [e.id for e in page]
            if cursor is None:
                break
            assert cursor == Cursor(sort_value(page[-1], sort), page[-1].id)
        assert got == want, f"{sort}"


def test_pages_neither_skip_nor_repeat_while_events_arrive_and_expire(storage: Storage) -> None:
    batch = [new_event(identifier=f"e{i}", occurred_at=NOW - (i % 7) * SECOND) for i in range(30)]
    storage.insert_batch(batch)
    before = {e.id for e in list_all(storage)}
    sort = parse_sort("occurred_at desc")
    seen: list[str] = []
    page, cursor = storage.list_events(Query((), sort, 4))
    seen += [e.id for e in page]
    while cursor is not None:
        # New events land on both sides of the cursor meanwhile.
        storage.insert_batch(
            [
                new_event(identifier="new", occurred_at=NOW + SECOND),
                new_event(identifier="new", occurred_at=NOW - 8 * SECOND),
            ]
        )
        page, cursor = storage.list_events(Query((), sort, 4, after=cursor))
        seen += [e.id for e in page]
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


def test_a_cursor_whose_event_was_deleted_still_continues(storage: Storage) -> None:
    storage.insert_batch(
        [new_event(identifier=f"e{i}", occurred_at=NOW - i * SECOND) for i in range(6)]
    )
    sort = parse_sort("occurred_at desc")
    page, cursor = storage.list_events(Query((), sort, 3))
    assert [e.identifier for e in page] == ["e0", "e1", "e2"]
    assert cursor is not None
    # e2 (the cursor's event) and older events expire; the page after it goes on from there.
    deleted = storage.delete_expired(ResourceType.ENTITY, NOW - 2 * SECOND + 1, 100)
    assert deleted == 4
    rest, end = storage.list_events(Query((), sort, 3, after=cursor))
    assert rest == []
    assert end is None
    storage.insert_batch([new_event(identifier="old", occurred_at=NOW - 10 * SECOND)])
    rest, _ = storage.list_events(Query((), sort, 3, after=cursor))
    assert [e.identifier for e in rest] == ["old"]


# -- retention deletes ---------------------------------------------------------------------


def test_delete_expired_takes_the_oldest_of_one_type_in_bounded_batches(
    storage: Storage,
) -> None:
    storage.insert_batch(
        [
            *(
                new_event(
                    identifier=f"old{i}", occurred_at=NOW - (100 + i) * DAY, idempotency_key=f"k{i}"
                )
                for i in range(5)
            ),
            new_event(identifier="recent", occurred_at=NOW - DAY),
            new_event(identifier="old run", resource=ResourceType.RUN, occurred_at=NOW - 100 * DAY),
        ]
    )
    cutoff = NOW - 90 * DAY
    assert storage.delete_expired(ResourceType.ENTITY, cutoff, 2) == 2
    left = {e.identifier for e in list_all(storage)}
    assert left == {"old0", "old1", "old2", "recent", "old run"}  # the oldest went first
    assert storage.delete_expired(ResourceType.ENTITY, cutoff, 10) == 3
    assert storage.delete_expired(ResourceType.ENTITY, cutoff, 10) == 0
    assert {e.identifier for e in list_all(storage)} == {"recent", "old run"}
    # Their idempotency keys went with them: the same key stores a new event.
    [again] = storage.insert_batch([new_event(identifier="again", idempotency_key="k0")])
    assert not again.duplicate


def test_sweep_removes_what_is_past_retention_of_each_type(storage: Storage) -> None:
    from audit_service.retention import RetentionPolicy, sweep
    from audit_service.writer import GroupCommitWriter

    ages = {"e-400d": 400, "e-200d": 200, "e-95d": 95, "e-80d": 80, "e-1d": 1}
    storage.insert_batch(
        [
            *(
                new_event(
                    identifier=name,
                    occurred_at=NOW - days * DAY,
                    idempotency_key=name,
                    before={"n": days},
                    context={"age": name},
                )
                for name, days in ages.items()
            ),
            new_event(
                identifier="s-40d", resource=ResourceType.SIGN_IN, occurred_at=NOW - 40 * DAY
            ),
            new_event(
                identifier="s-20d", resource=ResourceType.SIGN_IN, occurred_at=NOW - 20 * DAY
            ),
            new_event(
                identifier="x-300d", resource=ResourceType.SECRET, occurred_at=NOW - 300 * DAY
            ),
        ]
    )
    writer = GroupCommitWriter(storage)
    try:
        policy = RetentionPolicy(90, {ResourceType.SIGN_IN: 30, ResourceType.SECRET: 365})
        removed = sweep(writer.storage, policy, NOW, batch_size=2)
        assert removed == {ResourceType.ENTITY: 3, ResourceType.SIGN_IN: 1}
        assert sweep(writer.storage, policy, NOW, batch_size=2) == {}
    finally:
        writer.close()
    assert {e.identifier for e in list_all(storage)} == {"e-80d", "e-1d", "s-20d", "x-300d"}
    hits = list_all(storage, parse_condition("context.age", "STARTS_WITH", ["e-"], "f"))
    assert {e.identifier for e in hits} == {"e-80d", "e-1d"}
    [old] = storage.insert_batch([new_event(identifier="e-400d", idempotency_key="e-400d")])
    assert not old.duplicate
    [kept] = storage.insert_batch([new_event(identifier="e-80d", idempotency_key="e-80d")])
    assert kept.duplicate


# -- the server key, SECRET fingerprints and page tokens through AuditLog --------------------


def _audit_log(storage: Storage) -> Any:
    from audit_service.audit_log import AuditLog
    from audit_service.page_tokens import PageTokens
    from audit_service.secrets_redaction import SecretFingerprinter
    from audit_service.writer import GroupCommitWriter

    key = storage.server_key()
    writer = GroupCommitWriter(storage)
    log = AuditLog(
        storage,
        writer,
        SecretFingerprinter(key.derive("secret-fingerprints")),
        PageTokens(key.derive("page-tokens")),
    )
    return log, writer


def test_the_server_key_is_the_same_for_every_opener(open_db: OpenStorage, backend: str) -> None:
    first = open_db()
    if backend == "sqlite":
        first.close()  # one process owns a SQLite database at a time: the next opener
    second = open_db()
    assert first.server_key().derive("x") == second.server_key().derive("x")


def test_secret_fingerprints_and_page_tokens_agree_between_openers(
    open_db: OpenStorage, backend: str
) -> None:
    """What one opener fingerprints or pages, another reads alike. PostgreSQL replicas are
    open at once; a SQLite database has one opener at a time, so there they take turns."""
    from audit_service.principals import DEV_PRINCIPAL

    writers: list[Any] = []  # GroupCommitWriter

    def next_opener() -> Any:  # AuditLog
        if backend == "sqlite" and writers:
            writers[-1].close()
            writers[-1].storage.close()
        log, writer = _audit_log(open_db())
        writers.append(writer)
        return log

    try:
        secret = new_event(
            resource=ResourceType.SECRET,
            identifier="db-password",
            blueprint="",
            before={"password": "hunter2", "nested": {"token": "tok-QZ"}},
            after={"password": "correct horse", "nested": {"token": "tok-QZ"}},
        )
        one = next_opener()
        [first] = one.record(DEV_PRINCIPAL, [secret])
        diff_one = one.get_diff(DEV_PRINCIPAL, first.id)
        two = next_opener()
        [second] = two.record(DEV_PRINCIPAL, [replace(secret, identifier="db-password-2")])
        diff_two = two.get_diff(DEV_PRINCIPAL, second.id)
        text = repr(diff_one) + repr(diff_two)
        assert "hunter2" not in text
        assert "correct horse" not in text
        assert "tok-QZ" not in text
        assert diff_one.before == diff_two.before  # same values, same fingerprints
        assert diff_one.before["password"].startswith("hmac-sha256:")
        assert diff_one.before["password"] != diff_one.after["password"]
        assert [op["path"] for op in diff_one.patch] == ["/password"]
        # Readable from either opener; page tokens of one work on the other.
        assert two.get_diff(DEV_PRINCIPAL, first.id) == diff_one
        two.record(DEV_PRINCIPAL, [new_event(identifier=f"e{i}") for i in range(5)])
        query = Query((), parse_sort("identifier asc"), 3)
        page = two.list(DEV_PRINCIPAL, query, "")
        three = next_opener() if backend == "sqlite" else one
        rest = three.list(DEV_PRINCIPAL, replace(query, page_size=10), page.next_page_token)
        names = [e.identifier for e in page.events + rest.events]
        assert names == ["db-password", "db-password-2", "e0", "e1", "e2", "e3", "e4"]
        assert three.get_diff(DEV_PRINCIPAL, second.id) == diff_two
    finally:
        for writer in writers:
            writer.close()


def test_diffs_of_stored_events(storage: Storage) -> None:
    from audit_service.principals import DEV_PRINCIPAL

    log, writer = _audit_log(storage)
    try:
        [update, delete, read] = log.record(
            DEV_PRINCIPAL,
            [
                new_event(before={"replicas": 2, "tier": "silver"}, after={"replicas": 3}),
                new_event(operation=Operation.DELETE, before={"a": [1, 2]}),
                new_event(operation=Operation.READ, before={"a": 1}),
            ],
        )
        diff = log.get_diff(DEV_PRINCIPAL, update.id)
        assert diff.available
        assert sorted(diff.patch, key=lambda op: op["path"]) == [
            {"op": "replace", "path": "/replicas", "value": 3},
            {"op": "remove", "path": "/tier"},
        ]
        gone = log.get_diff(DEV_PRINCIPAL, delete.id)
        assert gone.available
        assert gone.after == {}
        assert gone.patch
        assert not log.get_diff(DEV_PRINCIPAL, read.id).available
    finally:
        writer.close()


# -- snapshot_text ---------------------------------------------------------------------------


def _snapshot_strings(value: Any) -> set[str]:
    "The keys and string values anywhere in ``value`` (what snapshot_text searches)."
    if isinstance(value, dict):
        return set(value) | {s for v in value.values() for s in _snapshot_strings(v)}
    if isinstance(value, list):
        return {s for v in value for s in _snapshot_strings(v)}
    return {value} if isinstance(value, str) else set()


_SNAPSHOTS: list[tuple[models.JSONObject | None, models.JSONObject | None]] = [
    ({"image": "nginx:1.25", "replicas": 3}, {"image": "nginx:1.27", "replicas": 3}),
    (None, {"owner": "Team-Payments", "labels": {"tier": "gold"}, "ports": [8080, "http-alt"]}),
    ({"title": "\u00c9cole des donn\u00e9es", "on_call": True}, None),
    ({"note": "line one\nline two", "n": 12345}, {"note": "replaced", "list": [["deep-nested"]]}),
    (None, None),
]


def test_snapshot_text_contains_matches_keys_and_string_values(storage: Storage) -> None:
    storage.insert_batch(
        [
            new_event(identifier=f"s{i}", before=before, after=after)
            for i, (before, after) in enumerate(_SNAPSHOTS)
        ]
    )
    stored = {e.identifier: e for e in list_all(storage)}
    texts = {
        f"s{i}": sorted(_snapshot_strings(before) | _snapshot_strings(after))
        for i, (before, after) in enumerate(_SNAPSHOTS)
    }
    for needles in (
        ["nginx:1.2"], ["NGINX:1.27"], ["team-pay"], ["gold"], ["TIER"], ["\u00e9cole"],
        ["http-alt"], ["deep-nested"], ["line two"], ["replicas"], ["12345"], ["true"],
        ["on_call"], ["absent"], ["gold", "nginx"], ['"image"'], ["image\":"],
    ):  # fmt: skip
        rule = parse_condition("snapshot_text", "CONTAINS", needles, "f")
        want = sorted(
            name
            for name, strings in texts.items()
            if any(n.casefold() in s.casefold() for n in needles for s in strings)
        )
        got = sorted(e.identifier for e in list_all(storage, rule))
        assert got == want, needles
    assert stored["s4"].diff_available is False


def test_retention_deletes_take_events_out_of_text_searches(storage: Storage) -> None:
    old = NOW - 100 * DAY
    storage.insert_batch(
        [
            new_event(identifier="old", occurred_at=old, after={"k": "findme-old"},
                      status=models.Status.FAILURE, error="findme error old"),
            new_event(identifier="new", after={"k": "findme-new"},
                      status=models.Status.FAILURE, error="findme error new"),
        ]
    )  # fmt: skip
    assert storage.delete_expired(ResourceType.ENTITY, NOW - 90 * DAY, 100) == 1
    for field in ("snapshot_text", "error"):
        rule = parse_condition(field, "CONTAINS", ["findme"], "f")
        assert [e.identifier for e in list_all(storage, rule)] == ["new"], field

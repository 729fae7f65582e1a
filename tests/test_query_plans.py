"""No filter or sort of the contract reads the whole events table (SQLite, EXPLAIN QUERY PLAN).

Every query is planned as it would be at a million events (the schema's fixed planner
statistics), for every filter field with every operator it takes, inside one tab and across
all of them, and for every sort in both directions. What is asserted:

- ``events`` is never scanned without an index, and never through an index it walks in full
  without a constraint: every access is a SEARCH (an indexed lookup or an indexed range) or
  the ordered walk of ``events_occurred_at`` (the whole log, newest first), which stops after
  one page;
- a sort takes its order from an index: a sorter (temp B-tree) only ever sorts one page, never
  rows read from ``events``;
- a rule an index can answer (EQUALS, STARTS_WITH, the ranges, CONTAINS on error and
  snapshot_text, any rule on context.<key>) is looked up by that index when it matches few
  events, so a rare value is found without walking the tab. (The text indexes and the
  context table are searched by a statement of their own first; the page query then reads
  the seqs they found, ``json_each``.)

- a page cursor seeks past its run of equal sort values (two branches, each a seek), a
  common rule on a column the tab's date index holds is checked in that index (no events
  rows read), and a rare source or error rule is looked up in an index that carries the date.
- sorted by date, a context EQUALS or STARTS_WITH rule is a walk of ``event_context`` in date
  order (one branch per value and tab), rare or common, unless another rule is looked up.

NOT_EQUALS, and CONTAINS on the other text fields, no index can answer: those are checked
while the query walks its sort order inside the tab (still a SEARCH on resource).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from audit_service.models import NewEvent, Operation, Origin, ResourceType, Source, SourceKind
from audit_service.query import (
    FIELDS,
    OPS_BY_KIND,
    SORTABLE,
    Condition,
    Cursor,
    Kind,
    Op,
    Query,
    parse_condition,
    parse_sort,
)
from audit_service.storage import sqlite_query, sqlite_rows, sqlite_schema
from audit_service.storage.sqlite import SQLiteStorage

NOW = 1_800_000_000_000_000_000
VALUES = {
    Kind.TIME: "2027-01-15T00:00:00Z",
    Kind.ENUM: "failure",
    Kind.TEXT: "value-1",
    Kind.SEARCH: "value-1",
}
ENUM_VALUES = {
    "resource": "entity",
    "operation": "delete",
    "source_kind": "webhook",
    "origin": "pulumi",
    "status": "failure",
}
# Fields whose index a rare value is looked up by (source: its id and its name).
LOOKUP_INDEX = {
    "source": ("events_resource_source_id", "events_resource_source_name"),
    "error": ("events_resource_error", "events_resource_failure", "json_each"),
    "snapshot_text": ("json_each",),
}
INDEX_OPS = {Op.EQUALS, Op.STARTS_WITH, Op.GT, Op.GTE, Op.LT, Op.LTE}
# A walk of one context value's events in one tab, in date order.
WALK = "SEARCH ec USING PRIMARY KEY (key=? AND value=? AND resource=?"


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStorage]:
    store = SQLiteStorage(Path(tmp_path_factory.mktemp("plans")) / "plans.db")
    store.insert_batch(
        [
            NewEvent(
                resource=ResourceType.ENTITY, identifier="value-1", operation=Operation.UPDATE,
                origin=Origin.UI, occurred_at=NOW, recorded_by="value-1", blueprint="value-1",
                source=Source(SourceKind.USER, "value-1", "value-1"), error="",
                after={"k": "value-1"}, context={"cluster": "value-1"},
            )
        ]
    )  # fmt: skip
    store.wait_applied()  # the context rows a STARTS_WITH rule's values are read from
    yield store
    store.close()


def plan(storage: SQLiteStorage, query: Query) -> list[tuple[int, int, str]]:
    "EXPLAIN QUERY PLAN of what ``list_events`` runs: (id, parent, detail) rows."
    sql, params = storage.list_sql(query)
    rows = storage._reader().execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return [(r[0], r[1], r[3]) for r in rows]


def assert_reads_no_whole_table(steps: list[tuple[int, int, str]], what: str) -> None:
    details = [detail for _, _, detail in steps]
    for detail in details:
        if re.match(r"SCAN e\b", detail):
            assert detail == "SCAN e USING INDEX events_occurred_at", f"{what}: {details}"
        assert not re.match(r"SCAN (events|event_context|snapshots)\b", detail), (
            f"{what}: {details}"
        )
    # A sorter sorts the rows of its own SELECT (the plan nodes beside it): it may sort the
    # page's rows (fetched by seq), branches' pages (subqueries), or a rule's few matches
    # looked up by its index; never rows of a walk through events.
    levels: dict[int, list[str]] = {}
    for _, parent, detail in steps:
        levels.setdefault(parent, []).append(detail)
    for siblings in levels.values():
        if not any(d.startswith("USE TEMP B-TREE FOR ORDER BY") for d in siblings):
            continue
        for detail in siblings:
            if re.match(r"(SEARCH|SCAN) e\b", detail):
                allowed = detail.startswith("SEARCH e USING INTEGER PRIMARY KEY") or _sorts_few(
                    detail
                )
                assert allowed, f"{what}: sorts the rows of {detail!r}: {details}"


def _sorts_few(detail: str) -> bool:
    "A lookup of a rule's (few) matches, which are then sorted: allowed, see MANY_MATCHES."
    return bool(
        re.match(r"SEARCH e USING (COVERING )?INDEX events_resource_\w+ \(resource=\? AND ", detail)
        or detail.startswith(("SCAN error_fts VIRTUAL", "SCAN snapshot_fts VIRTUAL"))
        or detail.startswith("SEARCH event_context USING PRIMARY KEY (key=?")
        or detail.startswith("MULTI-INDEX OR")
        or detail.startswith("SEARCH e USING INDEX events_occurred_at (occurred_at=")
        or re.match(r"SEARCH e USING INDEX events_resource_\w+ \(resource=\? AND", detail)
    )


def _value(field: str, kind: Kind) -> str:
    return ENUM_VALUES.get(field, VALUES[kind]) if kind is Kind.ENUM else VALUES[kind]


def _filter_cases() -> Iterator[tuple[str, Op]]:
    for name, spec in FIELDS.items():
        for op in sorted(OPS_BY_KIND[spec.kind]):
            yield name, op
    for op in sorted(OPS_BY_KIND[Kind.TEXT]):
        yield "context.cluster", op


@pytest.mark.parametrize(("field", "op"), list(_filter_cases()))
@pytest.mark.parametrize("tab", [True, False], ids=["one tab", "all tabs"])
@pytest.mark.parametrize("common", [False, True], ids=["rare value", "common value"])
def test_every_filter_is_answered_without_reading_the_whole_table(
    storage: SQLiteStorage,
    field: str,
    op: Op,
    tab: bool,
    common: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if common:  # as if every rule matched more than MANY_MATCHES events: walked, not looked up
        monkeypatch.setattr(sqlite_query, "MANY_MATCHES", 0)
        monkeypatch.setattr(sqlite_query, "MANY_FOR_DATE_WALK", 0)
    kind = FIELDS[field].kind if field in FIELDS else Kind.TEXT
    rule = parse_condition(field, op.value, [_value(field, kind)], "f")
    conditions: tuple[Condition, ...] = (rule,)
    if tab and field != "resource":
        conditions = (parse_condition("resource", "EQUALS", ["entity"], "f"), rule)
    steps = plan(storage, Query(conditions, parse_sort(""), 100))
    what = f"{field} {op.value} ({'one tab' if tab else 'all tabs'})"
    assert_reads_no_whole_table(steps, what)
    details = " | ".join(detail for _, _, detail in steps)
    if common:
        return
    if op in INDEX_OPS or (op is Op.CONTAINS and field in ("error", "snapshot_text")):
        if field.startswith("context.") and op in (Op.EQUALS, Op.STARTS_WITH):
            assert WALK in details, f"{what}: {details}"
        elif field.startswith("context."):
            assert "json_each" in details, what
        elif field == "resource" or field == "occurred_at":
            pass  # the tab itself, or the sort's own index
        else:
            indexes = LOOKUP_INDEX.get(field, (f"events_resource_{field}",))
            assert any(index in details for index in indexes), f"{what}: {details}"


@pytest.mark.parametrize("field", SORTABLE)
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("tab", [True, False], ids=["one tab", "all tabs"])
def test_every_sort_takes_its_order_from_an_index(
    storage: SQLiteStorage, field: str, descending: bool, tab: bool
) -> None:
    conditions = (parse_condition("resource", "EQUALS", ["run"], "f"),) if tab else ()
    sort = parse_sort(f"{field} {'desc' if descending else 'asc'}")
    for after in (None, Cursor("value-1" if field != "occurred_at" else NOW, "0" * 36)):
        if after is not None and FIELDS[field].kind is Kind.TIME:
            after = Cursor(NOW, after.id)
        steps = plan(storage, Query(conditions, sort, 100, after=after))
        what = f"order_by {sort} ({'one tab' if tab else 'all tabs'}, cursor {after})"
        assert_reads_no_whole_table(steps, what)
        details = " | ".join(detail for _, _, detail in steps)
        index = "events_resource" if field == "resource" else f"events_resource_{field}"
        if field == "occurred_at" and not tab:
            index = "events_occurred_at"
        assert f"INDEX {index} " in details + " ", f"{what}: {details}"


@pytest.mark.parametrize("field", SORTABLE)
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_a_page_cursor_seeks_past_its_run_of_equal_values(
    storage: SQLiteStorage, field: str, descending: bool
) -> None:
    "The cursor is two seeks (the rest of its run, the values after it), not ``column >= ?``."
    conditions = (parse_condition("resource", "EQUALS", ["entity"], "f"),)
    value: str | int = NOW if FIELDS[field].kind is Kind.TIME else "value-1"
    sort = parse_sort(f"{field} {'desc' if descending else 'asc'}")
    steps = plan(storage, Query(conditions, sort, 100, after=Cursor(value, "0" * 36)))
    details = " | ".join(detail for _, _, detail in steps)
    op = "<" if descending else ">"
    index = "events_resource" if field == "resource" else f"events_resource_{field}"
    seq = "seq" if field == "occurred_at" else "rowid"  # that index names seq
    run = (
        f"(resource=? AND {seq}" if field == "resource" else f"(resource=? AND {field}=? AND {seq}"
    )
    assert f"INDEX {index} {run}{op}?)" in details, details
    if field != "resource":
        assert f"INDEX {index} (resource=? AND {field}{op}?)" in details, details


@pytest.mark.parametrize("field", sqlite_schema.WIDE_COLUMNS)
def test_a_common_rule_on_a_tab_column_is_checked_in_the_date_index(
    storage: SQLiteStorage, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newest first in a tab, a rule on a column the date index holds reads no events rows
    once it matches MANY_FOR_DATE_WALK events (far fewer than MANY_MATCHES)."""
    monkeypatch.setattr(sqlite_query, "MANY_FOR_DATE_WALK", 0)
    kind = FIELDS[field].kind
    conditions = (
        parse_condition("resource", "EQUALS", ["entity"], "f"),
        parse_condition(field, "EQUALS", [_value(field, kind)], "f"),
    )
    details = [d for _, _, d in plan(storage, Query(conditions, parse_sort(""), 100))]
    assert "SEARCH e USING COVERING INDEX events_resource_occurred_at (resource=?)" in details


@pytest.mark.parametrize("tab", [True, False], ids=["one tab", "all tabs"])
def test_a_rare_source_is_looked_up_by_id_and_by_name_without_reading_rows(
    storage: SQLiteStorage, tab: bool
) -> None:
    rule = parse_condition("source", "EQUALS", ["value-1"], "f")
    conditions = (parse_condition("resource", "EQUALS", ["entity"], "f"), rule) if tab else (rule,)
    details = " | ".join(d for _, _, d in plan(storage, Query(conditions, parse_sort(""), 100)))
    for column in ("source_id", "source_name"):
        assert f"COVERING INDEX events_resource_{column} (resource=? AND {column}=?)" in details


def test_a_rare_error_is_looked_up_among_failures_only(storage: SQLiteStorage) -> None:
    conditions = (
        parse_condition("resource", "EQUALS", ["entity"], "f"),
        parse_condition("error", "STARTS_WITH", ["Deploy failed"], "f"),
    )
    details = " | ".join(d for _, _, d in plan(storage, Query(conditions, parse_sort(""), 100)))
    assert "COVERING INDEX events_resource_failure (resource=? AND error>? AND error<?)" in details


def _assert_walks_in_order(steps: list[tuple[int, int, str]], what: str) -> None:
    "Every walk of event_context is read in its index order: no sorter beside it."
    details = [d for _, _, d in steps]
    assert any(d.startswith(WALK) for d in details), f"{what}: {details}"
    levels: dict[int, list[str]] = {}
    for _, parent, detail in steps:
        levels.setdefault(parent, []).append(detail)
    for siblings in levels.values():
        if any(d.startswith(WALK) for d in siblings):
            assert not any(d.startswith("USE TEMP B-TREE") for d in siblings), f"{what}: {details}"
        assert not any(re.match(r"SCAN ec\b", d) for d in siblings), f"{what}: {details}"


@pytest.mark.parametrize("op", ["EQUALS", "STARTS_WITH"])
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("tab", [True, False], ids=["one tab", "all tabs"])
@pytest.mark.parametrize("cursor", [False, True], ids=["first page", "next page"])
@pytest.mark.parametrize("common", [False, True], ids=["rare value", "common value"])
def test_a_context_rule_sorted_by_date_is_a_walk_of_event_context_in_date_order(
    storage: SQLiteStorage,
    op: str,
    descending: bool,
    tab: bool,
    cursor: bool,
    common: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if common:
        monkeypatch.setattr(sqlite_query, "MANY_MATCHES", 0)
        monkeypatch.setattr(sqlite_query, "MANY_FOR_DATE_WALK", 0)
    rule = parse_condition("context.cluster", op, ["value-1"], "f")
    conditions = (parse_condition("resource", "EQUALS", ["entity"], "f"), rule) if tab else (rule,)
    sort = parse_sort(f"occurred_at {'desc' if descending else 'asc'}")
    after = Cursor(NOW, "0" * 36) if cursor else None
    steps = plan(storage, Query(conditions, sort, 100, after=after))
    what = f"{op} ({'one tab' if tab else 'all tabs'}, {sort}, cursor {after})"
    assert_reads_no_whole_table(steps, what)
    _assert_walks_in_order(steps, what)
    details = [d for _, _, d in steps]
    # The page's rows are the only events rows read.
    assert all(not d.startswith(("SEARCH e ", "SCAN e ")) or "(rowid=?)" in d for d in details)
    if cursor:
        assert any("AND (occurred_at,seq)" in d for d in details), details


@pytest.mark.parametrize(
    ("other", "events_access"),
    [
        # a column the tab's date index holds: checked there
        (("status", "EQUALS", "failure"), "COVERING INDEX events_resource_occurred_at"
         " (resource=? AND occurred_at=? AND seq=?)"),
        # another context rule: checked with one seek of event_context's primary key
        (("context.namespace", "NOT_EQUALS", "value-2"),
         "COVERING INDEX events_resource_occurred_at (resource=? AND occurred_at=? AND seq=?)"),
        # any other column: on the events row
        (("identifier", "CONTAINS", "value"), "INTEGER PRIMARY KEY (rowid=?)"),
    ],
)  # fmt: skip
def test_a_walked_context_rule_checks_the_other_rules_on_each_entry(
    storage: SQLiteStorage,
    other: tuple[str, str, str],
    events_access: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_query, "MANY_MATCHES", 0)  # every rule common: none looked up
    monkeypatch.setattr(sqlite_query, "MANY_FOR_DATE_WALK", 0)
    conditions = (
        parse_condition("resource", "EQUALS", ["entity"], "f"),
        parse_condition("context.cluster", "EQUALS", ["value-1"], "f"),
        parse_condition(other[0], other[1], [other[2]], "f"),
    )
    steps = plan(storage, Query(conditions, parse_sort(""), 100))
    assert_reads_no_whole_table(steps, str(other))
    _assert_walks_in_order(steps, str(other))
    # Each walked entry's event: a seek (inside the branch, beside the walk).
    walk_parent = next(parent for _, parent, d in steps if d.startswith(WALK))
    beside = [d for _, parent, d in steps if parent == walk_parent]
    assert f"SEARCH e USING {events_access}" in beside, beside


def test_a_rare_rule_looked_up_leads_and_the_context_rule_is_checked(
    storage: SQLiteStorage,
) -> None:
    conditions = (
        parse_condition("resource", "EQUALS", ["entity"], "f"),
        parse_condition("context.cluster", "EQUALS", ["value-1"], "f"),
        parse_condition("identifier", "EQUALS", ["value-1"], "f"),
    )
    steps = plan(storage, Query(conditions, parse_sort(""), 100))
    assert_reads_no_whole_table(steps, "identifier and context.cluster")
    details = " | ".join(d for _, _, d in steps)
    assert WALK not in details, details


@pytest.mark.parametrize("sort", ["identifier asc", "recorded_at desc", "source desc"])
def test_a_context_rule_under_another_sort_is_checked_by_a_seek(
    storage: SQLiteStorage, sort: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walking the sort's index, each event's context entry is one seek by seq, which the
    index holds: no events rows are read for the check."""
    monkeypatch.setattr(sqlite_query, "MANY_MATCHES", 0)
    monkeypatch.setattr(sqlite_query, "MANY_FOR_DATE_WALK", 0)
    conditions = (
        parse_condition("resource", "EQUALS", ["entity"], "f"),
        parse_condition("context.cluster", "EQUALS", ["value-1"], "f"),
    )
    steps = plan(storage, Query(conditions, parse_sort(sort), 100))
    assert_reads_no_whole_table(steps, sort)
    details = " | ".join(d for _, _, d in steps)
    assert WALK not in details, details
    check = "SEARCH c USING COVERING INDEX event_context_seq (seq=? AND key=? AND value=?)"
    assert check in details, details
    column = sort.split()[0]
    assert f"SEARCH e USING COVERING INDEX events_resource_{column} (resource=?)" in details


def test_too_many_values_times_tabs_are_checked_instead_of_walked(
    storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_query, "MANY_MATCHES", 0)
    monkeypatch.setattr(sqlite_query, "MANY_FOR_DATE_WALK", 0)
    values = [f"value-{i}" for i in range(sqlite_query.MAX_CONTEXT_WALKS // 9 + 1)]
    rule = parse_condition("context.cluster", "EQUALS", values, "f")
    steps = plan(storage, Query((rule,), parse_sort(""), 100))
    assert_reads_no_whole_table(steps, "all tabs")
    details = " | ".join(d for _, _, d in steps)
    assert WALK not in details, details
    assert "events_occurred_at" in details, details
    # In one tab, the same values are few enough.
    tab = parse_condition("resource", "EQUALS", ["entity"], "f")
    _assert_walks_in_order(plan(storage, Query((tab, rule), parse_sort(""), 100)), "one tab")


def test_migration_5_gives_context_rows_their_events_tab_and_date(tmp_path: Path) -> None:
    "A version 4 database's context rows, rewritten: what the walks read."
    event_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    path = tmp_path / "v4.db"
    db = sqlite_utils.Database(path)
    for number, migration in enumerate(sqlite_schema.MIGRATIONS[:4], start=1):
        migration(db)
        db.execute(f"PRAGMA user_version = {number}")
    event = NewEvent(
        resource=ResourceType.RUN, identifier="run-1", operation=Operation.UPDATE,
        origin=Origin.API, occurred_at=NOW, recorded_by="dev",
        context={"cluster": "prod", "repo": "acme/x"},
    )  # fmt: skip
    db.conn.execute(sqlite_rows.INSERT_EVENT, sqlite_rows.event_row(7, event_id, NOW, event))
    db.conn.executemany(
        "INSERT INTO event_context (key, value, seq) VALUES (?, ?, 7)", event.context.items()
    )
    db.conn.commit()
    assert sqlite_schema.migrate(db) == 5
    rows = db.conn.execute("SELECT key, value, resource, occurred_at, seq FROM event_context")
    assert sorted(rows) == [("cluster", "prod", "RUN", NOW, 7), ("repo", "acme/x", "RUN", NOW, 7)]
    db.close()
    store = SQLiteStorage(path)
    try:
        rule = parse_condition("context.repo", "STARTS_WITH", ["acme/"], "f")
        events, _ = store.list_events(Query((rule,), parse_sort(""), 10))
        assert [e.identifier for e in events] == ["run-1"]
    finally:
        store.close()


def test_context_rows_are_built_from_the_events_rows_also_for_an_older_intake_log(
    tmp_path: Path,
) -> None:
    "What the walks read is written with every event, whatever the intake log's group holds."
    store = SQLiteStorage(tmp_path / "rows.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "rows.db")
    event = NewEvent(
        resource=ResourceType.SECRET, identifier="k", operation=Operation.UPDATE,
        origin=Origin.API, occurred_at=NOW, recorded_by="dev", context={"cluster": "c1"},
    )  # fmt: skip
    rows = sqlite_rows.Rows()
    rows.add(1, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", NOW, event)
    rows.add(2, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", NOW + 1, event)
    # A group staged before schema version 5 listed its context rows (key, value, seq).
    old = json.loads(rows.to_json())
    old[1] = [["cluster", "c1", 2]]
    with conn:
        sqlite_rows.Rows.from_json(json.dumps(old)).after(1).write(conn)
    assert conn.execute("SELECT * FROM event_context").fetchall() == [
        ("cluster", "c1", "SECRET", NOW, 2)
    ]
    conn.close()

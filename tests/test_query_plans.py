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

NOT_EQUALS, and CONTAINS on the other text fields, no index can answer: those are checked
while the query walks its sort order inside the tab (still a SEARCH on resource).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

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
from audit_service.storage import sqlite_query, sqlite_schema
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
        if field.startswith("context."):
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
    "Newest first in a tab, a rule on a column the date index holds reads no events rows."
    monkeypatch.setattr(sqlite_query, "MANY_MATCHES", 0)
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

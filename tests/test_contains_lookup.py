"""CONTAINS on error and snapshot_text looked up in SQLite's trigram indexes: a long needle is
found by its rarest trigrams and each candidate checked on its stored text. Every case is
compared with the row-by-row check (Python's casefold on the stored text) and with the phrase
query of the index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_service.models import NewEvent, Operation, Origin, ResourceType, Status, to_json
from audit_service.query import Query, parse_condition, parse_sort
from audit_service.storage import sqlite_query
from audit_service.storage.sqlite import SQLiteStorage

NOW = 1_767_225_600_000_000_000


def _events() -> list[NewEvent]:
    events = []
    for n in range(60):
        name = f"payments-entity-{n:06d}"
        error = f"quota exceeded for {name}" if n % 3 == 0 else ""
        events.append(
            NewEvent(
                resource=ResourceType.ENTITY, identifier=name, operation=Operation.UPDATE,
                origin=Origin.API, occurred_at=NOW + n, recorded_by="dev",
                status=Status.FAILURE if error else Status.SUCCESS, error=error,
                before={"title": name, "team": "payments"},
                after={"title": name, "team": "payments", "tier": "gold"},
            )
        )  # fmt: skip
    special: list[tuple[dict[str, Any], str]] = [
        ({"note": 'say "hello" world', "path": "C:\\temp\\payments"}, ""),
        ({"owner-team-payments": 7, "flag": True}, ""),
        ({"city": "ÉCOLE-Élève-Zürich"}, "Échec: délai dépassé à Zürich"),
        ({"tags": ["alpha-beta", "gamma-delta"]}, "HTTP 502 from upstream-payments"),
        ({"text": "aaaaaaaaa"}, "rate limited by payments-gateway"),
    ]
    for i, (after, error) in enumerate(special):
        events.append(
            NewEvent(
                resource=ResourceType.RUN, identifier=f"special-{i}", operation=Operation.UPDATE,
                origin=Origin.API, occurred_at=NOW + 100 + i, recorded_by="dev",
                status=Status.FAILURE if error else Status.SUCCESS, error=error, after=after,
            )
        )  # fmt: skip
    return events


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStorage]:
    storage = SQLiteStorage(Path(tmp_path_factory.mktemp("contains")) / "events.db")
    storage.insert_batch(_events())
    try:
        yield storage
    finally:
        storage.close()


def _listed(store: SQLiteStorage, field: str, values: list[str]) -> set[str]:
    query = Query((parse_condition(field, "CONTAINS", values, "f"),), parse_sort(""), 1000)
    events, _ = store.list_events(query)
    return {e.identifier for e in events}


def _expected(field: str, values: list[str]) -> set[str]:
    "The row-by-row check, on the events as written."
    found = set()
    for e in _events():
        for value in values:
            if field == "error":
                hit = sqlite_query.casefold_contains(e.error, value)
            else:
                before = None if e.before is None else to_json(e.before)
                after = None if e.after is None else to_json(e.after)
                hit = sqlite_query.snapshot_contains(before, after, value)
            if hit:
                found.add(e.identifier)
    return found


PHRASE_QUERIES = {
    "error": "SELECT identifier FROM events WHERE seq IN"
    " (SELECT rowid FROM error_fts WHERE error_fts MATCH ?)",
    "snapshot_text": "SELECT identifier FROM events WHERE seq IN"
    " (SELECT rowid FROM snapshot_fts WHERE snapshot_fts MATCH ?)",
}


def _phrase(store: SQLiteStorage, field: str, values: list[str]) -> set[str]:
    "What the index's phrase query finds."
    match = " OR ".join(sqlite_query._phrase(v) for v in values)
    rows = store._reader().execute(PHRASE_QUERIES[field], [match])
    return {row[0] for row in rows}


CASES = [
    ("snapshot_text", ["payments-entity-000023"]),  # long, every trigram common
    ("snapshot_text", ["PAYMENTS-ENTITY-000023"]),  # casefolding
    ("snapshot_text", ["payments-entity-0000"]),  # ten events
    ("snapshot_text", ["payments-entity-999999"]),  # candidates, no match
    ("snapshot_text", ["payments-entity-000023", "payments-entity-000042"]),
    ("snapshot_text", ['say "hello" wor']),  # quotes
    ("snapshot_text", ['"hello"']),
    ("snapshot_text", ["c:\\temp\\pay"]),  # a backslash, escaped in the JSON
    ("snapshot_text", ["owner-team-pay"]),  # only in a key
    ("snapshot_text", ["école-élève-zür"]),  # non-ASCII, casefolded
    ("snapshot_text", ["ÉCOLE"]),
    ("snapshot_text", ["aaaaaaa"]),  # one trigram, repeated
    ("snapshot_text", ["beta\ngamma"]),  # across two strings (joined by line breaks)
    ("snapshot_text", ["gold"]),
    ("snapshot_text", ["zz-no-such-text"]),
    ("error", ["quota exceeded for payments-entity-000021"]),
    ("error", ["QUOTA EXCEEDED FOR PAYMENTS-ENTITY-000021"]),
    ("error", ["payments-entity-000022"]),  # a success's name: not in any error
    ("error", ["délai dépassé à zürich"]),
    ("error", ["502"]),  # exactly 3 characters
    ("error", ["quota", "rate limited by payments"]),
    ("error", ["qu"]),  # too short for the index: checked row by row
]


@pytest.mark.parametrize(("field", "values"), CASES, ids=[repr(v) for _, v in CASES])
def test_contains_finds_what_the_row_by_row_check_and_the_phrase_query_find(
    store: SQLiteStorage, field: str, values: list[str]
) -> None:
    expected = _expected(field, values)
    assert _listed(store, field, values) == expected
    if all(len(v) >= 3 for v in values):
        assert _phrase(store, field, values) == expected


def test_a_long_needle_is_looked_up_by_its_rarest_trigrams(store: SQLiteStorage) -> None:
    conn = store._reader()
    found = sqlite_query._rare_trigram_matches(conn, "snapshot_fts", "payments-entity-000023")
    assert found is not None
    assert len(found) == 1
    # No event has the trigram "999": nothing is read.
    assert sqlite_query._rare_trigram_matches(conn, "error_fts", "entity-999999") == []
    # Three trigrams or fewer: the phrase query answers.
    assert sqlite_query._rare_trigram_matches(conn, "snapshot_fts", "aaaaaaa") is None
    assert sqlite_query._rare_trigram_matches(conn, "error_fts", "quota") is None


def test_too_many_candidates_fall_back_to_the_phrase_query(
    store: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = store._reader()
    # Every entity's snapshot holds "payments-entity-0000" trigrams: 60 candidates.
    monkeypatch.setattr(sqlite_query, "MAX_CANDIDATES", 10)
    assert sqlite_query._rare_trigram_matches(conn, "snapshot_fts", "payments-entity-") is None
    values = ["payments-entity-0000"]
    assert _listed(store, "snapshot_text", values) == _expected("snapshot_text", values)

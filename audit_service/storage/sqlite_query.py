"""How List is answered in SQLite: the SELECT for a query (tabs, rules, sort, page cursor)
and the SQL functions its rules call."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from audit_service import models
from audit_service.query import Condition, Cursor, Kind, Op, Query, Sort
from audit_service.storage.sqlite_schema import WIDE_COLUMNS

EVENT_COLUMNS = (
    "e.seq, e.id, e.occurred_at, e.recorded_at, e.resource, e.identifier, e.blueprint,"
    " e.integration, e.run_id, e.operation, e.source_kind, e.source_id, e.source_name,"
    " e.origin, e.status, e.error, e.recorded_by, e.idempotency_key, e.context,"
    " e.diff_available"
)
_SQL_OPS = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}
_FTS_MIN_CHARS = 3  # the trigram tokenizer cannot match shorter needles


def casefold_contains(haystack: str | None, needle: str | None) -> bool:
    return haystack is not None and needle is not None and needle.casefold() in haystack.casefold()


def list_sql(conn: sqlite3.Connection, query: Query) -> tuple[str, list[Any]]:
    """The SELECT (and its parameters) that answers ``query``.

    Every events index but two leads with ``resource`` (the tab), so the query names the
    tabs it looks at: within one tab, a walk of (resource, sort column) in order; across
    tabs, one such branch per tab, merged (a page of 100 reads at most 9 x 101 index
    entries), or, sorted by occurred_at, a walk of the occurred_at index. A rule that
    matches few events is looked up by its own index instead, its matches sorted (see
    ``_condition_sql``). The page's seqs are found first; only those rows are read whole.

    A page cursor is two branches too (see ``after_sql``), and so is a rare ``source`` rule
    (its id, its name), so that each branch seeks its index and reads it in order.

    Sorted by occurred_at, a ``context.<key>`` EQUALS rule (or a STARTS_WITH one whose prefix
    few values have) is read from ``event_context`` instead, whose key holds the tab and the
    date after the value: one branch per value and tab, each a walk of its range in date
    order (see ``_walked_context_rule``), unless another rule is looked up.
    """
    tabs, conditions = _split_tabs(query.conditions)
    column = _sort_column(query.sort)
    direction = "DESC" if query.sort.descending else "ASC"
    limit = query.page_size + 1
    select = EVENT_COLUMNS + f", e.{column}"
    joins = ""
    if query.include_snapshots:
        select += ", s.before, s.after"
        joins = " LEFT JOIN snapshots s ON s.seq = e.seq"
    nothing = f"SELECT {select} FROM events e{joins} WHERE 0 LIMIT ?", [limit]
    if not tabs:
        return nothing
    walked = _walked_context_rule(conn, conditions, tabs) if column == "occurred_at" else None
    where: list[str] = []
    params: list[Any] = []
    looked_up = False
    # Alternatives that overlap (a rare source rule: its id or its name), one branch each.
    either: list[tuple[str, list[Any]]] = []

    def add(condition: Condition) -> None:
        nonlocal looked_up, either
        alternatives, sparse = _condition_sql(condition, conn, tabs, column)
        looked_up = looked_up or sparse
        if len(alternatives) > 1 and sparse and not either:
            either = alternatives
            return
        sql, args = _any_of(alternatives)
        where.append(sql)
        params.extend(args)

    for condition in conditions:
        if walked is None or condition is not walked[0]:
            add(condition)
    order = f" ORDER BY e.{column} {direction}, e.seq {direction}"
    if walked is not None and not looked_up:
        rule, values = walked
        if not values:
            return nothing
        # The other rules' columns in the tab's date index: checked there, not on the rows.
        covered = all(
            c.context_key is not None or c.field in WIDE_COLUMNS
            for c in conditions
            if c is not rule
        )
        page, page_params = _context_walk_sql(
            conn, query, rule, values, tabs, (where, params, covered), limit
        )
        return f"SELECT {select} FROM events e{joins} WHERE e.seq IN ({page}){order}", page_params
    if walked is not None:  # another rule is looked up: the context rule is checked
        add(walked[0])
    # With a rule that matches few events, the page comes from its matches, sorted: the
    # "+" keeps the sort column's index (a walk) out of the plan.
    page_order = f" ORDER BY +e.{column} {direction}, e.seq {direction}" if looked_up else order
    marks = ",".join("?" * len(tabs))
    if column == "occurred_at" and len(tabs) > 1 and not looked_up:
        if query.after is not None:
            sql, args = after_sql(conn, column, query.sort, query.after, split=False)[0]
            where.append(sql)
            params.extend(args)
        filters = "".join(f" AND {w}" for w in where)
        page = (
            f"SELECT e.seq FROM events e INDEXED BY events_occurred_at"
            f" WHERE e.resource IN ({marks}){filters}{order} LIMIT ?"
        )
        page_params = [*tabs, *params, limit]
        sql = f"SELECT {select} FROM events e{joins} WHERE e.seq IN ({page}){order}"
        return sql, page_params
    # Branches: the tabs (each walked in its own index order, or all of them at once when a
    # rule is looked up or the sort is by resource), times the cursor's two parts, times a
    # rare rule's alternatives. One branch is the page query itself.
    tab_groups = [tabs] if column == "resource" or looked_up else [[tab] for tab in tabs]
    cursor: list[tuple[str, list[Any]]] = [("", [])]
    if query.after is not None:  # a rare rule's matches are sorted: the cursor only checks
        cursor = after_sql(conn, column, query.sort, query.after, split=not looked_up)
    branches: list[tuple[str, list[Any]]] = []
    for group in tab_groups:
        for cursor_sql, cursor_args in cursor:
            for either_sql, either_args in either or [("", [])]:
                parts = [f"e.resource IN ({','.join('?' * len(group))})", *where]
                args = [*group, *params]
                for extra, extra_args in ((cursor_sql, cursor_args), (either_sql, either_args)):
                    if extra:
                        parts.append(extra)
                        args.extend(extra_args)
                branch = (
                    f"SELECT e.seq, e.{column} FROM events e WHERE {' AND '.join(parts)}"
                    f"{page_order} LIMIT ?"
                )
                branches.append((branch, [*args, limit]))
    if len(branches) == 1:
        branch, page_params = branches[0]
        page = f"SELECT seq FROM ({branch})"
    else:
        # The alternatives of a rule overlap: UNION drops an event both found.
        compound = " UNION " if either else " UNION ALL "
        page = (
            "SELECT seq FROM ("
            + compound.join(f"SELECT * FROM ({b})" for b, _ in branches)
            + f" ORDER BY 2 {direction}, 1 {direction} LIMIT ?)"
        )  # fmt: skip
        page_params = [value for _, args in branches for value in args] + [limit]
    sql = f"SELECT {select} FROM events e{joins} WHERE e.seq IN ({page}){order}"
    return sql, page_params


def _any_of(alternatives: list[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    if len(alternatives) == 1:
        return alternatives[0]
    sql = "(" + " OR ".join(f"({a})" for a, _ in alternatives) + ")"
    return sql, [value for _, args in alternatives for value in args]


def after_sql(
    conn: sqlite3.Connection,
    column: str,
    sort: Sort,
    cursor: Cursor,
    *,
    split: bool = True,
    table: str = "e",
) -> list[tuple[str, list[Any]]]:
    """Rows after the cursor in (sort value, id) order.

    Split, that is two disjoint parts: the rest of the cursor's run of equal values
    (``column = ? AND seq > ?``) and the values after it (``column > ?``), each a seek into
    the sort column's index, read in order. (SQLite serves the row value
    ``(column, seq) > (?, ?)`` as ``column >= ?`` and skips a run of equal values entry by
    entry.) Not split: that row value, for a walk of unique values or a check of rows.

    The cursor names an id; its seq is looked up (seq and id share one order). Should
    retention have deleted that event meanwhile, the nearest seq on the right side stands
    in, so the page sequence still neither skips nor repeats.
    """
    if sort.descending:
        # seq and id share one order: the first row by id is the smallest seq (one probe).
        row = conn.execute(
            "SELECT seq FROM events WHERE id >= ? ORDER BY id LIMIT 1", [cursor.id]
        ).fetchone()
        bound = (1 << 63) - 1 if row is None else row[0]
        op = "<"
    else:
        row = conn.execute(
            "SELECT seq FROM events WHERE id <= ? ORDER BY id DESC LIMIT 1", [cursor.id]
        ).fetchone()
        bound = 0 if row is None else row[0]
        op = ">"
    t = table
    if not split:
        return [(f"({t}.{column}, {t}.seq) {op} (?, ?)", [cursor.value, bound])]
    return [
        (f"{t}.{column} = ? AND {t}.seq {op} ?", [cursor.value, bound]),
        (f"{t}.{column} {op} ?", [cursor.value]),
    ]


# At most this many branches (a walked context rule's values times the tabs): each reads up
# to a page of index entries.
MAX_CONTEXT_WALKS = 64


def _walked_context_rule(
    conn: sqlite3.Connection, conditions: Sequence[Condition], tabs: Sequence[str]
) -> tuple[Condition, list[str]] | None:
    """The first ``context.<key>`` rule whose matches can be read from ``event_context`` in
    date order, with the values it matches: an EQUALS (its values), or a STARTS_WITH (the
    values stored under its prefixes, looked up one seek each), so long as the values times
    the tabs are at most ``MAX_CONTEXT_WALKS``."""
    room = MAX_CONTEXT_WALKS // len(tabs)
    for c in conditions:
        if c.context_key is None or c.op not in (Op.EQUALS, Op.STARTS_WITH):
            continue
        if c.op is Op.EQUALS:
            values = sorted({str(v) for v in c.values})
        else:
            values = _values_starting_with(conn, c.context_key, c.values, room + 1)
        if len(values) <= room:
            return c, values
    return None


def _values_starting_with(
    conn: sqlite3.Connection, key: str, prefixes: Sequence[str | int], limit: int
) -> list[str]:
    "The distinct values of ``key`` that start with one of ``prefixes``, up to ``limit``."
    found: set[str] = set()
    for prefix in prefixes:
        upper = str(prefix).encode() + b"\xff"  # see _value_sql: STARTS_WITH as a range
        # Each next value is one seek: the least value above the last one found.
        rows = conn.execute(
            "WITH RECURSIVE v(value) AS ("
            "SELECT (SELECT min(value) FROM event_context"
            " WHERE key = ? AND value >= ? AND value < CAST(? AS TEXT))"
            " UNION ALL SELECT (SELECT min(value) FROM event_context"
            " WHERE key = ? AND value > v.value AND value < CAST(? AS TEXT))"
            " FROM v WHERE v.value IS NOT NULL LIMIT ?"
            ") SELECT value FROM v WHERE value IS NOT NULL",
            [key, prefix, upper, key, upper, limit + 1],
        )
        found.update(row[0] for row in rows)
        if len(found) >= limit:
            break
    return sorted(found)[:limit]


def _context_walk_sql(
    conn: sqlite3.Connection,
    query: Query,
    rule: Condition,
    values: Sequence[str],
    tabs: Sequence[str],
    others: tuple[Sequence[str], Sequence[Any], bool],
    limit: int,
) -> tuple[str, list[Any]]:
    """The page's seqs read from ``event_context`` (sorted by occurred_at): for each value
    and tab, a walk of (key, value, resource) in (occurred_at, seq) order, merged. The other
    rules (``others``: their SQL, its parameters, and whether the tab's date index holds every
    column they check) are checked on each entry's event: in that index when it holds them,
    else on the events row."""
    where, params, covered = others
    direction = "DESC" if query.sort.descending else "ASC"
    cursor: tuple[str, list[Any]] | None = None
    if query.after is not None:  # dates are nearly unique: one row value, not two seeks
        cursor = after_sql(conn, "occurred_at", query.sort, query.after, split=False, table="ec")[0]
    source = "event_context ec"
    if where and covered:
        source += (
            " CROSS JOIN events e INDEXED BY events_resource_occurred_at"
            " ON e.resource = ec.resource AND e.occurred_at = ec.occurred_at AND e.seq = ec.seq"
        )
    elif where:
        source += " CROSS JOIN events e ON e.seq = ec.seq"
    branches: list[tuple[str, list[Any]]] = []
    for value in values:
        for tab in tabs:
            parts = ["ec.key = ?", "ec.value = ?", "ec.resource = ?"]
            args: list[Any] = [rule.context_key, value, tab]
            if cursor is not None:
                parts.append(cursor[0])
                args.extend(cursor[1])
            parts.extend(where)
            args.extend(params)
            branch = (
                f"SELECT ec.seq, ec.occurred_at FROM {source} WHERE {' AND '.join(parts)}"
                f" ORDER BY ec.occurred_at {direction}, ec.seq {direction} LIMIT ?"
            )
            branches.append((branch, [*args, limit]))
    if len(branches) == 1:
        branch, branch_params = branches[0]
        return f"SELECT seq FROM ({branch})", branch_params
    page = (
        "SELECT seq FROM ("
        + " UNION ALL ".join(f"SELECT * FROM ({b})" for b, _ in branches)
        + f" ORDER BY 2 {direction}, 1 {direction} LIMIT ?)"
    )  # fmt: skip
    return page, [value for _, args in branches for value in args] + [limit]


def _sort_column(sort: Sort) -> str:
    return sort.field  # every sortable field is a column of its own name


def _condition_sql(
    c: Condition, conn: sqlite3.Connection, tabs: Sequence[str], sort_column: str
) -> tuple[list[tuple[str, list[Any]]], bool]:
    """SQL for one rule (alternatives, any of which matches), and whether it is to be looked
    up by its own index.

    A rule an index can answer (a column's index, the context table, a text index) is
    looked up there when it matches few events (under ``MANY_MATCHES`` in the tabs asked
    for, counted first), its matches then sorted. When it matches many, it is checked row by
    row while the query walks its sort order, which then fills a page soon: for a column,
    its index is kept out of the plan (``+column``). A rare ``source`` rule is two
    alternatives (its id, its name), each looked up by its own index."""
    if c.context_key is not None:
        # event_context rows carry their event's resource: only the tabs asked for.
        in_tabs = f"resource IN ({','.join('?' * len(tabs))})"
        if c.op is Op.NOT_EQUALS:
            inner, args = _value_sql("value", Op.EQUALS, c.values, Kind.TEXT)
            return [
                (
                    "e.seq NOT IN (SELECT seq FROM event_context"
                    f" WHERE key = ? AND {inner} AND {in_tabs})",
                    [c.context_key, *args, *tabs],
                )
            ], False
        inner, args = _value_sql("value", c.op, c.values, Kind.TEXT)
        subquery = f"SELECT seq FROM event_context WHERE key = ? AND {inner} AND {in_tabs}"
        seqs = None if c.op is Op.CONTAINS else _few(conn, subquery, [c.context_key, *args, *tabs])
        if seqs is None:
            # The event's entry of the key: a seek of event_context_seq, which needs only the
            # seq (so a walk of a sort column's index need not read the events rows).
            inner, args = _value_sql("c.value", c.op, c.values, Kind.TEXT)
            return [
                (
                    "EXISTS (SELECT 1 FROM event_context c WHERE c.key = ? AND c.seq = e.seq"
                    f" AND {inner})",
                    [c.context_key, *args],
                )
            ], False
        return [(_SEQS_SQL, [seqs])], True
    if c.field in ("error", "snapshot_text") and c.op is Op.CONTAINS:
        texts = [str(v) for v in c.values]
        table = "error_fts" if c.field == "error" else "snapshot_fts"
        if all(len(t) >= _FTS_MIN_CHARS for t in texts):
            seqs = _text_matches(conn, table, texts)
            if seqs is not None:
                return [(_SEQS_SQL, [seqs])], True
        if c.field == "snapshot_text":
            parts = [
                "EXISTS (SELECT 1 FROM snapshots s WHERE s.seq = e.seq"
                " AND snapshot_contains(s.before, s.after, ?))"
            ] * len(texts)
            return [("(" + " OR ".join(parts) + ")", list(texts))], False
        # Only a failure's error can contain a (non-empty) value: successes are skipped
        # before the Python check ("+": not a reason to read all failures and sort them).
        sql, args = _value_sql("e.error", c.op, c.values, c.kind)
        return [(f"(+e.error != '' AND {sql})", args)], False
    columns = ["source_id", "source_name"] if c.field == "source" else [c.field]
    indexable = c.op not in (Op.NOT_EQUALS, Op.CONTAINS) and c.field != sort_column
    if indexable:
        alternatives = [_value_sql(f"e.{column}", c.op, c.values, c.kind) for column in columns]
        marks = ",".join("?" * len(tabs))
        sql, args = _any_of(alternatives)
        probe = f"SELECT 1 FROM events e WHERE e.resource IN ({marks}) AND {sql}"
        many = MANY_MATCHES
        if sort_column == "occurred_at" and c.field in WIDE_COLUMNS:
            many = MANY_FOR_DATE_WALK  # checked in the date index, no row read per entry
        if not _matches_many(conn, probe, [*tabs, *args], many):
            if c.field == "error" and not _may_match_empty(c):
                # Failures only: their own index holds the error and the date.
                sql, args = alternatives[0]
                alternatives = [(f"{sql} AND e.error != ''", args)]
            elif c.op is Op.EQUALS:
                # Few match (counted): said so, or a rule on a column the date index also
                # holds (status: 2 values) could be planned as a walk of that whole index.
                alternatives = [(f"likelihood({sql}, {_FEW})", args) for sql, args in alternatives]
            return alternatives, True
        return [_column_sql(c, columns, "+e.")], False  # "+": checked, not looked up
    return [_column_sql(c, columns, "e.")], False


def _may_match_empty(c: Condition) -> bool:
    "Whether the rule can match an empty text (a success's error)."
    if c.op in (Op.LT, Op.LTE):
        return True
    if c.op is Op.GT:
        return False
    return "" in c.values  # EQUALS, GTE, STARTS_WITH (whose values are never empty)


def _column_sql(c: Condition, columns: list[str], prefix: str) -> tuple[str, list[Any]]:
    if len(columns) == 1:
        return _value_sql(prefix + columns[0], c.op, c.values, c.kind)
    # source: the id or the name (for NOT_EQUALS: neither)
    id_sql, id_args = _value_sql(prefix + columns[0], c.op, c.values, c.kind)
    name_sql, name_args = _value_sql(prefix + columns[1], c.op, c.values, c.kind)
    joiner = "AND" if c.op is Op.NOT_EQUALS else "OR"
    return f"({id_sql} {joiner} {name_sql})", [*id_args, *name_args]


# A rule matching at least this many events (in the tabs asked for) is checked row by row in
# sort order; one matching fewer is looked up and its matches sorted (at most this many).
MANY_MATCHES = 4000
# Sorted by date, a rule on a column the tab's date index holds is checked in that index while
# it is walked (no row read per entry) from this many matches: looking up N matches reads N
# rows (about 4 µs each) to sort them, where the walk reads about 100 x tab / N index entries
# (about 0.2 µs each); they cost the same near 700 matches in a tab of 111,000 events.
MANY_FOR_DATE_WALK = 700


# The seqs a lookup found (a JSON array), so a text index is searched once per List call.
_SEQS_SQL = "e.seq IN (SELECT value FROM json_each(?))"


_FEW = 0.001  # the share of events a looked-up rule matches, for the planner


def _few(conn: sqlite3.Connection, subquery: str, params: list[Any]) -> str | None:
    "The seqs ``subquery`` finds, as a JSON array, when fewer than ``MANY_MATCHES``; else None."
    seqs = [row[0] for row in conn.execute(f"{subquery} LIMIT {MANY_MATCHES}", params)]
    return None if len(seqs) >= MANY_MATCHES else json.dumps(seqs)


# A needle of more distinct trigrams than this is looked up by its rarest ones.
_RAREST_TRIGRAMS = 3
# At most this many candidates (events holding the rarest trigrams) are checked in Python.
MAX_CANDIDATES = 500


def _text_matches(conn: sqlite3.Connection, table: str, texts: Sequence[str]) -> str | None:
    """The seqs whose text in ``table`` (``error_fts`` or ``snapshot_fts``) contains one of
    ``texts`` (each at least 3 characters), as a JSON array, when fewer than
    ``MANY_MATCHES``; else None.

    A phrase query loads and merges the position lists of all the needle's trigrams, most of
    them in most events for a long needle of common words, even when few events match. So a
    needle of more than ``_RAREST_TRIGRAMS`` distinct trigrams is looked up by its rarest
    ones (their counts probed first, up to ``MANY_MATCHES``), ANDed without positions, and
    each candidate checked on its stored text as a row-by-row check does (``casefold_contains``,
    ``snapshot_contains``). Should the rarest ones still find more than ``MAX_CANDIDATES``,
    the phrase query answers instead.
    """
    found: set[int] = set()
    for text in texts:
        seqs = _rare_trigram_matches(conn, table, text)
        if seqs is None:
            rows = conn.execute(
                f"SELECT rowid FROM {table} WHERE {table} MATCH ? LIMIT {MANY_MATCHES}",
                [_phrase(text)],
            )
            seqs = [row[0] for row in rows]
        found.update(seqs)
        if len(found) >= MANY_MATCHES:
            return None
    return json.dumps(sorted(found))


def _phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _rare_trigram_matches(conn: sqlite3.Connection, table: str, text: str) -> list[int] | None:
    "The events containing ``text``, found by its rarest trigrams; None when that saves nothing."
    trigrams = list(dict.fromkeys(text[i : i + 3] for i in range(len(text) - 2)))
    if len(trigrams) <= _RAREST_TRIGRAMS:
        return None
    counts: list[tuple[int, str]] = []
    cap = MANY_MATCHES
    for trigram in trigrams:
        # Folded by the tokenizer like the text (one trigram may fold to another's: counted
        # twice, which only makes a choice poorer).
        (count,) = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {table} MATCH ? LIMIT {cap})",
            [_phrase(trigram)],
        ).fetchone()
        if count == 0:
            return []
        counts.append((count, trigram))
        counts.sort()
        if len(counts) >= _RAREST_TRIGRAMS:  # a count this high cannot be among the rarest
            cap = min(cap, counts[_RAREST_TRIGRAMS - 1][0])
    if counts[0][0] >= MANY_MATCHES:
        return None
    match = " AND ".join(_phrase(t) for _, t in counts[:_RAREST_TRIGRAMS])
    candidates = [
        row[0]
        for row in conn.execute(
            f"SELECT rowid FROM {table} WHERE {table} MATCH ? LIMIT {MAX_CANDIDATES + 1}", [match]
        )
    ]
    if len(candidates) > MAX_CANDIDATES:
        return None
    ids = json.dumps(candidates)
    if table == "error_fts":
        rows = conn.execute(
            "SELECT seq, error FROM events WHERE seq IN (SELECT value FROM json_each(?))", [ids]
        )
        return [seq for seq, error in rows if casefold_contains(error, text)]
    rows = conn.execute(
        "SELECT seq, before, after FROM snapshots WHERE seq IN (SELECT value FROM json_each(?))",
        [ids],
    )
    return [seq for seq, before, after in rows if snapshot_contains(before, after, text)]


def _matches_many(
    conn: sqlite3.Connection, subquery: str, params: list[Any], many: int = MANY_MATCHES
) -> bool:
    sql = f"SELECT count(*) FROM ({subquery} LIMIT {many})"
    count: int = conn.execute(sql, params).fetchone()[0]
    return count >= many


def snapshot_text(before: str | None, after: str | None) -> str:
    "What ``snapshot_text`` searches (``sqlite_schema.SNAPSHOT_TEXT_SQL``, in Python)."
    strings: set[str] = set()
    for text in (before, after):
        if text is not None:
            _collect_strings(json.loads(text), strings)
    return "\n".join(sorted(strings))


def _collect_strings(value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        out.update(value)
        for item in value.values():
            _collect_strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, out)
    elif isinstance(value, str):
        out.add(value)


def snapshot_contains(before: str | None, after: str | None, needle: str | None) -> bool:
    if needle is None:
        return False
    folded = needle.casefold()
    # The JSON text holds every key and string (escaped only where it has a quote, backslash
    # or control character): a cheap test first, then the exact one.
    if (
        not any(t is not None and folded in t.casefold() for t in (before, after))
        and not any(ch in needle for ch in '"\\')
        and all(ch >= " " for ch in needle)
    ):
        return False
    return folded in snapshot_text(before, after).casefold()


def _split_tabs(conditions: Sequence[Condition]) -> tuple[list[str], list[Condition]]:
    "The resource types the conditions allow (sorted), and the other conditions."
    tabs = set(models.ResourceType)
    rest: list[Condition] = []
    for c in conditions:
        if c.field == "resource" and c.context_key is None and c.op is Op.EQUALS:
            tabs &= {models.ResourceType(str(v)) for v in c.values}
        elif c.field == "resource" and c.context_key is None and c.op is Op.NOT_EQUALS:
            tabs -= {models.ResourceType(str(v)) for v in c.values}
        else:
            rest.append(c)
    return sorted(t.value for t in tabs), rest


def _value_sql(
    column: str, op: Op, values: tuple[str | int, ...], kind: Kind
) -> tuple[str, list[Any]]:
    marks = ",".join("?" * len(values))
    if op is Op.EQUALS:
        return f"{column} IN ({marks})", list(values)
    if op is Op.NOT_EQUALS:
        return f"{column} NOT IN ({marks})", list(values)
    if op is Op.CONTAINS:
        parts = [f"casefold_contains({column}, ?)" for _ in values]
        return "(" + " OR ".join(parts) + ")", list(values)
    if op is Op.STARTS_WITH:
        # A range over UTF-8 bytes, so the column's index serves it: every text that starts
        # with the prefix sorts between the prefix and the prefix followed by 0xFF, a byte
        # that never occurs in UTF-8.
        parts, args = [], []
        for value in values:
            parts.append(f"({column} >= ? AND {column} < CAST(? AS TEXT))")
            args.extend([value, str(value).encode() + b"\xff"])
        return "(" + " OR ".join(parts) + ")", args
    sql_op = _SQL_OPS[op]
    parts = [f"{column} {sql_op} ?" for _ in values]
    return "(" + " OR ".join(parts) + ")", list(values)

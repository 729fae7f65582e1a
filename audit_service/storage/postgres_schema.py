"""Versioned schema migrations for the PostgreSQL backend, applied in order on start.

Replicas that start together are safe: every replica takes one session-level advisory lock
(``MIGRATION_LOCK``) before it reads the schema version, so exactly one of them migrates and the
others find the work done. Each migration runs in its own transaction with its version bump.
Append new migrations; never edit one that has shipped.

What lives in the database (``docs/deployment.md`` lists the features each part uses):

- ``auditlog_meta``: name/value rows: ``schema_version``, ``server_key`` (hex; shared by every
  replica so page tokens and SECRET fingerprints agree), ``fold_collation``.
- ``events``: range-partitioned by ``occurred_at`` (nanoseconds) into one partition per UTC
  month (``events_pYYYYMM``, created on demand) and ``events_default`` for anything else.
  Snapshots and context are JSONB columns of the row. Text columns use ``COLLATE "C"``, so
  they compare and sort by UTF-8 byte order like SQLite.
- ``idempotency_keys``: one row per (recorded_by, idempotency_key) with the first event's id.
  Not partitioned: a unique constraint on a partitioned table must contain the partition key,
  and a retry may carry another ``occurred_at``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import psycopg

from audit_service.query import FIELDS

log = logging.getLogger(__name__)

# Advisory lock keys (one 64-bit key space per database): "auditlg" and a role byte.
MIGRATION_LOCK = 0x617564_69746C67_01
PARTITION_LOCK = 0x617564_69746C67_02
SWEEP_LOCK = 0x617564_69746C67_03

# Columns that each get a (column, id) index: every filter field and every sort; id breaks ties
# in keyset order.
INDEXED_COLUMNS = (
    "occurred_at",
    "recorded_at",
    "resource",
    "identifier",
    "blueprint",
    "integration",
    "run_id",
    "operation",
    "source_id",
    "source_name",
    "source",
    "source_kind",
    "origin",
    "status",
    "error",
    "recorded_by",
)
TEXT_COLUMNS = (
    "resource",
    "identifier",
    "blueprint",
    "integration",
    "run_id",
    "operation",
    "source_kind",
    "source_id",
    "source_name",
    "source",
    "origin",
    "status",
    "error",
    "recorded_by",
)

# Collations whose lower() knows Unicode, in order of preference. ICU's "und" applies the full
# lowercase mapping (like Python's str.lower); glibc's C.UTF-8 the simple one.
FOLD_COLLATIONS = ("und-x-icu", "C.utf8", "C.UTF-8", "en_US.utf8", "en_US.UTF-8", "default")

# Python's casefold() is lower() plus a few more foldings. The one-to-one ones, applied with
# translate() after lower(): micro sign, long s, Greek symbol forms and final sigma, Cherokee
# (folded to upper case), Cyrillic and Latin historic forms. Frozen here (from Unicode 14) so
# the trigram index expression never changes under it. Of the foldings into several
# characters only ß -> ss is applied; docs/deployment.md lists the rest.
_FOLD_PAIRS: tuple[tuple[str, str], ...] = (
    ("\u00b5", "\u03bc"),
    ("\u017f", "s"),
    ("\u0345", "\u03b9"),
    ("\u03c2", "\u03c3"),
    ("\u03d0", "\u03b2"),
    ("\u03d1", "\u03b8"),
    ("\u03d5", "\u03c6"),
    ("\u03d6", "\u03c0"),
    ("\u03f0", "\u03ba"),
    ("\u03f1", "\u03c1"),
    ("\u03f5", "\u03b5"),
    *((chr(0xAB70 + i), chr(0x13A0 + i)) for i in range(0x50)),
    *((chr(0x13F8 + i), chr(0x13F0 + i)) for i in range(6)),
    ("\u1c80", "\u0432"),
    ("\u1c81", "\u0434"),
    ("\u1c82", "\u043e"),
    ("\u1c83", "\u0441"),
    ("\u1c84", "\u0442"),
    ("\u1c85", "\u0442"),
    ("\u1c86", "\u044a"),
    ("\u1c87", "\u0463"),
    ("\u1c88", "\ua64b"),
    ("\u1e9b", "\u1e61"),
    ("\u1fbe", "\u03b9"),
)
_FOLD_FROM = "".join(a for a, _ in _FOLD_PAIRS)
_FOLD_TO = "".join(b for _, b in _FOLD_PAIRS)


def unicode_fold_sql(expression: str, collation: str) -> str:
    """SQL that case-folds ``expression`` the way CONTAINS compares: lower() under a Unicode
    collation, then the extra foldings of Python's str.casefold() (see ``_FOLD_PAIRS``)."""
    quoted = '"' + collation.replace('"', '""') + '"'
    return (
        f"(replace(translate(lower(({expression}) COLLATE {quoted}),"
        f""" '{_FOLD_FROM}', '{_FOLD_TO}'), '\u00df', 'ss') COLLATE "C")"""
    )


def fold_sql(expression: str, collation: str) -> str:
    """``unicode_fold_sql``, with a fast path for ASCII-only text (one byte per character),
    where case folding is ASCII's lower(). The trigram index on ``error`` is built on exactly
    this expression. ``expression`` appears in it several times."""
    return (
        f"CASE WHEN octet_length({expression}) = char_length({expression})"
        f' THEN lower(({expression}) COLLATE "C")'
        f" ELSE {unicode_fold_sql(expression, collation)} END"
    )


def _choose_fold_collation(conn: psycopg.Connection[Any]) -> str:
    for name in FOLD_COLLATIONS:
        if name != "default":
            row = conn.execute("SELECT 1 FROM pg_collation WHERE collname = %s", [name])
            if row.fetchone() is None:
                continue
        quoted = '"' + name + '"'
        # (A capital sigma inside a word: ICU would lower a final one to the final form.)
        folded = conn.execute(f"SELECT lower('\u00c9\u03a3\u0391' COLLATE {quoted})").fetchone()
        if folded is not None and folded[0] == "\u00e9\u03c3\u03b1":
            return name
    raise RuntimeError(
        "the database has no collation whose lower() knows Unicode (tried "
        + ", ".join(FOLD_COLLATIONS)
        + "): build PostgreSQL with ICU, or create the database with a UTF-8 locale"
    )


def _v1_events(conn: psycopg.Connection[Any]) -> None:
    encoding = conn.execute("SHOW server_encoding").fetchone()
    if encoding is None or encoding[0].upper() not in ("UTF8", "UTF-8"):
        raise RuntimeError(
            f"the database's encoding is {encoding[0] if encoding else '?'}, not UTF8:"
            " create it with ENCODING 'UTF8'"
        )
    try:
        with conn.transaction():  # a savepoint: keep the error message, not an aborted txn
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except psycopg.Error as exc:
        raise RuntimeError(
            f"cannot create the extension pg_trgm ({exc}): have a superuser run"
            " CREATE EXTENSION pg_trgm in this database, or grant CREATE on it"
        ) from exc
    collation = _choose_fold_collation(conn)
    text = " ".join(f'{c} text COLLATE "C" NOT NULL,' for c in TEXT_COLUMNS)
    conn.execute(
        "CREATE TABLE events ("
        " id uuid NOT NULL,"
        " occurred_at bigint NOT NULL,"
        " recorded_at bigint NOT NULL,"
        f" {text}"
        ' idempotency_key text COLLATE "C",'  # NULL when the client gave none
        " context jsonb NOT NULL,"
        " before jsonb,"
        " after jsonb,"
        " diff_available boolean NOT NULL,"
        " PRIMARY KEY (id, occurred_at)"
        ") PARTITION BY RANGE (occurred_at)"
    )
    conn.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    for column in INDEXED_COLUMNS:
        conn.execute(f"CREATE INDEX events_{column} ON events ({column}, id)")
    # Retention takes the oldest events of one type; the console's tabs filter by type and
    # sort by date. One index serves both.
    conn.execute("CREATE INDEX events_resource_occurred_at ON events (resource, occurred_at, id)")
    # context.<key> EQUALS as JSONB containment.
    conn.execute("CREATE INDEX events_context ON events USING gin (context jsonb_path_ops)")
    # CONTAINS on error: trigrams of the case-folded text.
    conn.execute(
        "CREATE INDEX events_error_trgm ON events"
        f" USING gin (({fold_sql('error', collation)}) gin_trgm_ops)"
    )
    conn.execute(
        "CREATE TABLE idempotency_keys ("
        ' recorded_by text COLLATE "C" NOT NULL,'
        ' idempotency_key text COLLATE "C" NOT NULL,'
        " id uuid NOT NULL,"
        " recorded_at bigint NOT NULL,"
        ' resource text COLLATE "C" NOT NULL,'
        " occurred_at bigint NOT NULL,"
        " PRIMARY KEY (recorded_by, idempotency_key))"
    )
    conn.execute(
        "CREATE INDEX idempotency_keys_occurred_at ON idempotency_keys (occurred_at, resource)"
    )
    conn.execute(
        "INSERT INTO auditlog_meta (name, value) VALUES ('fold_collation', %s)", [collation]
    )
    conn.execute(
        "INSERT INTO auditlog_meta (name, value) VALUES ('server_key', %s)"
        " ON CONFLICT (name) DO NOTHING",
        [secrets.token_bytes(32).hex()],
    )


def _v2_snapshot_text(conn: psycopg.Connection[Any]) -> None:
    # What CONTAINS on snapshot_text searches, as SQLite's SNAPSHOT_TEXT_SQL computes it:
    # the keys and string values of a snapshot, each once, sorted by bytes, one per line.
    # (A snapshot holding U+0000 is stored as a JSON string of its JSON text: that text.)
    conn.execute(
        "CREATE FUNCTION auditlog_snapshot_text(before jsonb, after jsonb) RETURNS text"
        " LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$"
        " SELECT string_agg(v, E'\\n' ORDER BY v COLLATE \"C\") FROM ("
        "   SELECT item #>> '{}' AS v"
        "   FROM jsonb_path_query(coalesce(before, 'null'), 'strict $.**') AS item"
        "   WHERE jsonb_typeof(item) = 'string'"
        "   UNION SELECT item #>> '{}'"
        "   FROM jsonb_path_query(coalesce(after, 'null'), 'strict $.**') AS item"
        "   WHERE jsonb_typeof(item) = 'string'"
        "   UNION SELECT k FROM jsonb_path_query(coalesce(before, 'null'), 'strict $.**')"
        "   AS item, jsonb_object_keys(CASE WHEN jsonb_typeof(item) = 'object'"
        "   THEN item ELSE '{}' END) AS k"
        "   UNION SELECT k FROM jsonb_path_query(coalesce(after, 'null'), 'strict $.**')"
        "   AS item, jsonb_object_keys(CASE WHEN jsonb_typeof(item) = 'object'"
        "   THEN item ELSE '{}' END) AS k"
        " ) AS texts $$"
    )


MIGRATIONS: list[Callable[[psycopg.Connection[Any]], None]] = [_v1_events, _v2_snapshot_text]


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply every migration not yet applied, each in its own transaction, holding the
    migration lock throughout. ``conn`` must be in autocommit mode. Returns the version.

    :raises RuntimeError: the schema is newer than this code, or a migration cannot run.
    """
    conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS auditlog_meta"
            ' (name text COLLATE "C" PRIMARY KEY, value text NOT NULL)'
        )
        row = conn.execute(
            "SELECT value FROM auditlog_meta WHERE name = 'schema_version'"
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {version} is newer than this audit-service knows"
                f" ({len(MIGRATIONS)}): upgrade audit-service"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("applying PostgreSQL schema migration %d", number)
            with conn.transaction():
                migration(conn)
                conn.execute(
                    "INSERT INTO auditlog_meta (name, value) VALUES ('schema_version', %s)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    [str(number)],
                )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
    return len(MIGRATIONS)


assert set(FIELDS) - {"source", "snapshot_text"} <= set(INDEXED_COLUMNS)

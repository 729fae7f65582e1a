"""The columns auditctl shows, the tabs, and each tab's default columns.

A column has a key (what ``--columns``, ``--where`` and ``--sort`` take, the CSV header and
the JSON key), a header (what the table shows) and, when the service can filter or sort by
it, the List field behind it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from clients import Event
from clients._values import format_time
from clients.cli._errors import UsageError

Value = str | bool | datetime | dict[str, str] | None


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    get: Callable[[Event], Value]
    field: str | None = None  # the List filter/sort field
    help: str = ""


def _context(key: str) -> Column:
    return Column(
        f"context.{key}",
        key,
        lambda e: e.context.get(key, ""),
        f"context.{key}",
        f"the event's context value {key!r}",
    )


COLUMNS: dict[str, Column] = {
    c.key: c
    for c in (
        Column("occurred_at", "Date", lambda e: e.occurred_at, "occurred_at", "when it happened"),
        Column(
            "recorded_at",
            "Recorded",
            lambda e: e.recorded_at,
            "recorded_at",
            "when the service stored it",
        ),
        Column("id", "ID", lambda e: e.id, None, "the event id (for auditctl diff)"),
        Column("resource", "Resource", lambda e: e.resource, "resource", "the tab"),
        Column(
            "identifier",
            "Identifier",
            lambda e: e.identifier,
            "identifier",
            "what changed (the entity, blueprint, run ... id)",
        ),
        Column(
            "blueprint", "Blueprint", lambda e: e.blueprint, "blueprint", "the entity's blueprint"
        ),
        Column(
            "integration",
            "Integration",
            lambda e: e.integration,
            "integration",
            "integration installation id",
        ),
        Column("run_id", "Run ID", lambda e: e.run_id, "run_id", "the run that made the change"),
        Column(
            "operation",
            "Operation",
            lambda e: e.operation,
            "operation",
            "create, update, delete, timer_expired, read",
        ),
        Column(
            "source",
            "Source",
            lambda e: e.source.label,
            "source",
            "who: name, else id (filters match either)",
        ),
        Column(
            "source_kind",
            "Source Kind",
            lambda e: e.source.kind,
            "source_kind",
            "user, integration, webhook, automation, system",
        ),
        Column("source_id", "Source ID", lambda e: e.source.id, None, "the source's id"),
        Column(
            "source_name",
            "Source Name",
            lambda e: e.source.name,
            None,
            "the source's name or email",
        ),
        Column(
            "origin",
            "Type",
            lambda e: e.origin,
            "origin",
            "the system it came through (ui, api, k8s_exporter, ...)",
        ),
        Column("status", "Status", lambda e: e.status, "status", "success or failure"),
        Column("error", "Error", lambda e: e.error, "error", "what went wrong"),
        Column(
            "recorded_by",
            "Recorded By",
            lambda e: e.recorded_by,
            "recorded_by",
            "the principal that submitted it",
        ),
        Column(
            "idempotency_key",
            "Idempotency Key",
            lambda e: e.idempotency_key,
            None,
            "the client's key",
        ),
        Column(
            "diff_available",
            "Diff",
            lambda e: e.diff_available,
            None,
            "whether auditctl diff has something to show",
        ),
        Column("context", "Context", lambda e: e.context, None, "every context value"),
    )
}

ALIASES = {
    "date": "occurred_at",
    "recorded": "recorded_at",
    "type": "origin",
    "entity": "identifier",
    "diff": "diff_available",
}

# --tab: the console's tabs and the resource each one shows.
TABS: dict[str, str] = {
    "entities": "ENTITY",
    "blueprints": "BLUEPRINT",
    "actions": "ACTION",
    "automations": "AUTOMATION",
    "scorecards": "SCORECARD",
    "runs": "RUN",
    "integrations": "INTEGRATION",
    "secrets": "SECRET",
    "sign-ins": "SIGN_IN",
}

_COMMON = ["occurred_at", "source", "operation", "origin", "status", "error"]
_EXTRA: dict[str | None, list[str]] = {
    None: ["resource", "identifier"],
    "entities": ["blueprint", "identifier"],
    "integrations": ["integration"],
    "runs": ["run_id"],
}

# Every column, for CSV exports: one flat row per event.
ALL_KEYS = [
    "id",
    "occurred_at",
    "recorded_at",
    "resource",
    "identifier",
    "blueprint",
    "integration",
    "run_id",
    "operation",
    "source_kind",
    "source_id",
    "source_name",
    "origin",
    "status",
    "error",
    "recorded_by",
    "idempotency_key",
    "diff_available",
    "context",
]


def default_keys(tab: str | None) -> list[str]:
    "Date, the tab's own columns, then Source, Operation, Type, Status, Error."
    return [_COMMON[0], *_EXTRA.get(tab, []), *_COMMON[1:]]


def column(name: str, *, what: str = "column") -> Column:
    """The column called ``name`` (its key, an alias, any case, ``-`` for ``_``).

    :raises UsageError: no such column; the message lists them.
    """
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in COLUMNS:
        return COLUMNS[key]
    if name.strip().startswith("context.") and len(name.strip()) > len("context."):
        return _context(name.strip()[len("context.") :])
    valid = ", ".join([*COLUMNS, "context.KEY"])
    raise UsageError(f"unknown {what} {name!r}; valid: {valid} (aliases: {_aliases_text()})")


def _aliases_text() -> str:
    return ", ".join(f"{alias}={key}" for alias, key in ALIASES.items())


def choose(spec: str | None, defaults: list[str]) -> list[Column]:
    """``--columns``: ``a,b,c`` chooses and orders; ``+x`` adds to the defaults, ``-x`` hides
    one of them (``-error,+id``).

    :raises UsageError: an unknown column, or nothing left to show.
    """
    keys = list(defaults)
    if spec:
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        relative = all(p[0] in "+-" for p in parts)
        if not relative:
            if any(p[0] in "+-" for p in parts):
                raise UsageError("--columns: either list the columns, or use only +COL and -COL")
            keys = [column(p).key for p in parts]
        for part in parts if relative else []:
            key = column(part[1:]).key
            if part[0] == "+":
                if key not in keys:
                    keys.append(key)
            elif key in keys:
                keys.remove(key)
    if not keys:
        raise UsageError("--columns leaves nothing to show")
    return [column(k) for k in keys]


def header(col: Column, tab: str | None) -> str:
    if col.key == "identifier" and tab == "entities":
        return "Entity"
    return col.header


def csv_text(value: Value) -> str:
    "A value as text for CSV and JSON: RFC 3339 times in the local timezone."
    if value is None:
        return ""
    if isinstance(value, datetime):
        return format_time(value, None)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False) if value else ""
    return value

"""``--tab``, ``--where``, ``--since``/``--until`` and ``--sort``, turned into List filters and
an ``order_by``; and the service's complaints about them turned back into the flag that
caused them.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from clients import AuditClientError, Filter, InvalidArgument
from clients._values import FILTER_FIELDS, FILTER_OPS, filter_op, format_time
from clients.cli._columns import TABS, column
from clients.cli._errors import CliError, UsageError, explain

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_ENUM_FIELDS = ("resource", "operation", "source_kind", "origin", "status")
_TIME_FIELDS = ("occurred_at", "recorded_at")
OPS_HELP = "= != ~ (contains) ^ (starts with) > >= < <="


@dataclass(frozen=True)
class Query:
    filters: list[Filter]
    where: list[tuple[str, str, str]]  # the user's --where rules: filters[i] for i < len

    def explain(self, error: AuditClientError, service: str) -> CliError:
        "The service's error, naming the --where rule (or other flag) it is about."
        what = ""
        if isinstance(error, InvalidArgument):
            match = re.match(r"filters\[(\d+)\]", error.field)
            if match:
                index = int(match.group(1))
                if index < len(self.where):
                    what = f"--where {' '.join(self.where[index])}"
                else:
                    what = f"--{self.filters[index].field}"
                return UsageError(f"{what}: {error.problem}")
        return explain(error, service, what)


def parse_when(text: str, flag: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` ago; a date (local midnight); a local date and time;
    or RFC 3339 with an offset.

    :raises UsageError:
    """
    now = now or datetime.now().astimezone()
    stripped = text.strip()
    match = _DURATION.match(stripped)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])
    try:
        parsed = datetime.fromisoformat(stripped.replace("z", "Z"))
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: use a duration (30m, 12h, 7d, 2w), a date (2026-01-31),"
            " a local time (2026-01-31T14:00) or RFC 3339 (2026-01-31T14:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()  # naive: local time


def where_rule(field: str, op: str, value: str) -> Filter:
    """One ``--where FIELD OP VALUE``. Enum fields take several values separated by commas
    (any of them matches).

    :raises UsageError: an unknown field or operator.
    """
    fields = ", ".join([*FILTER_FIELDS, "context.KEY"])
    aliases = "date, recorded, type, entity"
    try:
        col = column(field, what="field")
    except UsageError:
        col = None
    if col is None or col.field is None:
        raise UsageError(
            f"--where {field} {op} {value}: cannot filter on {field!r};"
            f" filter fields: {fields} (aliases: {aliases})"
        )
    try:
        op_name = filter_op(op)
    except InvalidArgument:
        raise UsageError(
            f"--where {field} {op} {value}: unknown operator {op!r}; use one of {OPS_HELP}"
        ) from None
    if col.field in _TIME_FIELDS:  # 7d, a local date or time, or RFC 3339
        when = parse_when(value, f"--where {field} {op}")
        return Filter(col.field, op_name, (format_time(when),))
    values = [v.strip() for v in value.split(",")] if col.field in _ENUM_FIELDS else [value]
    return Filter(col.field, op_name, tuple(values))


def build_query(args: argparse.Namespace, *, time_range: bool = True) -> Query:
    where: list[tuple[str, str, str]] = [tuple(w) for w in getattr(args, "where", None) or []]
    filters = [where_rule(*rule) for rule in where]
    tab = getattr(args, "tab", None)
    if tab:
        filters.append(Filter("resource", "EQUALS", (TABS[tab],)))
    if time_range:
        if getattr(args, "since", None):
            since = parse_when(args.since, "--since")
            filters.append(Filter.of("occurred_at", ">=", since))
        if getattr(args, "until", None):
            until = parse_when(args.until, "--until")
            filters.append(Filter.of("occurred_at", "<", until))
    return Query(filters, where)


def order_by(sort: str | None, default: str) -> str:
    """``--sort FIELD[:asc|desc]`` as the service's ``"<field> <dir>"``.

    :raises UsageError: not a sortable column, or not asc/desc.
    """
    if not sort:
        return default
    name, _, direction = sort.partition(":")
    direction = direction.strip().lower() or "asc"
    if direction not in ("asc", "desc"):
        raise UsageError(f"--sort {sort}: the direction is asc or desc")
    col = column(name, what="sort column")
    if col.field is None or col.field.startswith("context."):
        fields = ", ".join(FILTER_FIELDS)
        raise UsageError(f"--sort: cannot sort by {col.key}; sort by one of {fields}")
    return f"{col.field} {direction}"


def op_symbols() -> str:
    return " ".join(FILTER_OPS)

"""From events and views to what the templates show: table cells, header controls, tabs,
rule chips and the messages for the service's errors. No HTTP here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clients import AuditClientError, Event, InvalidArgument, enum_names
from clients._values import format_time
from clients.cli._columns import COLUMNS, TABS, Column, csv_text
from console._views import (
    ENUM_FIELDS,
    MEMBER_TAB,
    TAB_LABELS,
    View,
    field_kind,
    ops_for,
)


@dataclass(frozen=True)
class Cell:
    text: str
    time: str = ""  # RFC 3339 (UTC) for <time datetime>; the script shows it in local time
    href: str = ""
    cls: str = ""
    title: str = ""


@dataclass(frozen=True)
class Row:
    id: str
    diff_available: bool
    cells: list[Cell]


@dataclass(frozen=True)
class HeaderCell:
    key: str
    label: str
    sort_url: str = ""
    sorted: str = ""  # asc | desc | ""
    filter_field: str = ""  # when the column can be filtered
    kind: str = ""
    ops: dict[str, str] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)  # enum values


@dataclass(frozen=True)
class Link:
    label: str
    url: str
    active: bool = False


def utc_text(moment: datetime) -> str:
    "The fallback text of a time cell (without the script): UTC, to the second."
    return format_time(moment).replace("T", " ")[:19] + " UTC"


def cell(event: Event, col: Column, view: View) -> Cell:
    value = col.get(event)
    if isinstance(value, datetime):
        return Cell(utc_text(value), time=format_time(value), cls="time")
    text = csv_text(value)
    if col.key == "run_id" and text:
        return Cell(text, href=view.run_url(text), title=f"Entries of run {text}")
    if col.key == "status":
        return Cell(text.lower(), cls=f"status status-{text.lower()}")
    if col.key in ("operation", "origin", "resource", "source_kind"):
        return Cell(text.lower())
    if col.key == "source":
        title = f"{event.source.kind.lower()} {event.source.id}".strip()
        return Cell(text, title=title)
    if col.key == "error" and text:
        return Cell(text, cls="error-text")
    return Cell(text)


def rows(events: list[Event], view: View) -> list[Row]:
    columns = view.columns()
    return [Row(e.id, e.diff_available, [cell(e, col, view) for col in columns]) for e in events]


def header_cells(view: View) -> list[HeaderCell]:
    out = []
    for col in view.columns():
        label = view.header(col)
        field_name = col.field or ""
        if not field_name:
            out.append(HeaderCell(col.key, label))
            continue
        sortable = not field_name.startswith("context.")
        sorted_dir = view.sort_dir if field_name == view.sort_field else ""
        out.append(
            HeaderCell(
                col.key,
                label,
                sort_url=view.sorted_by(field_name).url() if sortable else "",
                sorted=sorted_dir,
                filter_field=field_name,
                kind=field_kind(field_name),
                ops=ops_for(field_name),
                choices=[n.lower() for n in enum_names(field_name)]
                if field_name in ENUM_FIELDS
                else [],
            )
        )
    return out


def tabs(view: View, role: str) -> list[Link]:
    if role != "admin":
        return [Link("My runs", View(MEMBER_TAB).url(), view.tab == MEMBER_TAB)]
    return [Link(TAB_LABELS[t], View(t).url(), t == view.tab) for t in TABS]


def tab_label(view: View, role: str) -> str:
    return "My runs" if role != "admin" else view.label


def rule_chips(view: View) -> list[Link]:
    return [Link(r.label, view.without_rule(i).url()) for i, r in enumerate(view.rules)]


def column_choices(view: View) -> list[dict[str, Any]]:
    "Every column for the chooser: the shown ones in their order, then the hidden ones."
    shown = view.column_keys
    hidden = [k for k in COLUMNS if k not in shown and k != "context"]
    return [
        {"key": k, "header": view.header(COLUMNS[k]) if k in COLUMNS else k, "shown": k in shown}
        for k in [*shown, *hidden]
    ]


def view_fields(view: View) -> list[tuple[str, str]]:
    "The hidden inputs that carry the view through a GET form (page left out: forms restart)."
    return [(k, v) for k, v in view.first_page().params()]


def explain_list_error(error: AuditClientError, view: View) -> str:
    "The service's complaint about a List, in the terms of the page."
    if isinstance(error, InvalidArgument):
        if error.field == "page_token":
            return "This page link is no longer valid for this view; start again from the newest."
        match = re.match(r"filters\[(\d+)\]", error.field)
        if match and int(match.group(1)) < len(view.rules):
            rule = view.rules[int(match.group(1))]
            return f"The rule “{rule.label}” is not valid: {error.problem}"
        return f"The service did not accept this view: {error.details}"
    return f"The service failed: {error}"

"""Writing events: a rich table, JSON, JSON Lines, CSV, or one text line per event (tail).

Times show in the local timezone: ``2026-01-31 14:02:11`` in tables and lines, RFC 3339 with
the local offset in JSON and CSV.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from clients import Event
from clients.cli._columns import Column, Value, csv_text, header

_STATUS_STYLE = {"SUCCESS": "green", "FAILURE": "bold red"}
_OPERATION_STYLE = {"CREATE": "green", "UPDATE": "yellow", "DELETE": "red"}


def console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A rich console; when not on a terminal it writes plain text, as wide as $COLUMNS
    (default 160), so piped tables do not wrap at 80."""
    target = file or (sys.stderr if stderr else sys.stdout)
    width = None
    if not target.isatty():
        try:
            width = int(os.environ.get("COLUMNS", "160"))
        except ValueError:
            width = 160
    return Console(file=target, width=width, highlight=False, soft_wrap=False)


def local_time(value: datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def display(value: Value) -> str:
    "A value as a person reads it in a table or a line."
    if value is None or value == "" or value == {}:
        return "-" if value is None else ""
    if isinstance(value, datetime):
        return local_time(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return value


def _styled(col: Column, value: Value) -> Text:
    text = display(value)
    style = ""
    if col.key == "status":
        style = _STATUS_STYLE.get(str(value), "")
    elif col.key == "operation":
        style = _OPERATION_STYLE.get(str(value), "")
    elif col.key == "error":
        style = "red"
    return Text(text, style=style)


def local_zone_label() -> str:
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    return f"{now.tzname()} (UTC{offset[:3]}:{offset[3:]})"


def write_table(events: list[Event], columns: list[Column], tab: str | None, out: Console) -> None:
    table = Table(
        caption=f"{len(events)} event{'s' if len(events) != 1 else ''};"
        f" times in {local_zone_label()}",
        caption_justify="left",
        header_style="bold",
    )
    for col in columns:
        table.add_column(header(col, tab), overflow="fold")
    for event in events:
        table.add_row(*(_styled(col, col.get(event)) for col in columns))
    out.print(table)


def line(event: Event, columns: list[Column]) -> Text:
    "One event as one line of text (tail): the columns' values, two spaces apart."
    text = Text()
    for i, col in enumerate(columns):
        if i:
            text.append("  ")
        value = col.get(event)
        text.append_text(_styled(col, value) if display(value) else Text("-"))
    return text


def json_record(event: Event, columns: list[Column] | None) -> dict[str, Any]:
    "The whole event (``columns`` None), or the chosen columns by key."
    if columns is None:
        return event.to_dict(tz=None)
    out: dict[str, Any] = {}
    for col in columns:
        value = col.get(event)
        out[col.key] = value if isinstance(value, bool | dict) else csv_text(value)
    return out


class Writer:
    "Streams events in one machine format: json (an array), jsonl or csv."

    def __init__(self, fmt: str, file: IO[str], columns: list[Column] | None) -> None:
        self.fmt = fmt
        self.file = file
        self.columns = columns
        self.count = 0
        self._csv: Any = None
        if fmt == "csv":
            assert columns is not None
            self._csv = csv.writer(file, lineterminator="\n")
            self._csv.writerow([c.key for c in columns])
        elif fmt == "json":
            file.write("[")

    def write(self, event: Event) -> None:
        if self.fmt == "csv":
            assert self.columns is not None
            self._csv.writerow([csv_text(c.get(event)) for c in self.columns])
        else:
            text = json.dumps(json_record(event, self.columns), ensure_ascii=False)
            if self.fmt == "json":
                self.file.write(("\n  " if self.count == 0 else ",\n  ") + text)
            else:
                self.file.write(text + "\n")
        self.count += 1

    def write_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.write(event)

    def close(self) -> None:
        if self.fmt == "json":
            self.file.write("\n]\n" if self.count else "]\n")
        self.file.flush()

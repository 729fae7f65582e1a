"""``auditctl list``, ``tail`` and ``export``: reading the log."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from clients import AuditClient, AuditClientError, Event, Unavailable
from clients.cli._columns import ALL_KEYS, Column, choose, default_keys
from clients.cli._errors import EXIT_OK, CliError, UsageError
from clients.cli._output import Writer, console, json_record, line, write_table
from clients.cli._query import Query, build_query, order_by, parse_when
from clients.cli._settings import resolve

PROGRESS_EVERY = 500  # events between progress updates


def _connect(args: argparse.Namespace) -> AuditClient:
    connection = resolve(args)
    args.resolved_service = connection.service
    return connection.client()


@contextlib.contextmanager
def _explained(query: Query, args: argparse.Namespace) -> Iterator[None]:
    "Client errors raised inside, as the line that names the flag they are about."
    try:
        yield
    except AuditClientError as exc:
        raise query.explain(exc, getattr(args, "resolved_service", "")) from None


def run_list(args: argparse.Namespace) -> int:
    query = build_query(args)
    sort = order_by(args.sort, "occurred_at desc")
    if args.limit < 0:
        raise UsageError("--limit must be 0 (no limit) or more")
    columns: list[Column] | None = choose(args.columns, default_keys(args.tab))
    if args.format == "json" or args.format == "jsonl":
        columns = columns if args.columns else None
    with _connect(args) as client, _explained(query, args):
        events = client.list(
            *query.filters,
            order_by=sort,
            limit=args.limit or None,
            page_size=min(args.limit or 1000, 1000),
            include_snapshots=args.snapshots,
        )
        if args.format == "table":
            assert columns is not None
            rows = list(events)
            if not rows:
                print("no events match", file=sys.stderr)
                return EXIT_OK
            write_table(rows, columns, args.tab, console())
            return EXIT_OK
        writer = Writer(args.format, sys.stdout, columns)
        writer.write_all(events)
        writer.close()
    return EXIT_OK


def run_tail(args: argparse.Namespace) -> int:
    query = build_query(args, time_range=False)
    if args.lines < 0:
        raise UsageError("--lines must be 0 or more")
    if args.interval <= 0:
        raise UsageError("--interval must be more than 0 seconds")
    columns = choose(args.columns, default_keys(args.tab))
    out = console()

    def emit(event: Event) -> None:
        if args.format == "jsonl":
            sys.stdout.write(json.dumps(json_record(event, None), ensure_ascii=False) + "\n")
        else:
            out.print(line(event, columns), soft_wrap=True)
        sys.stdout.flush()

    with _connect(args) as client, _explained(query, args):
        newest = list(
            client.list(*query.filters, order_by="recorded_at desc", limit=max(args.lines, 1))
        )
        for event in reversed(newest[: args.lines]):
            emit(event)
        if not args.follow:
            return EXIT_OK
        cursor = newest[0] if newest else None
        lost = False
        try:
            while True:
                try:
                    for event in client.follow(
                        *query.filters, after=cursor, interval=args.interval
                    ):
                        emit(event)
                        cursor = event
                        lost = False
                except Unavailable as exc:
                    if not lost:
                        print(
                            f"auditctl: lost the audit service ({exc.details}); still trying",
                            file=sys.stderr,
                            flush=True,
                        )
                        lost = True
                    time.sleep(args.interval)
        except KeyboardInterrupt:
            return EXIT_OK  # the way to stop following


def run_export(args: argparse.Namespace) -> int:
    output = args.output
    fmt = args.format or ("csv" if output and output.lower().endswith(".csv") else "jsonl")
    query = build_query(args)
    sort = order_by(args.sort, "occurred_at asc")
    columns: list[Column] | None = None  # JSON Lines: the whole event, unless --columns
    if fmt == "csv" or args.columns:
        columns = choose(args.columns, ALL_KEYS if fmt == "csv" else default_keys(args.tab))
    to_stdout = output in (None, "-")
    show_progress = sys.stderr.isatty() and not (to_stdout and sys.stdout.isatty())
    since = parse_when(args.since, "--since") if args.since else None
    until = parse_when(args.until, "--until") if args.until else None
    timeline = sort == "occurred_at asc"
    with _connect(args) as client, _explained(query, args):
        events = client.list(
            *query.filters, order_by=sort, include_snapshots=args.snapshots, page_size=1000
        )
        with _destination(output) as file:
            writer = Writer(fmt, file, columns)
            if show_progress:
                _export_with_progress(events, writer, since, until, timeline)
            else:
                writer.write_all(events)
            writer.close()
    where = "stdout" if to_stdout else output
    print(f"exported {writer.count} events to {where}", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _destination(output: str | None) -> Iterator[IO[str]]:
    """stdout, or a temporary file next to ``output`` renamed onto it once complete, so an
    interrupted export never leaves a file that looks whole."""
    if output in (None, "-"):
        yield sys.stdout
        return
    target = Path(output)
    try:
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (renamed or removed below)
            "w",
            dir=target.parent if str(target.parent) else ".",
            prefix=f".{target.name}.",
            suffix=".partial",
            delete=False,
            encoding="utf-8",
            newline="",
        )
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror}") from None
    try:
        with handle:
            yield handle
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _export_with_progress(
    events: Iterator[Event],
    writer: Writer,
    since: datetime | None,
    until: datetime | None,
    timeline: bool,
) -> None:
    """Events written with a progress display on stderr. Sorted by date ascending (the
    default), the bar shows how much of the time range is done; otherwise a count."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("exporting"),
        BarColumn(),
        TextColumn("{task.fields[count]:,} events"),
        TimeElapsedColumn(),
        console=console(stderr=True),
        transient=False,
    )
    end = (until or datetime.now().astimezone()).timestamp()
    start: float | None = since.timestamp() if since else None
    with progress:
        task = progress.add_task("export", total=1.0 if timeline else None, count=0)
        for n, event in enumerate(events, 1):
            writer.write(event)
            at = event.occurred_at.timestamp() if event.occurred_at else None
            if start is None:
                start = at
            if n % PROGRESS_EVERY == 0:
                done: float | None = None
                if timeline and at is not None and start is not None:
                    done = 1.0 if end <= start else min(max((at - start) / (end - start), 0), 1)
                progress.update(task, completed=done, count=n)
        progress.update(task, completed=1.0 if timeline else None, count=writer.count)

"""``auditctl diff ID``: what an event changed."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

from rich.text import Text

from clients import AuditClientError, Diff
from clients.cli._errors import EXIT_OK, explain
from clients.cli._output import console
from clients.cli._settings import resolve

_LINE_STYLES = (("+++", "bold"), ("---", "bold"), ("@@", "cyan"), ("+", "green"), ("-", "red"))


def pretty(snapshot: dict[str, Any]) -> list[str]:
    "A snapshot as stable, indented JSON lines (keys sorted), the text the diff compares."
    return json.dumps(snapshot, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def unified(diff: Diff, context: int) -> list[str]:
    return list(
        difflib.unified_diff(
            pretty(diff.before),
            pretty(diff.after),
            fromfile=f"{diff.id} before",
            tofile=f"{diff.id} after",
            lineterm="",
            n=context,
        )
    )


def run_diff(args: argparse.Namespace) -> int:
    connection = resolve(args)
    with connection.client() as client:
        try:
            diff = client.get_diff(args.id)
        except AuditClientError as exc:
            raise explain(exc, connection.service, f"event {args.id}") from None
    if args.format == "json":
        print(json.dumps(diff.to_dict(), indent=2, ensure_ascii=False))
        return EXIT_OK
    if not diff.available:
        print(f"no diff available for {diff.id}: {diff.reason}")
        return EXIT_OK
    if args.format == "patch":
        print(json.dumps(diff.patch, indent=2, ensure_ascii=False))
        return EXIT_OK
    lines = unified(diff, args.context)
    if not lines:
        print(f"no changes: the before and after snapshots of {diff.id} are the same")
        return EXIT_OK
    out = console()
    for text in lines:
        style = next((s for prefix, s in _LINE_STYLES if text.startswith(prefix)), "")
        out.print(Text(text, style=style), soft_wrap=True)
    sys.stdout.flush()
    return EXIT_OK

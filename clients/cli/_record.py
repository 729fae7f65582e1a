"""``auditctl record``: one event from flags or JSON, for CI pipelines and scripts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clients import AuditClientError, Event
from clients._values import format_time
from clients.cli._errors import EXIT_OK, UsageError, explain
from clients.cli._query import parse_when
from clients.cli._settings import resolve

# flag dest -> event field, for the plain text fields
TEXT_FLAGS = (
    "resource",
    "identifier",
    "blueprint",
    "integration",
    "run_id",
    "operation",
    "origin",
    "status",
    "error",
    "idempotency_key",
)
SOURCE_FLAGS = {"source_kind": "kind", "source_id": "id", "source_name": "name"}
DEFAULT_ORIGIN = "API"


def _read_json(text: str, what: str) -> Any:
    "JSON text, ``@FILE`` for a file's, or ``-`` for standard input's."
    try:
        if text == "-":
            text = sys.stdin.read()
        elif text.startswith("@"):
            text = Path(text[1:]).read_text()
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {text[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: not valid JSON ({exc})") from None


def event_data(args: argparse.Namespace) -> dict[str, Any]:
    "The event as a dict: the --json document, with the flags laid over it."
    data: dict[str, Any] = {}
    if args.json is not None:
        loaded = _read_json(args.json if args.json == "-" else "@" + args.json, "--json")
        if not isinstance(loaded, dict):
            raise UsageError("--json: the event must be a JSON object")
        data = loaded
    for name in TEXT_FLAGS:
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    if args.occurred_at is not None:
        data["occurred_at"] = format_time(parse_when(args.occurred_at, "--occurred-at"))
    source_flags = {f: getattr(args, name) for name, f in SOURCE_FLAGS.items()}
    if any(v is not None for v in source_flags.values()):
        source = dict(data.get("source") or {})
        source.update({k: v for k, v in source_flags.items() if v is not None})
        data["source"] = source
    if args.context:
        context = dict(data.get("context") or {})
        for item in args.context:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--context {item!r}: use KEY=VALUE")
            context[key] = value
        data["context"] = context
    for name in ("before", "after"):
        text = getattr(args, name)
        if text is not None:
            data[name] = _read_json(text, f"--{name}")
    data.setdefault("origin", DEFAULT_ORIGIN)
    return data


def run_record(args: argparse.Namespace) -> int:
    try:
        event = Event.from_dict(event_data(args))
    except AuditClientError as exc:  # found before sending: an unknown enum name, ...
        raise UsageError(f"invalid event: {exc}") from None
    connection = resolve(args)
    with connection.client() as client:
        try:
            result = client.record(event)
        except AuditClientError as exc:
            raise explain(exc, connection.service, "invalid event") from None
    if args.format == "json":
        recorded_at = result.recorded_at.isoformat() if result.recorded_at else None
        print(
            json.dumps({"id": result.id, "duplicate": result.duplicate, "recorded_at": recorded_at})
        )
    else:
        print(result.id)
        if result.duplicate:
            print(
                f"auditctl: duplicate: idempotency key {event.idempotency_key!r} was recorded"
                " before; nothing new was stored",
                file=sys.stderr,
            )
    return EXIT_OK

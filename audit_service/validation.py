"""The rules an event must meet before it is stored. Each failure names the field."""

from __future__ import annotations

from typing import Any

from audit_service.errors import InvalidArgument
from audit_service.models import NewEvent, ResourceType, Status

MAX_EVENT_BYTES = 1024 * 1024
MAX_SNAPSHOT_DEPTH = 32
MAX_IDENTIFIER_CHARS = 512
MAX_ERROR_BYTES = 4096
MAX_SHORT_TEXT_CHARS = 512
MAX_CONTEXT_ENTRIES = 64
MAX_CONTEXT_KEY_CHARS = 128
MAX_CONTEXT_VALUE_CHARS = 1024
MAX_FUTURE_SKEW_NS = 5 * 60 * 1_000_000_000


def validate(
    event: NewEvent,
    now_ns: int,
    oldest_allowed_ns: int | None = None,
    *,
    depth_checked: bool = False,
) -> None:
    """Raise InvalidArgument for the first rule ``event`` breaks.

    ``oldest_allowed_ns``: events that occurred before it would already be past retention.
    ``depth_checked``: the snapshots' nesting was checked already (``convert`` does, as it
    builds them from the wire), so they need not be walked again.
    """
    if not event.identifier:
        raise InvalidArgument("event.identifier", "required")
    _max_chars("event.identifier", event.identifier, MAX_IDENTIFIER_CHARS)
    _no_nul("event.identifier", event.identifier)
    if event.resource is ResourceType.ENTITY and not event.blueprint:
        raise InvalidArgument("event.blueprint", "required for ENTITY events")
    for name, value in (
        ("event.blueprint", event.blueprint),
        ("event.integration", event.integration),
        ("event.run_id", event.run_id),
        ("event.idempotency_key", event.idempotency_key),
        ("event.source.id", event.source.id),
        ("event.source.name", event.source.name),
    ):
        _max_chars(name, value, MAX_SHORT_TEXT_CHARS)
        _no_nul(name, value)
    if event.error and event.status is Status.SUCCESS:
        raise InvalidArgument("event.error", "only a STATUS_FAILURE event may carry an error")
    if len(event.error.encode()) > MAX_ERROR_BYTES:
        raise InvalidArgument("event.error", f"longer than {MAX_ERROR_BYTES} bytes")
    _no_nul("event.error", event.error)
    if event.occurred_at > now_ns + MAX_FUTURE_SKEW_NS:
        raise InvalidArgument("event.occurred_at", "more than 5 minutes in the future")
    if oldest_allowed_ns is not None and event.occurred_at < oldest_allowed_ns:
        raise InvalidArgument(
            "event.occurred_at",
            f"older than the retention period for {event.resource.value} events",
        )
    _check_context(event.context)
    if depth_checked:
        return
    for name, snapshot in (("event.before", event.before), ("event.after", event.after)):
        if snapshot is not None and depth(snapshot) > MAX_SNAPSHOT_DEPTH:
            raise InvalidArgument(name, f"nests deeper than {MAX_SNAPSHOT_DEPTH} levels")


def depth(value: Any) -> int:
    "Nesting depth of objects and arrays: a flat object is 1, a scalar 0."
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _check_context(context: dict[str, str]) -> None:
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise InvalidArgument("event.context", f"more than {MAX_CONTEXT_ENTRIES} entries")
    for key, value in context.items():
        if not key:
            raise InvalidArgument("event.context", "keys must not be empty")
        if (
            len(key) > MAX_CONTEXT_KEY_CHARS
            or len(value) > MAX_CONTEXT_VALUE_CHARS
            or "\x00" in key
            or "\x00" in value
        ):  # (the entry's name is built only for the error)
            name = f"event.context[{key[:40]!r}]"
            _max_chars(name, key, MAX_CONTEXT_KEY_CHARS)
            _max_chars(name, value, MAX_CONTEXT_VALUE_CHARS)
            _no_nul(name, key + value)


def _no_nul(name: str, value: str) -> None:
    # PostgreSQL's text cannot hold U+0000; both backends refuse it so they store alike.
    # (Snapshots may hold it: they are stored as JSON text where needed.)
    if "\x00" in value:
        raise InvalidArgument(name, "must not contain the NUL character (U+0000)")


def _max_chars(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(name, f"longer than {limit} characters ({len(value)})")

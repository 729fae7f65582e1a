"""Fitting events under the service's limits (shared/design/api.md, "Errors and limits")
before they are spooled, so that a source's odd object does not cost the whole event."""

from __future__ import annotations

from typing import Any

from clients import pb
from collectors.runtime.wire import varint

MAX_EVENT_BYTES = 1024 * 1024  # the service refuses bigger events (RESOURCE_EXHAUSTED)
MAX_ERROR_BYTES = 4096
MAX_IDENTIFIER_CHARS = 512
MAX_SHORT_TEXT_CHARS = 512  # blueprint, source id and name, idempotency key
MAX_CONTEXT_VALUE_CHARS = 1024
MAX_SNAPSHOT_DEPTH = 32  # the top-level object is level 1
OMITTED_KEY = "snapshots_omitted"


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


def fits_as_snapshot(value: Any) -> bool:
    "Whether ``value`` is an object the service takes as a snapshot (depth at most 32)."
    return isinstance(value, dict) and depth(value) <= MAX_SNAPSHOT_DEPTH


def _cut(text: str, limit: int) -> str:
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit_texts(event: pb.AuditEvent) -> None:
    "Texts cut to their limits, NUL characters removed (in place)."
    if event.error and (len(event.error) > MAX_ERROR_BYTES // 4 or "\x00" in event.error):
        error = event.error.replace("\x00", "").encode()
        if len(error) > MAX_ERROR_BYTES:
            error = error[: MAX_ERROR_BYTES - 3].decode(errors="ignore").encode() + "…".encode()
        event.error = error.decode()
    if len(event.identifier) > MAX_IDENTIFIER_CHARS or "\x00" in event.identifier:
        event.identifier = _cut(event.identifier, MAX_IDENTIFIER_CHARS)
    for name in ("blueprint",):
        value = getattr(event, name)
        if len(value) > MAX_SHORT_TEXT_CHARS or "\x00" in value:
            setattr(event, name, _cut(value, MAX_SHORT_TEXT_CHARS))
    source = event.source
    if len(source.id) > MAX_SHORT_TEXT_CHARS or "\x00" in source.id:
        source.id = _cut(source.id, MAX_SHORT_TEXT_CHARS)
    if len(source.name) > MAX_SHORT_TEXT_CHARS or "\x00" in source.name:
        source.name = _cut(source.name, MAX_SHORT_TEXT_CHARS)
    context = event.context
    # Keys, then values by key: a map's items() is a view that iterates in Python.
    long = [k for k in context if len(v := context[k]) > MAX_CONTEXT_VALUE_CHARS or "\x00" in v]
    for key in long:
        context[key] = _cut(context[key], MAX_CONTEXT_VALUE_CHARS)


def fit_event(event: pb.AuditEvent) -> pb.AuditEvent:
    """``event``, changed in place so the service can take it: texts cut to their limits
    (NUL characters removed); over 1 MiB serialized, the ``before`` snapshot dropped, then
    ``after`` too, with ``context.snapshots_omitted`` saying so (the event itself is kept:
    who changed what, and when, matters more than the object's content)."""
    _fit_texts(event)
    size = event.ByteSize()
    if size <= MAX_EVENT_BYTES:
        return event
    event.ClearField("before")
    if event.ByteSize() > MAX_EVENT_BYTES:
        event.ClearField("after")
        event.context[OMITTED_KEY] = f"before and after: the event was {size} bytes"
    else:
        event.context[OMITTED_KEY] = f"before: the event was {size} bytes"
    return event


_BEFORE_TAG = varint(pb.AuditEvent.BEFORE_FIELD_NUMBER << 3 | 2)  # length-delimited
_AFTER_TAG = varint(pb.AuditEvent.AFTER_FIELD_NUMBER << 3 | 2)


def fit_serialized(event: pb.AuditEvent, before: bytes | None, after: bytes | None) -> bytes:
    """What ``fit_event`` makes of ``event`` with these snapshots (serialized
    ``google.protobuf.Struct``s, or None for none), serialized, without parsing them:
    ``event`` (which has no snapshots of its own) is fitted and serialized, and the snapshots
    it keeps are appended as its ``before`` and ``after`` fields. It parses as the same
    message; only the order of the fields on the wire differs."""
    if event.HasField("before") or event.HasField("after"):
        raise ValueError("the event has snapshots of its own")
    _fit_texts(event)
    before_field = b"" if before is None else _BEFORE_TAG + varint(len(before)) + before
    after_field = b"" if after is None else _AFTER_TAG + varint(len(after)) + after
    size = event.ByteSize() + len(before_field) + len(after_field)
    if size > MAX_EVENT_BYTES:
        before_field = b""
        if event.ByteSize() + len(after_field) > MAX_EVENT_BYTES:
            after_field = b""
            event.context[OMITTED_KEY] = f"before and after: the event was {size} bytes"
        else:
            event.context[OMITTED_KEY] = f"before: the event was {size} bytes"
    return event.SerializeToString() + before_field + after_field

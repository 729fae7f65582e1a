"""Plain Python values <-> ``auditlog.v1`` protobuf messages.

Events, sources, diffs and record results are small dataclasses; times are timezone-aware
``datetime`` objects; snapshots are dicts; enums are their short names in upper case
(``"ENTITY"`` for ``RESOURCE_TYPE_ENTITY``). Enum names are accepted short or full, in any
case, with ``-`` for ``_`` (``"entity"``, ``"sign-in"``, ``"RESOURCE_TYPE_SIGN_IN"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, NoReturn

from google.protobuf import struct_pb2, timestamp_pb2

from clients._errors import AuditClientError, invalid_argument, invalid_event, is_event_field
from clients._generated.auditlog.v1 import audit_pb2 as pb

JSONObject = dict[str, Any]

# enum field -> (protobuf enum, prefix of its value names)
_ENUMS: dict[str, tuple[Any, str]] = {
    "resource": (pb.ResourceType, "RESOURCE_TYPE_"),
    "operation": (pb.Operation, "OPERATION_"),
    "origin": (pb.Origin, "ORIGIN_"),
    "status": (pb.Status, "STATUS_"),
    "source_kind": (pb.SourceKind, "SOURCE_KIND_"),
}

# The List filter fields and operators, as the service names them (api.md, "Filters").
FILTER_FIELDS = (
    "occurred_at",
    "recorded_at",
    "resource",
    "identifier",
    "blueprint",
    "integration",
    "run_id",
    "operation",
    "source",
    "source_kind",
    "origin",
    "status",
    "error",
    "recorded_by",
    "snapshot_text",  # CONTAINS only; not a sort
)
CONTEXT_PREFIX = "context."
FILTER_OPS: dict[str, str] = {
    "=": "EQUALS",
    "!=": "NOT_EQUALS",
    "~": "CONTAINS",
    "^": "STARTS_WITH",
    ">": "GT",
    ">=": "GTE",
    "<": "LT",
    "<=": "LTE",
}
_OP_WORDS = {"EQ": "EQUALS", "NE": "NOT_EQUALS", "STARTS": "STARTS_WITH"}
_MAX_SAFE_INT = 2**53


def enum_names(field_name: str) -> list[str]:
    "The short names ``field_name`` (resource, operation, origin, status, source_kind) takes."
    enum, prefix = _ENUMS[field_name]
    names = [value.name for value in enum.DESCRIPTOR.values]
    return [name[len(prefix) :] for name in names if not name.endswith("_UNSPECIFIED")]


def short_name(field_name: str, value: str | int, where: str = "") -> str:
    """``value`` as the short upper-case name of a ``field_name`` enum value.

    :raises InvalidEvent: (when ``where`` is an event field) or InvalidArgument: no such value.
    """
    enum, prefix = _ENUMS[field_name]
    if isinstance(value, int) and not isinstance(value, bool):
        if value in enum.values():
            full: str = enum.Name(value)
            return full[len(prefix) :]
        text = str(value)
    else:
        text = str(value).strip().upper().replace("-", "_")
        text = text.removeprefix(prefix)
        if prefix + text in enum.DESCRIPTOR.values_by_name:
            return text
    valid = ", ".join(name.lower() for name in enum_names(field_name))
    problem = f"{value!r} is not a valid {field_name}; valid values: {valid}"
    where = where or field_name
    raise (
        invalid_event(where, problem) if is_event_field(where) else invalid_argument(where, problem)
    )


def enum_number(field_name: str, value: str | int, where: str = "") -> Any:
    "The protobuf number (the enum's ``ValueType``) of a short or full name."
    enum, prefix = _ENUMS[field_name]
    if value in ("", "UNSPECIFIED"):
        return 0
    number: int = enum.Value(prefix + short_name(field_name, value, where))
    return number


def _enum_short(field_name: str, number: int) -> str:
    enum, prefix = _ENUMS[field_name]
    try:
        full: str = enum.Name(number)
    except ValueError:  # a value added to the contract after this client was built
        return str(number)
    return full[len(prefix) :]


# -- times ------------------------------------------------------------------------------------


def parse_time(value: datetime | str, where: str) -> datetime:
    """An aware datetime from a datetime or RFC 3339 text.

    :raises InvalidEvent/InvalidArgument: malformed, or without a UTC offset.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            _raise(where, f"{value!r} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)")
    if value.tzinfo is None or value.utcoffset() is None:
        _raise(where, f"{value.isoformat()!r} has no timezone; use an aware datetime or add Z")
    return value


def format_time(value: datetime, tz: tzinfo | None = UTC) -> str:
    "RFC 3339 with microseconds; ``Z`` for UTC. ``tz=None``: the local timezone."
    text = value.astimezone(tz).isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def to_timestamp(value: datetime, out: timestamp_pb2.Timestamp) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    delta = value - epoch
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    seconds, micro = divmod(micros, 1_000_000)
    out.seconds = seconds
    out.nanos = micro * 1000


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, UTC).replace(microsecond=ts.nanos // 1000)


def _raise(where: str, problem: str) -> NoReturn:
    raise (
        invalid_event(where, problem) if is_event_field(where) else invalid_argument(where, problem)
    )


# -- snapshots --------------------------------------------------------------------------------


def struct_to_dict(struct: struct_pb2.Struct) -> JSONObject:
    "A Struct as a dict; whole numbers come back as ints (``1``, not ``1.0``)."
    return {key: value_to_python(value) for key, value in struct.fields.items()}


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) <= _MAX_SAFE_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def dict_to_struct(data: Any, out: struct_pb2.Struct, where: str) -> None:
    if not isinstance(data, Mapping):
        _raise(where, f"a snapshot is a JSON object (a dict), not {type(data).__name__}")
    out.SetInParent()  # an empty snapshot is still a snapshot
    try:
        out.update(data)
    except (ValueError, TypeError, AttributeError) as exc:
        _raise(where, f"not JSON-compatible: {exc}")


# -- the values -------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Source:
    "Who made the change: ``kind`` (user, integration, webhook, automation, system), id, name."

    kind: str = "UNSPECIFIED"
    id: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("", "UNSPECIFIED"):
            self.kind = short_name("source_kind", self.kind, "event.source.kind")
        else:
            self.kind = "UNSPECIFIED"

    @property
    def label(self) -> str:
        "What the Source column shows: the name, or the id when there is no name."
        return self.name or self.id


@dataclass(kw_only=True, slots=True)
class Event:
    """One audit event (``auditlog.v1.AuditEvent``) in plain Python values.

    ``resource``, ``identifier``, ``operation`` and ``origin`` are required (and
    ``blueprint`` for ENTITY events); ``id``, ``recorded_at``, ``recorded_by`` and
    ``diff_available`` are set by the service and ignored when recording.

    :raises InvalidEvent: an enum name that does not exist, a time without a timezone.
    """

    resource: str
    identifier: str
    operation: str
    origin: str
    blueprint: str = ""
    integration: str = ""
    run_id: str = ""
    source: Source = field(default_factory=Source)
    status: str = "SUCCESS"
    error: str = ""
    occurred_at: datetime | None = None
    idempotency_key: str = ""
    before: JSONObject | None = None
    after: JSONObject | None = None
    context: dict[str, str] = field(default_factory=dict)
    # Output only.
    id: str = ""
    recorded_at: datetime | None = None
    recorded_by: str = ""
    diff_available: bool = False

    def __post_init__(self) -> None:
        self.resource = short_name("resource", self.resource, "event.resource")
        self.operation = short_name("operation", self.operation, "event.operation")
        self.origin = short_name("origin", self.origin, "event.origin")
        self.status = short_name("status", self.status or "SUCCESS", "event.status")
        if self.occurred_at is not None:
            self.occurred_at = parse_time(self.occurred_at, "event.occurred_at")

    def to_pb(self) -> pb.AuditEvent:
        "The event as a protobuf message, ready to record."
        message = pb.AuditEvent(
            idempotency_key=self.idempotency_key,
            resource=enum_number("resource", self.resource, "event.resource"),
            identifier=self.identifier,
            blueprint=self.blueprint,
            integration=self.integration,
            run_id=self.run_id,
            operation=enum_number("operation", self.operation, "event.operation"),
            source=pb.Source(
                kind=enum_number("source_kind", self.source.kind, "event.source.kind"),
                id=self.source.id,
                name=self.source.name,
            ),
            origin=enum_number("origin", self.origin, "event.origin"),
            status=enum_number("status", self.status, "event.status"),
            error=self.error,
            context=self.context,
        )
        if self.occurred_at is not None:
            to_timestamp(parse_time(self.occurred_at, "event.occurred_at"), message.occurred_at)
        if self.before is not None:
            dict_to_struct(self.before, message.before, "event.before")
        if self.after is not None:
            dict_to_struct(self.after, message.after, "event.after")
        return message

    @classmethod
    def from_pb(cls, message: pb.AuditEvent) -> Event:
        "An event read from the service."
        return cls(
            id=message.id,
            idempotency_key=message.idempotency_key,
            occurred_at=from_timestamp(message.occurred_at)
            if message.HasField("occurred_at")
            else None,
            recorded_at=from_timestamp(message.recorded_at)
            if message.HasField("recorded_at")
            else None,
            resource=_enum_short("resource", message.resource),
            identifier=message.identifier,
            blueprint=message.blueprint,
            integration=message.integration,
            run_id=message.run_id,
            operation=_enum_short("operation", message.operation),
            source=Source(
                kind=_enum_short("source_kind", message.source.kind),
                id=message.source.id,
                name=message.source.name,
            ),
            origin=_enum_short("origin", message.origin),
            status=_enum_short("status", message.status),
            error=message.error,
            before=struct_to_dict(message.before) if message.HasField("before") else None,
            after=struct_to_dict(message.after) if message.HasField("after") else None,
            context=dict(message.context),
            recorded_by=message.recorded_by,
            diff_available=message.diff_available,
        )

    def to_dict(self, tz: tzinfo | None = UTC) -> JSONObject:
        """A JSON-ready dict with the protobuf field names; times as RFC 3339 in ``tz``
        (``None``: the local timezone). Snapshots only when the event carries them."""
        data: JSONObject = {
            "id": self.id,
            "occurred_at": None if self.occurred_at is None else format_time(self.occurred_at, tz),
            "recorded_at": None if self.recorded_at is None else format_time(self.recorded_at, tz),
            "resource": self.resource,
            "identifier": self.identifier,
            "blueprint": self.blueprint,
            "integration": self.integration,
            "run_id": self.run_id,
            "operation": self.operation,
            "source": {"kind": self.source.kind, "id": self.source.id, "name": self.source.name},
            "origin": self.origin,
            "status": self.status,
            "error": self.error,
            "context": dict(self.context),
            "recorded_by": self.recorded_by,
            "idempotency_key": self.idempotency_key,
            "diff_available": self.diff_available,
        }
        if self.before is not None:
            data["before"] = self.before
        if self.after is not None:
            data["after"] = self.after
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """An event from a dict shaped like ``to_dict``'s (as JSON gives it): times as RFC 3339
        text, ``source`` as a dict. Output-only keys are accepted and ignored when recording.

        :raises InvalidEvent: an unknown key, a wrong type, a missing required field.
        """
        if not isinstance(data, Mapping):
            raise invalid_event("event", f"an event is a JSON object, not {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                valid = ", ".join(cls.__dataclass_fields__)
                raise invalid_event(f"event.{key}", f"unknown field; valid fields: {valid}")
            if value is None:
                continue
            values[key] = value
        for key in ("resource", "identifier", "operation", "origin"):
            if key not in values:
                raise invalid_event(f"event.{key}", "required")
        source = values.get("source", {})
        if isinstance(source, Mapping):
            unknown = set(source) - {"kind", "id", "name"}
            if unknown:
                raise invalid_event(
                    f"event.source.{sorted(unknown)[0]}", "unknown field; use kind, id, name"
                )
            values["source"] = Source(**{k: str(v) for k, v in source.items() if v is not None})
        elif not isinstance(source, Source):
            raise invalid_event("event.source", "an object with kind, id and name")
        for key in ("occurred_at", "recorded_at"):
            if key in values:
                values[key] = parse_time(values[key], f"event.{key}")
        context = values.get("context", {})
        if not isinstance(context, Mapping):
            raise invalid_event("event.context", "an object of string values")
        values["context"] = {str(k): str(v) for k, v in context.items()}
        for key in ("before", "after"):
            if key in values and not isinstance(values[key], Mapping):
                raise invalid_event(f"event.{key}", "a snapshot is a JSON object")
        try:
            return cls(**values)
        except TypeError as exc:
            raise invalid_event("event", str(exc)) from None


EventLike = Event | pb.AuditEvent | Mapping[str, Any]


def event_to_pb(event: EventLike) -> pb.AuditEvent:
    "Any of the accepted event forms as a protobuf message."
    if isinstance(event, pb.AuditEvent):
        return event
    if isinstance(event, Event):
        return event.to_pb()
    return Event.from_dict(event).to_pb()


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What the service did with one event: its ``id`` (the first one's, for a duplicate),
    or the ``error`` that kept it out."""

    id: str = ""
    duplicate: bool = False
    recorded_at: datetime | None = None
    error: AuditClientError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a List: its ``events`` and the ``next_page_token`` that fetches the next
    one (empty on the last page). Pass the token back with the same filters and order_by."""

    events: list[Event]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Diff:
    """An event's change: ``before``/``after`` snapshots (``{}`` when absent) and the RFC 6902
    ``patch`` from one to the other; ``available`` False with a ``reason`` when there is none."""

    id: str
    available: bool
    reason: str
    before: JSONObject
    after: JSONObject
    patch: list[JSONObject]

    @classmethod
    def from_pb(cls, message: pb.GetDiffResponse) -> Diff:
        patch: list[JSONObject] = []
        for op in message.patch:
            item: JSONObject = {"op": op.op, "path": op.path}
            if op.op in ("move", "copy"):
                item["from"] = getattr(op, "from")
            if op.HasField("value"):
                item["value"] = value_to_python(op.value)
            patch.append(item)
        return cls(
            id=message.id,
            available=message.available,
            reason=message.reason,
            before=struct_to_dict(message.before),
            after=struct_to_dict(message.after),
            patch=patch,
        )

    def to_dict(self) -> JSONObject:
        return {
            "id": self.id,
            "available": self.available,
            "reason": self.reason,
            "before": self.before,
            "after": self.after,
            "patch": self.patch,
        }


@dataclass(frozen=True, slots=True)
class Filter:
    """One List rule: ``field`` (see ``FILTER_FIELDS``, or ``context.<key>``), ``op`` (a
    ``FilterOp`` short name such as ``EQUALS``) and the values, any of which may match."""

    field: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def of(cls, field: str, op: str, value: Any) -> Filter:
        """A rule from friendlier parts: ``op`` as a symbol (``= != ~ ^ > >= < <=``), a word
        (``eq``, ``contains``, ``starts_with``) or the enum name; ``value`` a string, a
        datetime, or an iterable of them.

        :raises InvalidArgument: an unknown operator, a datetime without a timezone.
        """
        if isinstance(value, str | datetime) or not isinstance(value, Iterable):
            value = [value]
        values = tuple(_filter_value(v, field) for v in value)
        return cls(field, filter_op(op), values)

    def to_pb(self) -> pb.Filter:
        return pb.Filter(
            field=self.field,
            op=pb.FilterOp.Value("FILTER_OP_" + filter_op(self.op)),
            values=list(self.values),
        )


def filter_op(op: str) -> str:
    "The FilterOp short name for a symbol, word or name (``'~'`` -> ``'CONTAINS'``)."
    if op in FILTER_OPS:
        return FILTER_OPS[op]
    name = op.strip().upper().replace("-", "_").removeprefix("FILTER_OP_")
    name = _OP_WORDS.get(name, name)
    if name in FILTER_OPS.values():
        return name
    symbols = " ".join(FILTER_OPS)
    raise invalid_argument("op", f"unknown operator {op!r}; use one of {symbols}")


def _filter_value(value: Any, field: str) -> str:
    if isinstance(value, datetime):
        return format_time(parse_time(value, field))
    return str(value)


FilterLike = Filter | tuple[str, str, Any]


def to_filter(rule: FilterLike) -> Filter:
    if isinstance(rule, Filter):
        return rule
    return Filter.of(*rule)

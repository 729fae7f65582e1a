"""Protobuf <-> model conversion for the servicer. The only module (with the servicer) that
knows both the wire types and the models."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from audit_service import models
from audit_service.errors import InvalidArgument
from audit_service.models import JSONObject, NewEvent, StoredEvent
from audit_service.query import MAX_TIME_NS, MIN_TIME_NS, TIME_RANGE
from audit_service.validation import MAX_SNAPSHOT_DEPTH
from audit_service.wire import struct_bytes
from clients import pb

_MAX_SAFE_INT = 2**53


def _numbers(model: Any, wire: Any, prefix: str) -> dict[Any, Any]:
    "Model enum member -> wire enum number (``ENTITY`` -> ``RESOURCE_TYPE_ENTITY``'s)."
    return {member: wire.Value(prefix + member.value) for member in model}


_RESOURCE_NUMBERS = _numbers(models.ResourceType, pb.ResourceType, "RESOURCE_TYPE_")
_OPERATION_NUMBERS = _numbers(models.Operation, pb.Operation, "OPERATION_")
_SOURCE_KIND_NUMBERS = _numbers(models.SourceKind, pb.SourceKind, "SOURCE_KIND_")
_ORIGIN_NUMBERS = _numbers(models.Origin, pb.Origin, "ORIGIN_")
_STATUS_NUMBERS = _numbers(models.Status, pb.Status, "STATUS_")


def _enum_name(enum_type: Any, prefix: str, number: int, where: str, *, required: bool) -> str:
    try:
        full: str = enum_type.Name(number)
    except ValueError:
        raise InvalidArgument(where, f"unknown value {number}") from None
    if number == 0 and required:
        raise InvalidArgument(where, f"required ({full} is not a value)")
    return full[len(prefix) :]


def timestamp_to_ns(ts: timestamp_pb2.Timestamp, where: str) -> int:
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(where, f"nanos {ts.nanos} out of range")
    ns = ts.seconds * 1_000_000_000 + ts.nanos
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise InvalidArgument(where, f"outside the range of stored times ({TIME_RANGE})")
    return ns


def ns_to_timestamp(ns: int, out: timestamp_pb2.Timestamp) -> None:
    seconds, nanos = divmod(ns, 1_000_000_000)
    out.seconds = seconds
    out.nanos = nanos


def struct_to_dict(struct: struct_pb2.Struct, where: str) -> JSONObject:
    """``struct`` as a JSON object (whole numbers as ints, as they read back from JSON).

    :raises InvalidArgument: a number is not finite (JSON has no NaN or Infinity; the message
        names where, e.g. ``event.after.spec.replicas``), or the object nests deeper than
        ``MAX_SNAPSHOT_DEPTH`` levels (the top-level object is level 1).
    """
    try:
        return _struct(struct, 1)
    except _NotFinite:
        raise InvalidArgument(*_non_finite(struct, where)) from None
    except _TooDeep:
        raise InvalidArgument(where, f"nests deeper than {MAX_SNAPSHOT_DEPTH} levels") from None


class _NotFinite(Exception):
    "A NaN or infinite number_value (found fast; ``_non_finite`` then says where)."


class _TooDeep(Exception):
    "An object or array past MAX_SNAPSHOT_DEPTH."


# The hot path: one WhichOneof per value, no path strings (they are built only for errors),
# the nesting depth checked on the way (validation need not walk the snapshot again).
_STRUCT, _LIST, _NUMBER, _STRING, _BOOL = (
    "struct_value", "list_value", "number_value", "string_value", "bool_value",
)  # fmt: skip


def _struct(struct: struct_pb2.Struct, level: int) -> JSONObject:
    if level > MAX_SNAPSHOT_DEPTH:
        raise _TooDeep
    out: JSONObject = {}
    fields = struct.fields
    for key in fields:  # (not .items(): its iterator is Python code, a lookup per item)
        value = fields[key]
        kind = value.WhichOneof("kind")
        if kind == _STRING:
            out[key] = value.string_value
        elif kind == _NUMBER:
            out[key] = _number(value.number_value)
        elif kind == _BOOL:
            out[key] = value.bool_value
        elif kind == _STRUCT:
            out[key] = _struct(value.struct_value, level + 1)
        elif kind == _LIST:
            out[key] = _list(value.list_value, level + 1)
        else:
            out[key] = None  # null_value, or a Value with no kind set
    return out


def _list(values: struct_pb2.ListValue, level: int) -> list[Any]:
    if level > MAX_SNAPSHOT_DEPTH:
        raise _TooDeep
    out: list[Any] = []
    for value in values.values:
        kind = value.WhichOneof("kind")
        if kind == _STRING:
            out.append(value.string_value)
        elif kind == _NUMBER:
            out.append(_number(value.number_value))
        elif kind == _BOOL:
            out.append(value.bool_value)
        elif kind == _STRUCT:
            out.append(_struct(value.struct_value, level + 1))
        elif kind == _LIST:
            out.append(_list(value.list_value, level + 1))
        else:
            out.append(None)
    return out


def _number(number: float) -> int | float:
    # Struct numbers are doubles; whole ones read back as integers (1, not 1.0).
    if number.is_integer():
        return int(number) if -_MAX_SAFE_INT <= number <= _MAX_SAFE_INT else number
    if number - number != 0:  # NaN or an infinity
        raise _NotFinite
    return number


def _non_finite(struct: struct_pb2.Struct, where: str) -> tuple[str, str]:
    "The first non-finite number in ``struct``: (its path, the problem)."
    pending: list[tuple[str, struct_pb2.Value]] = [
        (f"{where}.{k}", v) for k, v in struct.fields.items()
    ]
    while pending:
        path, value = pending.pop(0)
        kind = value.WhichOneof("kind")
        if kind == _NUMBER and not math.isfinite(value.number_value):
            return path, f"{value.number_value} is not a JSON number"
        if kind == _STRUCT:
            pending.extend((f"{path}.{k}", v) for k, v in value.struct_value.fields.items())
        elif kind == _LIST:
            pending.extend((f"{path}[{i}]", v) for i, v in enumerate(value.list_value.values))
    return where, "holds a number that is not a JSON number"


def dict_to_struct(data: JSONObject, out: struct_pb2.Struct) -> None:
    out.MergeFromString(struct_bytes(data))


def _members(model: Any, wire: Any, prefix: str) -> dict[int, Any]:
    "Wire enum number -> model enum member (``RESOURCE_TYPE_ENTITY``'s -> ``ENTITY``)."
    return {wire.Value(prefix + member.value): member for member in model}


_RESOURCES = _members(models.ResourceType, pb.ResourceType, "RESOURCE_TYPE_")
_OPERATIONS = _members(models.Operation, pb.Operation, "OPERATION_")
_ORIGINS = _members(models.Origin, pb.Origin, "ORIGIN_")
_SOURCE_KINDS = _members(models.SourceKind, pb.SourceKind, "SOURCE_KIND_")
_STATUSES = {0: models.Status.SUCCESS, **_members(models.Status, pb.Status, "STATUS_")}


def _enum(table: dict[int, Any], number: int, enum_type: Any, prefix: str, where: str) -> Any:
    "The model member for a wire number; :raises InvalidArgument: 0 (unset) or unknown."
    member = table.get(number)
    if member is not None:
        return member
    _enum_name(enum_type, prefix, number, where, required=True)  # raises, naming the problem
    raise InvalidArgument(where, f"unknown value {number}")  # (not reached)


def event_from_pb(event: pb.AuditEvent, now_ns: int, recorded_by: str = "") -> NewEvent:
    """A NewEvent from the wire, not yet validated (``AuditLog`` checks it and makes sure of
    ``recorded_by``).

    :raises InvalidArgument: an enum is unspecified or unknown, a time or snapshot is malformed.
    """
    resource = _RESOURCES.get(event.resource) or _enum(
        _RESOURCES, event.resource, pb.ResourceType, "RESOURCE_TYPE_", "event.resource"
    )
    operation = _OPERATIONS.get(event.operation) or _enum(
        _OPERATIONS, event.operation, pb.Operation, "OPERATION_", "event.operation"
    )
    origin = _ORIGINS.get(event.origin) or _enum(
        _ORIGINS, event.origin, pb.Origin, "ORIGIN_", "event.origin"
    )
    status = _STATUSES.get(event.status)
    if status is None:
        raise InvalidArgument("event.status", f"unknown value {event.status}")
    source = event.source
    kind = _SOURCE_KINDS.get(source.kind)
    if kind is None:
        raise InvalidArgument("event.source.kind", f"unknown value {source.kind}")
    occurred_at = (
        timestamp_to_ns(event.occurred_at, "event.occurred_at")
        if event.HasField("occurred_at")
        else now_ns
    )
    converted = NewEvent(
        resource=resource,
        identifier=event.identifier,
        operation=operation,
        origin=origin,
        occurred_at=occurred_at,
        recorded_by=recorded_by,
        source=models.Source(kind, source.id, source.name),
        status=status,
        error=event.error,
        blueprint=event.blueprint,
        integration=event.integration,
        run_id=event.run_id,
        idempotency_key=event.idempotency_key,
        before=struct_to_dict(event.before, "event.before") if event.HasField("before") else None,
        after=struct_to_dict(event.after, "event.after") if event.HasField("after") else None,
        context=dict(event.context),
    )
    # Encoded here, on the RPC thread, so the writer thread has less to do per event.
    converted.json_text = models.encode_json(converted)
    return converted


def event_to_pb(event: StoredEvent, out: pb.AuditEvent) -> None:
    out.id = event.id
    out.idempotency_key = event.idempotency_key
    ns_to_timestamp(event.occurred_at, out.occurred_at)
    ns_to_timestamp(event.recorded_at, out.recorded_at)
    out.resource = _RESOURCE_NUMBERS[event.resource]
    out.identifier = event.identifier
    out.blueprint = event.blueprint
    out.integration = event.integration
    out.run_id = event.run_id
    out.operation = _OPERATION_NUMBERS[event.operation]
    out.source.kind = _SOURCE_KIND_NUMBERS[event.source.kind]
    out.source.id = event.source.id
    out.source.name = event.source.name
    out.origin = _ORIGIN_NUMBERS[event.origin]
    out.status = _STATUS_NUMBERS[event.status]
    out.error = event.error
    if event.before is not None:
        dict_to_struct(event.before, out.before)
    if event.after is not None:
        dict_to_struct(event.after, out.after)
    out.context.update(event.context)
    out.recorded_by = event.recorded_by
    out.diff_available = event.diff_available

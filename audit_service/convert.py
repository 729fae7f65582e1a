"""Protobuf <-> model conversion for the servicer. The only module (with the servicer) that
knows both the wire types and the models."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from audit_service import models
from audit_service.errors import InvalidArgument
from audit_service.models import Diff, JSONObject, NewEvent, StoredEvent
from audit_service.query import MAX_TIME_NS, MIN_TIME_NS, TIME_RANGE
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
    return {key: _value_to_python(value, f"{where}.{key}") for key, value in struct.fields.items()}


def _value_to_python(value: struct_pb2.Value, where: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, where)
    if kind == "list_value":
        return [_value_to_python(v, f"{where}[{i}]") for i, v in enumerate(value.list_value.values)]
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(where, f"{number} is not a JSON number")
        # Struct numbers are doubles; whole ones read back as integers (1, not 1.0).
        if number.is_integer() and abs(number) <= _MAX_SAFE_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or a Value with no kind set


def dict_to_struct(data: JSONObject, out: struct_pb2.Struct) -> None:
    out.update(data)


def python_to_value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def event_from_pb(event: pb.AuditEvent, now_ns: int) -> NewEvent:
    """A NewEvent from the wire (not yet validated; recorded_by is set by the caller).

    :raises InvalidArgument: an enum is unspecified or unknown, a time or snapshot is malformed.
    """
    resource = _enum_name(pb.ResourceType, "RESOURCE_TYPE_", event.resource,
                          "event.resource", required=True)  # fmt: skip
    operation = _enum_name(pb.Operation, "OPERATION_", event.operation,
                           "event.operation", required=True)  # fmt: skip
    origin = _enum_name(pb.Origin, "ORIGIN_", event.origin, "event.origin", required=True)
    status = _enum_name(pb.Status, "STATUS_", event.status, "event.status", required=False)
    kind = _enum_name(pb.SourceKind, "SOURCE_KIND_", event.source.kind,
                      "event.source.kind", required=False)  # fmt: skip
    occurred_at = (
        timestamp_to_ns(event.occurred_at, "event.occurred_at")
        if event.HasField("occurred_at")
        else now_ns
    )
    return NewEvent(
        resource=models.ResourceType(resource),
        identifier=event.identifier,
        operation=models.Operation(operation),
        origin=models.Origin(origin),
        occurred_at=occurred_at,
        recorded_by="",
        source=models.Source(models.SourceKind(kind), event.source.id, event.source.name),
        status=models.Status.SUCCESS if status == "UNSPECIFIED" else models.Status(status),
        error=event.error,
        blueprint=event.blueprint,
        integration=event.integration,
        run_id=event.run_id,
        idempotency_key=event.idempotency_key,
        before=struct_to_dict(event.before, "event.before") if event.HasField("before") else None,
        after=struct_to_dict(event.after, "event.after") if event.HasField("after") else None,
        context=dict(event.context),
    )


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


def diff_to_pb(diff: Diff) -> pb.GetDiffResponse:
    response = pb.GetDiffResponse(id=diff.id, available=diff.available, reason=diff.reason)
    dict_to_struct(diff.before, response.before)
    dict_to_struct(diff.after, response.after)
    for op in diff.patch:
        item = response.patch.add(op=op["op"], path=op["path"], **{"from": op.get("from", "")})
        if "value" in op:
            item.value.CopyFrom(python_to_value(op["value"]))
    return response

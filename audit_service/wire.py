"""Decoding requests ourselves, so malformed protobuf is INVALID_ARGUMENT (grpc's default
decoder would fail the call with INTERNAL).

RecordStream requests are decoded in two steps: the batch with each event left as raw bytes
(a private message type, wire-compatible with RecordStreamRequest), then each event on its own,
so one undecodable or oversized event fails alone.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from audit_service.errors import InvalidArgument

M = TypeVar("M", bound=message.Message)


def decode(cls: type[M], data: bytes) -> M:
    "Parse ``data`` as ``cls``; :raises InvalidArgument: naming the message type."
    try:
        return cls.FromString(data)
    except message.DecodeError as exc:
        raise InvalidArgument("", f"malformed {cls.DESCRIPTOR.full_name} ({_short(exc)})") from None
    except RecursionError:
        raise InvalidArgument(
            "", f"malformed {cls.DESCRIPTOR.full_name} (nested too deep)"
        ) from None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if ": " in text else text or type(exc).__name__


class LazyBatch(Protocol):
    batch: int
    events: list[bytes]


def _lazy_batch_class() -> type[message.Message]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="audit_service/lazy_batch.proto", package="audit_service.internal", syntax="proto3"
    )
    msg = proto.message_type.add(name="LazyRecordStreamRequest")
    label = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="batch", number=1, type=label.TYPE_UINT64, label=label.LABEL_OPTIONAL)
    msg.field.add(name="events", number=2, type=label.TYPE_BYTES, label=label.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    cls: type[message.Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("audit_service.internal.LazyRecordStreamRequest")
    )
    return cls


LazyRecordStreamRequest: Any = _lazy_batch_class()

"""Decoding requests ourselves, so malformed protobuf is INVALID_ARGUMENT (grpc's default
decoder would fail the call with INTERNAL).

RecordStream requests are decoded in two steps: the batch with each event left as raw bytes
(a private message type, wire-compatible with RecordStreamRequest), then each event on its own,
so one undecodable or oversized event fails alone.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
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


# -- JSON objects as google.protobuf.Struct bytes ------------------------------------------
# Struct.update builds a message value by value in Python; writing the wire format directly
# and parsing it in C (MergeFromString) is several times faster for big snapshots (GetDiff,
# List with snapshots). Values map as Struct.update maps them.

_pack_double = struct.Struct("<d").pack


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint(n) for n in range(16384)]


def _length(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint(n)


def struct_bytes(obj: Mapping[str, Any]) -> bytes:
    "``obj`` (a JSON object) serialized as a ``google.protobuf.Struct``."
    length, value_bytes, keys = _length, _value_bytes, _KEYS
    parts = []
    for key, value in obj.items():
        head = keys.get(key)
        if head is None:
            head = _key(key)
        encoded = value_bytes(value)
        entry_length = len(head) + 1 + len(encoded)
        encoded_length = length(len(encoded))
        entry_length += len(encoded_length)
        parts.append(b"\x0a" + length(entry_length) + head + b"\x12" + encoded_length + encoded)
    return b"".join(parts)


_KEYS: dict[str, bytes] = {}  # key -> its map entry's key field (keys repeat)
_KEYS_LIMIT = 16_384


def _key(key: str) -> bytes:
    data = key.encode()
    head = b"\x0a" + _length(len(data)) + data
    if len(_KEYS) >= _KEYS_LIMIT:
        _KEYS.clear()
    _KEYS[key] = head
    return head


_STRINGS: dict[str, bytes] = {}  # short string -> its whole Value (values repeat too)
_CACHED_STRING_CHARS = 64


def _string(value: str) -> bytes:
    data = value.encode()
    encoded = b"\x1a" + _length(len(data)) + data
    if len(value) <= _CACHED_STRING_CHARS:
        if len(_STRINGS) >= _KEYS_LIMIT:
            _STRINGS.clear()
        _STRINGS[value] = encoded
    return encoded


def value_bytes(value: Any) -> bytes:
    "``value`` (any JSON value) serialized as a ``google.protobuf.Value``."
    return _value_bytes(value)


def _value_bytes(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        cached = _STRINGS.get(value)
        return cached if cached is not None else _string(value)
    if kind is int or kind is float:
        packed: bytes = _pack_double(value)
        return b"\x11" + packed
    if kind is bool:
        return b"\x20\x01" if value else b"\x20\x00"
    if kind is dict:
        body = struct_bytes(value)
        return b"\x2a" + _length(len(body)) + body
    if kind is list:
        length = _length
        body = b"".join([b"\x0a" + length(len(item)) + item for item in map(_value_bytes, value)])
        return b"\x32" + _length(len(body)) + body
    if value is None:
        return b"\x08\x00"
    raise TypeError(f"a {kind.__name__} is not a JSON value")

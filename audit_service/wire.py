"""Decoding requests ourselves, so malformed protobuf is INVALID_ARGUMENT (grpc's default
decoder would fail the call with INTERNAL).

RecordStream requests are decoded in two steps: the batch with each event left as raw bytes
(a private message type, wire-compatible with RecordStreamRequest), then each event on its own,
so one undecodable or oversized event fails alone.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from audit_service.errors import InvalidArgument
from audit_service.models import Diff

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
#
# One pass per object: every piece of the output is appended to one list, joined once at the
# end. A nested object or array leaves a slot for its length prefix, filled once its body is
# written, so no body is copied into its parent. A key's map-entry pieces and a short
# string's Value are cached: snapshots repeat both.
#
# Struct: field 1, map<string, Value> entries {1: key, 2: value}. Value: null 1 (varint),
# number 2 (double), string 3, bool 4 (varint), struct 5, list 6. ListValue: field 1, Values.

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


_CACHE_LIMIT = 16_384

# key -> (its entry's key field, an entry's bytes before a number's 8 bytes, and the whole
# entries for true, false and null)
_KEYS: dict[str, tuple[bytes, bytes, bytes, bytes, bytes]] = {}


def _key(key: str) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    data = key.encode()
    head = b"\x0a" + _length(len(data)) + data
    n = len(head)
    cached = (
        head,
        b"\x0a" + _length(n + 11) + head + b"\x12\x09\x11",
        b"\x0a" + _length(n + 4) + head + b"\x12\x02\x20\x01",
        b"\x0a" + _length(n + 4) + head + b"\x12\x02\x20\x00",
        b"\x0a" + _length(n + 4) + head + b"\x12\x02\x08\x00",
    )
    if len(_KEYS) >= _CACHE_LIMIT:
        _KEYS.clear()
    _KEYS[key] = cached
    return cached


# short string -> its Value, framed as a map entry's value field and as a ListValue item
_STRINGS: dict[str, tuple[bytes, bytes]] = {}
_CACHED_STRING_CHARS = 64


def _string(value: str) -> tuple[bytes, bytes]:
    data = value.encode()
    encoded = b"\x1a" + _length(len(data)) + data
    framed = _length(len(encoded)) + encoded
    both = (b"\x12" + framed, b"\x0a" + framed)
    if len(value) <= _CACHED_STRING_CHARS:
        if len(_STRINGS) >= _CACHE_LIMIT:
            _STRINGS.clear()
        _STRINGS[value] = both
    return both


_HERE = "/"  # a path tree's mark for "an operation names this very place" (no token has "/")

# A path tree: token -> subtree, ``_HERE`` -> {} where an operation names the place itself.
_PathTree = dict[str, Any]
# An object's entries as written: key -> (first part, end part, bytes, its entries when the
# value is an object written entry by entry as well, else None).
_Spans = dict[str, tuple[int, int, int, Any]]


_ITEM_NUMBER = b"\x0a\x09\x11"
_ITEM_TRUE, _ITEM_FALSE, _ITEM_NULL = b"\x0a\x02\x20\x01", b"\x0a\x02\x20\x00", b"\x0a\x02\x08\x00"


def _struct_into(
    obj: Mapping[str, Any],
    parts: list[bytes],
    tree: _PathTree | None = None,
    spans: _Spans | None = None,
) -> int:
    """Append ``obj``'s Struct body to ``parts``; return its length in bytes. With ``spans``,
    also note there where each entry's parts are, and likewise inside the objects that
    ``tree`` leads to."""
    size = 0
    append, keys, strings, pack, length = parts.append, _KEYS, _STRINGS, _pack_double, _length
    for key, value in obj.items():
        start = len(parts)
        inner: _Spans | None = None
        k = keys.get(key)
        if k is None:
            k = _key(key)
        kind = type(value)
        if kind is str:
            cached = strings.get(value)
            framed = (cached if cached is not None else _string(value))[0]
            head = k[0]
            n = len(head) + len(framed)
            prefix = b"\x0a" + length(n)
            append(prefix)
            append(head)
            append(framed)
            entry = len(prefix) + n
        elif kind is int or kind is float:
            prefix = k[1]
            append(prefix)
            append(pack(value))
            entry = len(prefix) + 8
        elif kind is bool:
            whole = k[2] if value else k[3]
            append(whole)
            entry = len(whole)
        elif value is None:
            whole = k[4]
            append(whole)
            entry = len(whole)
        elif kind is dict or kind is list:
            append(b"")
            if kind is list:
                body = _list_into(value, parts)
                tag = b"\x32"
            elif tree is None or (sub := tree.get(key)) is None or _HERE in sub:
                body = _struct_into(value, parts)
                tag = b"\x2a"
            else:
                inner = {}
                body = _struct_into(value, parts, sub, inner)
                tag = b"\x2a"
            parts[start] = prefix = _object_entry_prefix(k[0], tag, body)
            entry = len(prefix) + body
        else:
            raise TypeError(f"a {kind.__name__} is not a JSON value")
        size += entry
        if spans is not None:
            spans[key] = (start, len(parts), entry, inner)
    return size


def _object_entry_prefix(head: bytes, tag: bytes, body: int) -> bytes:
    "A map entry's bytes up to its value's body: an object or array of ``body`` bytes."
    body_length = _length(body)
    value_size = 1 + len(body_length) + body
    value_length = _length(value_size)
    return (
        b"\x0a"
        + _length(len(head) + 1 + len(value_length) + value_size)
        + head
        + b"\x12"
        + value_length
        + tag
        + body_length
    )


def _list_into(items: list[Any], parts: list[bytes]) -> int:
    "Append ``items``' ListValue body to ``parts``; return its length in bytes."
    size = 0
    append, strings, pack, length = parts.append, _STRINGS, _pack_double, _length
    for value in items:
        kind = type(value)
        if kind is str:
            cached = strings.get(value)
            item = (cached if cached is not None else _string(value))[1]
            append(item)
            size += len(item)
        elif kind is int or kind is float:
            append(_ITEM_NUMBER)
            append(pack(value))
            size += 11
        elif kind is bool:
            append(_ITEM_TRUE if value else _ITEM_FALSE)
            size += 4
        elif value is None:
            append(_ITEM_NULL)
            size += 4
        elif kind is dict or kind is list:
            slot = len(parts)
            append(b"")
            if kind is dict:
                body = _struct_into(value, parts)
                tag = b"\x2a"
            else:
                body = _list_into(value, parts)
                tag = b"\x32"
            body_length = length(body)
            value_size = 1 + len(body_length) + body
            prefix = b"\x0a" + length(value_size) + tag + body_length
            parts[slot] = prefix
            size += len(prefix) + body
        else:
            raise TypeError(f"a {kind.__name__} is not a JSON value")
    return size


def struct_bytes(obj: Mapping[str, Any]) -> bytes:
    "``obj`` (a JSON object) serialized as a ``google.protobuf.Struct``."
    parts: list[bytes] = []
    _struct_into(obj, parts)
    return b"".join(parts)


def value_bytes(value: Any) -> bytes:
    "``value`` (any JSON value) serialized as a ``google.protobuf.Value``."
    parts: list[bytes] = []
    _list_into([value], parts)
    item = b"".join(parts)  # the value as a ListValue's one item: tag, length, Value
    start = 2
    while item[start - 1] & 0x80:
        start += 1
    return item[start:]


# -- GetDiffResponse -------------------------------------------------------------------------
# ``after`` is mostly ``before``: the patch names every place where they differ, so each
# object entry that no operation's path (or ``from``) runs through is the same on both sides,
# and its bytes, written once for ``before``, serve ``after`` as they are.


def _path_tree(patch: Sequence[Mapping[str, Any]]) -> _PathTree:
    tree: _PathTree = {}
    for op in patch:
        for pointer in (op.get("path"), op.get("from")):
            if pointer is None:
                continue
            node = tree
            for token in pointer.split("/")[1:]:
                node = node.setdefault(token.replace("~1", "/").replace("~0", "~"), {})
            node[_HERE] = {}
    return tree


def _reusing_struct_into(
    obj: Mapping[str, Any],
    tree: _PathTree,
    parts: list[bytes],
    before_parts: list[bytes],
    before_spans: _Spans,
) -> int:
    """``_struct_into`` for ``after``: each entry that no path of ``tree`` runs through is
    taken as it is from before's parts, runs of neighbours in one slice."""
    size = 0
    run_start = run_end = 0  # before's parts still to take
    for key, value in obj.items():
        sub = tree.get(key)
        span = before_spans.get(key)
        if span is not None and sub is None:
            start, end, entry, _ = span
            if start != run_end:
                parts += before_parts[run_start:run_end]
                run_start = start
            run_end = end
            size += entry
            continue
        parts += before_parts[run_start:run_end]
        run_start = run_end = 0
        if (
            sub is not None and span is not None and span[3] is not None and type(value) is dict
        ) and _HERE not in sub:
            slot = len(parts)
            parts.append(b"")
            body = _reusing_struct_into(value, sub, parts, before_parts, span[3])
            head = (_KEYS.get(key) or _key(key))[0]
            parts[slot] = prefix = _object_entry_prefix(head, b"\x2a", body)
            size += len(prefix) + body
        else:
            size += _struct_into({key: value}, parts)
    parts += before_parts[run_start:run_end]
    return size


def _snapshots_into(
    before: Mapping[str, Any], after: Mapping[str, Any], patch: Sequence[Mapping[str, Any]]
) -> tuple[list[bytes], int, list[bytes], int]:
    "``before`` and ``after`` as Struct bodies (parts and length), after's mostly before's."
    tree = _path_tree(patch)
    before_parts: list[bytes] = []
    after_parts: list[bytes] = []
    if _HERE in tree:  # an operation on the whole document: nothing to share
        return (
            before_parts,
            _struct_into(before, before_parts),
            after_parts,
            _struct_into(after, after_parts),
        )
    spans: _Spans = {}
    before_size = _struct_into(before, before_parts, tree, spans)
    after_size = _reusing_struct_into(after, tree, after_parts, before_parts, spans)
    return before_parts, before_size, after_parts, after_size


def _string_field(tag: bytes, text: str) -> bytes:
    if not text:
        return b""
    data = text.encode()
    return tag + _length(len(data)) + data


class Serialized(Generic[M]):
    """A response message as its wire bytes, ready to send: the server's serializer calls
    ``SerializeToString`` and gets them as they are. Anything else (an in-process caller
    reading a field) is answered by the message they parse to, parsed on first use."""

    __slots__ = ("_data", "_message", "_type")

    def __init__(self, message_type: type[M], data: bytes) -> None:
        self._type = message_type
        self._data = data
        self._message: M | None = None

    def SerializeToString(self) -> bytes:
        return self._data

    def ByteSize(self) -> int:
        return len(self._data)

    def message(self) -> M:
        if self._message is None:
            self._message = self._type.FromString(self._data)
        return self._message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message(), name)

    def __eq__(self, other: object) -> bool:
        return self.message() == (other.message() if isinstance(other, Serialized) else other)

    __hash__ = None  # type: ignore[assignment]  # unhashable, as messages are

    def __repr__(self) -> str:
        return repr(self.message())


def diff_response_bytes(diff: Diff) -> bytes:
    "``diff`` serialized as an ``auditlog.v1.GetDiffResponse``."
    before_parts, before_size, after_parts, after_size = _snapshots_into(
        diff.before, diff.after, diff.patch
    )
    parts = [
        _string_field(b"\x0a", diff.id),
        b"\x10\x01" if diff.available else b"",
        _string_field(b"\x1a", diff.reason),
        b"\x22" + _length(before_size),
    ]
    parts += before_parts
    parts.append(b"\x2a" + _length(after_size))
    parts += after_parts
    for op in diff.patch:
        body = _string_field(b"\x0a", op["op"]) + _string_field(b"\x12", op["path"])
        if "value" in op:
            value = value_bytes(op["value"])
            body += b"\x1a" + _length(len(value)) + value
        body += _string_field(b"\x22", op.get("from", ""))
        parts.append(b"\x32" + _length(len(body)) + body)
    return b"".join(parts)

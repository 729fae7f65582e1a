"""JSON objects -> ``google.protobuf.Struct`` bytes, fast.

``Struct.update`` builds the message field by field in Python, which was most of what a
collector spent per event. ``encode_struct`` writes the wire format directly, in one pass that
also enforces the service's nesting limit, and the result goes into a message with
``MergeFromString`` (parsed in C)::

    event.after.MergeFromString(encode_struct(obj))

Values map as ``Struct.update`` maps them: dict -> struct, list/tuple -> list, str -> string,
bool -> bool, int/float -> number (a double), None -> null. Object keys and short strings
repeat from one object to the next, so their encodings are cached (bounded; the cache is
emptied when it fills).
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Mapping, Sequence
from typing import Any

from collectors.runtime.limits import MAX_SNAPSHOT_DEPTH
from collectors.runtime.wire import SMALL_VARINTS, varint

_pack_double = _struct.Struct("<d").pack
_CACHE_LIMIT = 16_384
_CACHED_STRING_CHARS = 64


class NotASnapshot(ValueError):
    "The value cannot be a snapshot: nests too deep, or holds a type JSON does not have."


_keys: dict[Any, bytes] = {}  # key -> the map entry's key field
_strings: dict[str, bytes] = {}  # short string -> its whole Value
# key -> {short string or int -> the whole map entry}: most of an object's fields are a key
# and a short string or a small number that the previous object had too.
_entries: dict[Any, dict[Any, bytes]] = {}
_entries_held = 0


def _key(key: Any) -> bytes:
    data = str(key).encode("utf-8", "replace")
    encoded = b"\x0a" + varint(len(data)) + data
    if len(_keys) >= _CACHE_LIMIT:
        _keys.clear()
    _keys[key] = encoded
    return encoded


def _string(value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    encoded = b"\x1a" + varint(len(data)) + data
    if len(value) <= _CACHED_STRING_CHARS:
        if len(_strings) >= _CACHE_LIMIT:
            _strings.clear()
        _strings[value] = encoded
    return encoded


def _entry(key: Any, value: Any, depth: int) -> bytes:
    "One map entry (key and ``Value``) of a Struct at ``depth``, with its tag and length."
    encoded_key = _keys.get(key)
    if encoded_key is None:
        encoded_key = _key(key)
    encoded = _value(value, depth)
    entry = encoded_key + b"\x12" + varint(len(encoded)) + encoded
    return b"\x0a" + varint(len(entry)) + entry


def _cached_entry(key: Any, value: Any, depth: int) -> bytes:
    "``_entry`` for a short string or an int, remembered for the next object."
    global _entries_held
    encoded = _entry(key, value, depth)
    if _entries_held >= _CACHE_LIMIT:
        _entries.clear()
        _entries_held = 0
    per_key = _entries.get(key)
    if per_key is None:
        per_key = _entries[key] = {}
    per_key[value] = encoded
    _entries_held += 1
    return encoded


def _value(value: Any, depth: int) -> bytes:
    "One ``google.protobuf.Value``; the object or list holding it is at ``depth``."
    kind = type(value)
    if kind is str:
        cached = _strings.get(value)
        return cached if cached is not None else _string(value)
    if kind is dict:
        body = _struct_body(value, depth + 1)
        return b"\x2a" + varint(len(body)) + body
    if kind is int or kind is float:
        return b"\x11" + _pack_double(value)
    if kind is bool:
        return b"\x20\x01" if value else b"\x20\x00"
    if kind is list:
        body = _list_body(value, depth + 1)
        return b"\x32" + varint(len(body)) + body
    if value is None:
        return b"\x08\x00"
    return _other(value, depth)


def _other(value: Any, depth: int) -> bytes:
    "Subclasses of the JSON types (the fast path compares exact types)."
    if isinstance(value, str):
        return _string(str(value))
    if isinstance(value, bool):
        return b"\x20\x01" if value else b"\x20\x00"
    if isinstance(value, int | float):
        return b"\x11" + _pack_double(float(value))
    if isinstance(value, Mapping):
        body = _struct_body(value, depth + 1)
        return b"\x2a" + varint(len(body)) + body
    if isinstance(value, list | tuple):
        body = _list_body(value, depth + 1)
        return b"\x32" + varint(len(body)) + body
    raise NotASnapshot(f"a {type(value).__name__} is not a JSON value")


def _struct_body(obj: Mapping[str, Any], depth: int) -> bytes:
    if depth > MAX_SNAPSHOT_DEPTH:
        raise NotASnapshot(f"nests deeper than {MAX_SNAPSHOT_DEPTH} levels")
    parts: list[bytes] = []
    append = parts.append
    entries = _entries
    small = SMALL_VARINTS
    for key, value in obj.items():
        kind = type(value)
        # Only exact str and int are looked up: a cache keyed by value must not take True for
        # 1, or 0 for -0.0 (equal as keys, different on the wire).
        if kind is str:
            if len(value) > _CACHED_STRING_CHARS:
                append(_entry(key, value, depth))
                continue
        elif kind is dict or kind is list:
            encoded_key = _keys.get(key)
            if encoded_key is None:
                encoded_key = _key(key)
            if kind is dict:
                body = _struct_body(value, depth + 1)
                tag = b"\x2a"
            else:
                body = _list_body(value, depth + 1)
                tag = b"\x32"
            n = len(body)
            encoded = tag + (small[n] if n < 16384 else varint(n)) + body
            n = len(encoded)
            entry = encoded_key + b"\x12" + (small[n] if n < 16384 else varint(n)) + encoded
            n = len(entry)
            append(b"\x0a" + (small[n] if n < 16384 else varint(n)) + entry)
            continue
        elif kind is not int:
            append(_entry(key, value, depth))
            continue
        per_key = entries.get(key)
        cached = None if per_key is None else per_key.get(value)
        append(cached if cached is not None else _cached_entry(key, value, depth))
    return b"".join(parts)


def _list_body(items: Sequence[Any], depth: int) -> bytes:
    if depth > MAX_SNAPSHOT_DEPTH:
        raise NotASnapshot(f"nests deeper than {MAX_SNAPSHOT_DEPTH} levels")
    parts: list[bytes] = []
    for item in items:
        encoded = _value(item, depth)
        parts.append(b"\x0a" + varint(len(encoded)) + encoded)
    return b"".join(parts)


def encode_struct(obj: Mapping[str, Any]) -> bytes:
    """``obj`` as a serialized ``google.protobuf.Struct`` (the top-level object is level 1).

    :raises NotASnapshot: nested deeper than the service takes, or a value JSON cannot hold.
    """
    if not isinstance(obj, Mapping):
        raise NotASnapshot(f"a snapshot is an object, not {type(obj).__name__}")
    return _struct_body(obj, 1)

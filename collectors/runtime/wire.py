"""Protobuf wire-format pieces the collectors write by hand (see ``snapshots`` and ``limits``)."""

from __future__ import annotations


def _encode(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The varints of 0 to 16383 (lengths below 16 KiB): a table lookup, for hot loops to index.
SMALL_VARINTS = [_encode(n) for n in range(16384)]


def varint(value: int) -> bytes:
    "``value`` (not negative) as a protobuf varint."
    return SMALL_VARINTS[value] if value < 16384 else _encode(value)

"""Struct, Value and GetDiffResponse bytes written by ``audit_service.wire`` parse to exactly
what protobuf's own ``Struct.update`` / ``json_format`` build from the same values."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_service import wire
from audit_service.diffs import make_patch
from audit_service.models import Diff
from clients import pb


def _deep(levels: int) -> dict[str, Any]:
    "An object nesting ``levels`` deep (arrays count), an array at every other level."
    value: Any = {"leaf": None}
    for n in range(levels - 2):
        value = [n, value] if n % 2 == 0 else {f"level{n}": value, "beside": n}
    return value if isinstance(value, dict) else {"top": value}


AWKWARD: list[Any] = [
    {},
    {"": ""},
    {"empty": {}, "none": [], "lists": [[], [[]], [{}]]},
    {"nested": [[1, [2, [3, ["four"]]]], {"a": [{"b": [None, True, False]}]}]},
    {"unicode": "héllo wörld ✓ 日本語 🎉", "ключ": "значение", "\u0000nul": "\x00\x7f"},
    {"escaped/key": 1, "tilde~key": 2, "both~/": {"~1": "~0"}},
    {"big": 2**53, "negative": -(2**53), "huge": 1e300, "tiny": 5e-324, "minus": -1e300},
    {"zero": 0, "negative zero": -0.0, "float": 0.1, "third": 1 / 3, "minus one": -1},
    {"bools": [True, False], "true": True, "false": False, "null": None},
    {"long string": "x" * 20_000, "long key " + "k" * 300: "v", "medium": "m" * 200},
    {"many": {f"key{i}": i for i in range(2_000)}},
    {"long list": list(range(3_000)), "strings": [f"s{i}" for i in range(500)]},
    _deep(30),
]


def _reference_struct(obj: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(obj)
    return struct


def _reference_value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def _same_double(a: float, b: float) -> bool:
    return math.copysign(1.0, a) == math.copysign(1.0, b) and a == b


@pytest.mark.parametrize("obj", AWKWARD)
def test_struct_bytes_parse_to_what_struct_update_builds(obj: dict[str, Any]) -> None:
    for _ in range(2):  # the second time from the key and string caches
        parsed = struct_pb2.Struct.FromString(wire.struct_bytes(obj))
        assert parsed == _reference_struct(obj)
        assert json_format.MessageToDict(parsed) == json_format.MessageToDict(
            _reference_struct(obj)
        )


def test_negative_zero_keeps_its_sign() -> None:
    parsed = struct_pb2.Struct.FromString(wire.struct_bytes({"z": -0.0, "l": [-0.0]}))
    assert _same_double(parsed.fields["z"].number_value, -0.0)
    assert _same_double(parsed.fields["l"].list_value.values[0].number_value, -0.0)


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -0.0, 1e300, -(2**53), 0.5, "", "ü" * 70, [], {}, [[{}]], *AWKWARD],
)
def test_value_bytes_parse_to_what_json_format_builds(value: Any) -> None:
    parsed = struct_pb2.Value.FromString(wire.value_bytes(value))
    assert parsed == _reference_value(value)


def test_lengths_past_one_varint_byte() -> None:
    for size in (127, 128, 16_383, 16_384, 2_097_152):
        obj = {"s": "a" * size, "n": {"s": "b" * size}, "l": ["c" * size]}
        assert struct_pb2.Struct.FromString(wire.struct_bytes(obj)) == _reference_struct(obj)


def test_not_json_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        wire.struct_bytes({"a": object()})


# -- GetDiffResponse ---------------------------------------------------------------------------


def _reference_response(diff: Diff) -> pb.GetDiffResponse:
    response = pb.GetDiffResponse(id=diff.id, available=diff.available, reason=diff.reason)
    response.before.SetInParent()  # present even when empty, as GetDiff has always sent them
    response.before.update(diff.before)
    response.after.SetInParent()
    response.after.update(diff.after)
    for op in diff.patch:
        item = response.patch.add(op=op["op"], path=op["path"], **{"from": op.get("from", "")})
        if "value" in op:
            json_format.ParseDict(op["value"], item.value)
    return response


def _check(before: dict[str, Any], after: dict[str, Any]) -> None:
    diff = Diff(
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", True, "", before, after, make_patch(before, after)
    )
    parsed = pb.GetDiffResponse.FromString(wire.diff_response_bytes(diff))
    expected = _reference_response(diff)
    assert parsed == expected
    assert parsed.HasField("before")
    assert parsed.HasField("after")


PAIRS = [
    ({}, {}),
    ({}, {"a": 1}),
    ({"a": 1}, {}),
    (
        {"a": {"b": {"c": 1, "d": [1, 2]}, "e": "same"}},
        {"a": {"b": {"c": 2, "d": [1, 2]}, "e": "same"}},
    ),
    ({"a": {"b": [1, {"x": 1}, 3]}, "k": "v"}, {"a": {"b": [3, {"x": 2}, 1, 4]}, "k": "v"}),
    ({"a": {"b": 1}}, {"a": [1]}),
    ({"a": [1]}, {"a": {"b": 1}}),
    ({"a": {"b": 1}}, {"a": "text"}),
    ({"x/y": {"m~n": {"p": 1, "q": 2}}}, {"x/y": {"m~n": {"p": 1, "q": 3}}}),
    ({"": {"": 1, "z": 2}}, {"": {"": 2, "z": 2}}),
    ({"o": {"a": 1, "b": 2}, "p": 1}, {"p": 2, "o": {"b": 2, "a": 1}}),
    ({"o": {"a": True}}, {"o": {"a": 1}}),
    ({"o": {"a": 1}}, {"o": {"a": 1.5}}),
    (
        {"o": {"gone": {"deep": 1}, "kept": {"deep": [1]}}},
        {"o": {"kept": {"deep": [1]}, "new": {}}},
    ),
    ({"u": {"ключ": "a", "🎉": {"x": None}}}, {"u": {"ключ": "b", "🎉": {"x": None}}}),
    (AWKWARD[10], {"many": {**AWKWARD[10]["many"], "key7": "changed", "added": [1]}}),
    (_deep(30), {**_deep(30), "leaf": 1}),
]


@pytest.mark.parametrize(("before", "after"), PAIRS)
def test_diff_response_bytes_parse_to_the_response_protobuf_builds(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    _check(before, after)


def test_unavailable_diff_response() -> None:
    diff = Diff("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", False, "no snapshots", {}, {}, [])
    parsed = pb.GetDiffResponse.FromString(wire.diff_response_bytes(diff))
    assert parsed == _reference_response(diff)
    assert parsed.HasField("before")
    assert parsed.HasField("after")
    assert not parsed.available


def test_response_for_whole_document_operations_shares_nothing() -> None:
    # An operation at the root (not one make_patch writes, but a valid patch all the same).
    before, after = {"a": {"b": 1}}, {"c": 2}
    diff = Diff("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", True, "", before, after, [
        {"op": "replace", "path": "", "value": after},
    ])  # fmt: skip
    assert pb.GetDiffResponse.FromString(wire.diff_response_bytes(diff)) == _reference_response(
        diff
    )


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=16,
)
_objects = st.dictionaries(st.text(max_size=4), _json, max_size=6)


@settings(max_examples=200, deadline=None)
@given(obj=_objects)
def test_any_object_encodes_as_struct_update_builds_it(obj: dict[str, Any]) -> None:
    assert struct_pb2.Struct.FromString(wire.struct_bytes(obj)) == _reference_struct(obj)


@settings(max_examples=200, deadline=None)
@given(before=_objects, after=_objects, data=st.data())
def test_any_diff_response_is_what_protobuf_builds(
    before: dict[str, Any], after: dict[str, Any], data: st.DataObject
) -> None:
    _check(before, after)
    # ``after`` as a small edit of ``before`` deep inside: most entries shared.
    keys = st.sampled_from([*before, "new"])
    edited = {**before, **data.draw(st.dictionaries(keys, _json, max_size=2))}
    _check({"wrap": {"in": before}, "same": before}, {"wrap": {"in": edited}, "same": before})


def test_serialized_response_sends_its_bytes_and_reads_as_the_message() -> None:
    diff = Diff("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", True, "", {"a": 1}, {"a": 2}, [
        {"op": "replace", "path": "/a", "value": 2},
    ])  # fmt: skip
    data = wire.diff_response_bytes(diff)
    response = wire.Serialized(pb.GetDiffResponse, data)
    assert response.SerializeToString() is data
    assert response.ByteSize() == len(data)
    assert response.available
    assert [(op.op, op.path, op.value.number_value) for op in response.patch] == [
        ("replace", "/a", 2.0)
    ]
    assert response == _reference_response(diff)
    assert response == wire.Serialized(
        pb.GetDiffResponse, _reference_response(diff).SerializeToString()
    )

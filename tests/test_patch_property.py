"""Property: for any JSON snapshots, GetDiff's patch applied to before gives after exactly."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_service.diffs import make_patch
from clients import pb
from tests.helpers import TestServer, record, start_server

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)
_objects = st.dictionaries(st.text(max_size=4), _json, max_size=5)


def _same(a: Any, b: Any) -> bool:
    "Equality that tells true from 1 and 1 from 1.5 (Python's == does not)."
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b  # Struct numbers are doubles: 2 and 2.0 are the same number
    return type(a) is type(b) and a == b


def _wire(obj: dict[str, Any]) -> dict[str, Any]:
    "``obj`` as it reads back from a protobuf Struct (numbers become floats)."
    struct = struct_pb2.Struct()
    struct.update(obj)
    result: dict[str, Any] = json_format.MessageToDict(struct)
    return result


@pytest.fixture(scope="module")
def shared_server() -> Iterator[TestServer]:
    with tempfile.TemporaryDirectory() as tmp:
        running = start_server(Path(tmp) / "audit.db")
        try:
            yield running
        finally:
            running.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_objects, after=_objects)
def test_library_patch_applied_to_before_gives_after(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert _same(jsonpatch.apply_patch(before, make_patch(before, after)), after)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_objects, after=_objects)
def test_served_patch_applied_to_before_gives_after(
    shared_server: TestServer, before: dict[str, Any], after: dict[str, Any]
) -> None:
    rec = record(shared_server.stub, before=before, after=after)
    diff = shared_server.stub.GetDiff(pb.GetDiffRequest(id=rec.id))
    assert diff.available
    served_before = json_format.MessageToDict(diff.before)
    served_after = json_format.MessageToDict(diff.after)
    assert _same(served_before, _wire(before))
    assert _same(served_after, _wire(after))
    ops = [json_format.MessageToDict(op, preserving_proto_field_name=True) for op in diff.patch]
    for op, message in zip(ops, diff.patch, strict=True):
        if message.HasField("value"):
            op["value"] = json_format.MessageToDict(message.value)
        if not message.HasField("value") and op["op"] in ("add", "replace", "test"):
            op["value"] = None  # a null value: the Value message is set to null_value
    assert _same(jsonpatch.apply_patch(served_before, ops), served_after)

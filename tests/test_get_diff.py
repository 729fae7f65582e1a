"""GetDiff: snapshots and an RFC 6902 patch that turns before into after exactly; events with
nothing to diff; ids; SECRET snapshots reduced to keyed fingerprints."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import grpc
import jsonpatch
import pytest
from google.protobuf import json_format

from clients import pb, pb_grpc
from tests.helpers import record

FINGERPRINT = "hmac-sha256:"


def _json(message: Any) -> Any:
    return json_format.MessageToDict(message)


def _op_dict(op: pb.PatchOperation) -> dict[str, Any]:
    "A PatchOperation as the RFC 6902 JSON object it stands for."
    item: dict[str, Any] = {"op": op.op, "path": op.path}
    if op.op in ("add", "replace", "test"):
        assert op.HasField("value"), op
        item["value"] = _json(op.value)
    if op.op in ("move", "copy"):
        item["from"] = getattr(op, "from")
    return item


def _apply(diff: pb.GetDiffResponse) -> Any:
    ops = [_op_dict(op) for op in diff.patch]
    assert all(op["op"] in ("add", "remove", "replace", "move", "copy", "test") for op in ops)
    return jsonpatch.apply_patch(_json(diff.before), ops)


def _same(a: Any, b: Any) -> bool:
    "Equality that tells true from 1 and null from 0 (``==`` does not); numbers may be doubles."
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        if isinstance(a, bool) or isinstance(b, bool):
            return type(a) is type(b) and a == b
        return a == b
    return type(a) is type(b) and bool(a == b)


PAIRS = [
    pytest.param({"a": 1}, {"a": 2}, id="replace-number"),
    pytest.param({"a": 1}, {"a": 1, "b": "x"}, id="add-key"),
    pytest.param({"a": 1, "b": "x"}, {"a": 1}, id="remove-key"),
    pytest.param(
        {"a": {"b": {"c": [1, 2, 3]}}}, {"a": {"b": {"c": [1, 3, 4, 5]}}}, id="nested-list"
    ),
    pytest.param({"a": 1}, {"a": "1"}, id="number-to-string"),
    pytest.param({"a": 1}, {"a": True}, id="number-to-bool"),
    pytest.param({"a": True}, {"a": 1}, id="bool-to-number"),
    pytest.param({"a": None}, {"a": False}, id="null-to-false"),
    pytest.param({"a": [1, 2]}, {"a": {"0": 1, "1": 2}}, id="list-to-object"),
    pytest.param({"old": {"deep": [1, 2, 3]}}, {"new": {"deep": [1, 2, 3]}}, id="move"),
    pytest.param({"x": "same"}, {"x": "same", "y": "same"}, id="copy"),
    pytest.param({"a/b": 1, "c~d": 2}, {"a/b": 3, "c~d": 2, "e~/": 4}, id="escaped-pointers"),
    pytest.param({"l": [{"id": 1}, {"id": 2}]}, {"l": [{"id": 2}]}, id="list-of-objects"),
    pytest.param({"n": 1.5, "big": 2**53}, {"n": -0.25, "big": 2**52}, id="doubles"),
    pytest.param({"ü": "ö", "😀": ["ä"]}, {"ü": "Ö", "😀": []}, id="unicode"),
    pytest.param({"same": {"x": [1]}}, {"same": {"x": [1]}}, id="unchanged"),
]


@pytest.mark.parametrize(("before", "after"), PAIRS)
def test_patch_applied_to_before_gives_after_exactly(
    stub: pb_grpc.AuditServiceStub, before: dict[str, Any], after: dict[str, Any]
) -> None:
    response = record(stub, before=before, after=after)
    diff = stub.GetDiff(pb.GetDiffRequest(id=response.id))
    assert diff.id == response.id
    assert diff.available
    assert diff.reason == ""
    assert _same(_json(diff.before), before)
    assert _same(_json(diff.after), after)
    patched = _apply(diff)
    assert _same(patched, _json(diff.after))
    if _same(before, after):
        assert list(diff.patch) == []
    else:
        assert diff.patch


def test_create_without_before_patches_from_the_empty_object(
    stub: pb_grpc.AuditServiceStub,
) -> None:
    after = {"name": "checkout", "replicas": 3, "labels": {"team": "pay"}}
    response = record(stub, operation=pb.OPERATION_CREATE, after=after)
    diff = stub.GetDiff(pb.GetDiffRequest(id=response.id))
    assert diff.available
    assert _json(diff.before) == {}
    assert _same(_apply(diff), after)


def test_delete_without_after_patch_empties_the_object(stub: pb_grpc.AuditServiceStub) -> None:
    before = {"name": "checkout", "replicas": 3, "labels": {"team": "pay"}, "list": [1]}
    response = record(stub, operation=pb.OPERATION_DELETE, before=before)
    diff = stub.GetDiff(pb.GetDiffRequest(id=response.id))
    assert diff.available
    assert _same(_json(diff.before), before)
    assert _json(diff.after) == {}
    assert _apply(diff) == {}


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"operation": pb.OPERATION_READ}, id="read"),
        pytest.param(
            {"operation": pb.OPERATION_READ, "before": {"a": 1}, "after": {"a": 2}},
            id="read-with-snapshots",
        ),
        pytest.param(
            {"resource": pb.RESOURCE_TYPE_SIGN_IN, "operation": pb.OPERATION_READ}, id="sign-in"
        ),
        pytest.param({}, id="update-without-snapshots"),
        pytest.param({"operation": pb.OPERATION_DELETE}, id="delete-without-snapshots"),
    ],
)
def test_nothing_to_diff_is_unavailable_with_a_reason(
    stub: pb_grpc.AuditServiceStub, overrides: dict[str, Any]
) -> None:
    response = record(stub, **overrides)
    diff = stub.GetDiff(pb.GetDiffRequest(id=response.id))
    assert diff.id == response.id
    assert not diff.available
    assert diff.reason.strip()
    assert list(diff.patch) == []


def test_read_and_snapshotless_reasons_differ(stub: pb_grpc.AuditServiceStub) -> None:
    read = record(stub, operation=pb.OPERATION_READ, before={"a": 1})
    bare = record(stub)
    reasons = {
        stub.GetDiff(pb.GetDiffRequest(id=read.id)).reason,
        stub.GetDiff(pb.GetDiffRequest(id=bare.id)).reason,
    }
    assert len(reasons) == 2


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "abc",
        "not-a-uuid-at-all-but-36-characters!",
        str(uuid.UUID(int=0)),
        "6f1c1a6e-3c8e-4a43-9f3e-2f9b7c1d0e5a",  # a UUIDv4
        "01890a5d-ac96-774b-bcce-b302099a8057 ",
        "01890a5d-ac96-774b-bcce-b302099a8057\n",
        "{01890a5d-ac96-774b-bcce-b302099a8057}",
        "01890a5dac96774bbcceb302099a8057",
        "x" * 10_000,
    ],
)
def test_malformed_id_is_invalid_argument(stub: pb_grpc.AuditServiceStub, bad_id: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetDiff(pb.GetDiffRequest(id=bad_id))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("id:")


def test_unknown_well_formed_id_is_not_found(stub: pb_grpc.AuditServiceStub) -> None:
    stored = record(stub, before={"a": 1}, after={"a": 2}).id
    last = stored[-1]
    unknown = stored[:-1] + ("0" if last != "0" else "1")  # same shape, another id
    assert uuid.UUID(unknown).version == 7
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetDiff(pb.GetDiffRequest(id=unknown))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.GetDiff(pb.GetDiffRequest(id=stored)).available


# -- SECRET events -----------------------------------------------------------------------------

SECRET_BEFORE = {
    "value": "s3cr3t-old",
    "same": "unchanged-secret",
    "nested": {"user": "admin", "pass": "p@ss-1", "ports": [5432, 5433], "flag": True},
    "none": None,
    "number": 42,
}
SECRET_AFTER = {
    "value": "s3cr3t-new",
    "same": "unchanged-secret",
    "nested": {"user": "admin", "pass": "p@ss-2", "ports": [5432], "flag": True},
    "none": None,
    "number": 43,
    "added": "brand-new",
}


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {
            k: v for key, child in value.items() for k, v in _leaves(child, f"{path}/{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, child in enumerate(value) for k, v in _leaves(child, f"{path}/{i}").items()
        }
    return {path: value}


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return "leaf"


@pytest.fixture
def secret_diff(stub: pb_grpc.AuditServiceStub) -> pb.GetDiffResponse:
    response = record(
        stub,
        resource=pb.RESOURCE_TYPE_SECRET,
        identifier="db-credentials",
        blueprint="",
        before=copy.deepcopy(SECRET_BEFORE),
        after=copy.deepcopy(SECRET_AFTER),
    )
    diff: pb.GetDiffResponse = stub.GetDiff(pb.GetDiffRequest(id=response.id))
    return diff


def test_secret_leaves_are_fingerprints_and_keys_are_kept(
    secret_diff: pb.GetDiffResponse,
) -> None:
    before, after = _json(secret_diff.before), _json(secret_diff.after)
    assert _shape(before) == _shape(SECRET_BEFORE)
    assert _shape(after) == _shape(SECRET_AFTER)
    for leaf in [*_leaves(before).values(), *_leaves(after).values()]:
        assert isinstance(leaf, str)
        assert leaf.startswith(FINGERPRINT)
        assert len(leaf) > len(FINGERPRINT)


def test_secret_fingerprints_show_what_changed_and_never_the_value(
    secret_diff: pb.GetDiffResponse,
) -> None:
    before, after = _leaves(_json(secret_diff.before)), _leaves(_json(secret_diff.after))
    assert before["/same"] == after["/same"]
    assert before["/nested/user"] == after["/nested/user"]
    assert before["/nested/ports/0"] == after["/nested/ports/0"]
    assert before["/nested/flag"] == after["/nested/flag"]
    assert before["/none"] == after["/none"]
    assert before["/value"] != after["/value"]
    assert before["/nested/pass"] != after["/nested/pass"]
    assert before["/number"] != after["/number"]
    assert before["/nested/ports/0"] != before["/nested/ports/1"]
    assert before["/same"] != before["/value"]
    text = secret_diff.SerializeToString()
    for plain in ("s3cr3t-old", "s3cr3t-new", "unchanged-secret", "p@ss-1", "p@ss-2", "brand-new"):
        assert plain.encode() not in text
    assert _same(_apply(secret_diff), _json(secret_diff.after))
    changed = {op.path for op in secret_diff.patch}
    assert {"/value", "/nested/pass", "/number", "/added"} <= changed
    assert not changed & {"/same", "/nested/user", "/none", "/nested/flag"}


def test_secret_fingerprint_is_the_same_across_events(stub: pb_grpc.AuditServiceStub) -> None:
    def fingerprint_of(value: str) -> Any:
        response = record(
            stub, resource=pb.RESOURCE_TYPE_SECRET, blueprint="", after={"token": value}
        )
        diff = stub.GetDiff(pb.GetDiffRequest(id=response.id))
        return _json(diff.after)["token"]

    first, again, other = fingerprint_of("tok-1"), fingerprint_of("tok-1"), fingerprint_of("tok-2")
    assert first == again
    assert first != other
    assert first.startswith(FINGERPRINT)


def test_secret_snapshots_are_fingerprinted_in_list_too(stub: pb_grpc.AuditServiceStub) -> None:
    record(
        stub, resource=pb.RESOURCE_TYPE_SECRET, blueprint="", before={"k": "v1"}, after={"k": "v2"}
    )
    (listed,) = stub.List(pb.ListRequest(include_snapshots=True)).events
    assert _json(listed.before)["k"].startswith(FINGERPRINT)
    assert _json(listed.after)["k"].startswith(FINGERPRINT)
    assert b"v1" not in listed.SerializeToString()
    assert b"v2" not in listed.SerializeToString()


def test_non_secret_snapshots_are_kept_as_sent(stub: pb_grpc.AuditServiceStub) -> None:
    "Control: the fingerprints above come from the SECRET rule, not from every event."
    response = record(stub, before={"k": "v1"}, after={"k": "v2"})
    diff = stub.GetDiff(pb.GetDiffRequest(id=response.id))
    assert _json(diff.before) == {"k": "v1"}
    assert _json(diff.after) == {"k": "v2"}

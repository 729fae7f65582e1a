"""Before/after diffs as RFC 6902 JSON Patches.

Objects are compared key by key, and a subtree is skipped as soon as it is strictly equal on
both sides, which ``==`` and ``marshal`` tell in C: a 100 KB snapshot with a dozen changes costs
a few milliseconds. Arrays that differ are diffed by the ``jsonpatch``
library (moves, insertions), its operations checked by applying them to that array; should
they not reproduce it exactly, the whole array is replaced instead, which is always right.
"""

from __future__ import annotations

import copy
import json
import marshal
from typing import Any

import jsonpatch

from audit_service.models import Diff, JSONObject, StoredEvent, diff_unavailable_reason

_marshal = marshal.dumps

# Canonical text: equal text means strictly equal values (true is not 1, 1 is not 1.5).
_canonical = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False
).encode


def make_patch(before: JSONObject, after: JSONObject) -> list[JSONObject]:
    "The operations that turn ``before`` into ``after`` (both objects)."
    ops: list[JSONObject] = []
    _diff_objects(before, after, "", ops)
    return ops


def _pointer(base: str, key: str | int) -> str:
    return f"{base}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _diff_objects(before: JSONObject, after: JSONObject, path: str, ops: list[JSONObject]) -> None:
    # Leaves inline and pointers only for what changed: most keys of a big object are equal.
    for key in before:
        if key not in after:
            ops.append({"op": "remove", "path": _pointer(path, key)})
    missing = _MISSING
    for key, new in after.items():
        old = before.get(key, missing)
        if old is new:
            continue
        if old is missing:
            ops.append({"op": "add", "path": _pointer(path, key), "value": new})
            continue
        kind = type(old)
        if kind is not type(new):
            ops.append({"op": "replace", "path": _pointer(path, key), "value": new})
        elif kind is dict:
            if not _same(old, new):
                _diff_objects(old, new, _pointer(path, key), ops)
        elif kind is list:
            if not _same(old, new):
                ops.extend(_diff_lists(old, new, _pointer(path, key)))
        elif old != new:  # same type: == is exact for str, int, float, bool and None
            ops.append({"op": "replace", "path": _pointer(path, key), "value": new})


_MISSING: Any = object()


def _same(old: Any, new: Any) -> bool:
    """Strictly equal containers. ``==`` (C) settles most: unequal is different; equal is the
    same unless a true stands for a 1 or a 1.0 for a 1 somewhere, which their ``marshal``
    bytes (C too; format 2 writes no back-references, so equal values give equal bytes
    whatever objects they share) tell apart. (A different key order makes the bytes differ:
    then the caller walks the subtree and finds nothing to change.)"""
    return old is new or (old == new and _marshal(old, 2) == _marshal(new, 2))


def _diff_lists(old: list[Any], new: list[Any], path: str) -> list[JSONObject]:
    ops: list[JSONObject] = jsonpatch.make_patch(old, new).patch
    try:
        result = jsonpatch.apply_patch(copy.deepcopy(old), ops)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
        result = None
    if result is None or _canonical(result) != _canonical(new):
        return [{"op": "replace", "path": path, "value": new}]
    for op in ops:
        op["path"] = path + op["path"]
        if "from" in op:
            op["from"] = path + op["from"]
    return ops


def diff_of(event: StoredEvent) -> Diff:
    reason = diff_unavailable_reason(event.operation, event.before, event.after)
    before, after = event.before or {}, event.after or {}
    if reason is not None:
        return Diff(event.id, False, reason, before, after, [])
    return Diff(event.id, True, "", before, after, make_patch(before, after))


def strictly_equal(a: Any, b: Any) -> bool:
    "JSON equality that, unlike ``==``, tells ``true`` from ``1`` and ``1`` from ``1.5``."
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strictly_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strictly_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)

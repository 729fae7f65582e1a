"""Before/after diffs as RFC 6902 JSON Patches (computed by the ``jsonpatch`` library)."""

from __future__ import annotations

from typing import Any

import jsonpatch

from audit_service.models import Diff, JSONObject, StoredEvent, diff_unavailable_reason


def make_patch(before: JSONObject, after: JSONObject) -> list[JSONObject]:
    """The operations that turn ``before`` into ``after``.

    The library's patch is checked by applying it; should it ever not reproduce ``after``
    exactly (types included: ``1`` is not ``true``), one whole-document replace is returned
    instead, which is always right.
    """
    ops: list[JSONObject] = jsonpatch.make_patch(before, after).patch
    try:
        result = jsonpatch.apply_patch(before, ops)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
        result = None
    if not strictly_equal(result, after):
        return [{"op": "replace", "path": "", "value": after}]
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

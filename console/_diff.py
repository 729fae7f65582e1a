"""An event's before/after snapshots side by side: one row per key path, changed keys marked.

Nested objects and lists are flattened into leaf paths (``spec.replicas``,
``containers[0].image``); an empty object or list is a leaf of its own (``{}``, ``[]``). A row
is ``same``, ``changed``, ``added`` (only after) or ``removed`` (only before).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class DiffRow:
    key: str
    before: str | None  # the value as JSON text; None: not there
    after: str | None
    change: str  # same | changed | added | removed


def flatten(value: Any, prefix: Path = ()) -> dict[Path, Any]:
    "Every leaf of a snapshot by its path."
    out: dict[Path, Any] = {}
    if isinstance(value, dict) and value:
        for key, item in value.items():
            out.update(flatten(item, (*prefix, str(key))))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            out.update(flatten(item, (*prefix, index)))
    else:
        out[prefix] = value
    return out


def path_text(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(the whole snapshot)"


def _sort_key(path: Path) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def side_by_side(before: dict[str, Any], after: dict[str, Any]) -> list[DiffRow]:
    "The rows of the diff, sorted by key path (objects' keys in order, lists by index)."
    old = flatten(before) if before else {}
    new = flatten(after) if after else {}
    rows = []
    for path in sorted(old.keys() | new.keys(), key=_sort_key):
        if path not in new:
            rows.append(DiffRow(path_text(path), _json(old[path]), None, "removed"))
        elif path not in old:
            rows.append(DiffRow(path_text(path), None, _json(new[path]), "added"))
        else:
            a, b = _json(old[path]), _json(new[path])
            rows.append(DiffRow(path_text(path), a, b, "same" if a == b else "changed"))
    return rows

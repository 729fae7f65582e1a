"""Sensitive values out of snapshots, before anything is spooled.

Terraform marks sensitive values in the state: per instance, ``sensitive_attributes`` lists
paths into ``attributes`` (lists of steps: ``{"type": "get_attr", "value": "password"}``,
``{"type": "index", "value": {"value": 0, "type": "number"}}``), and an output has
``"sensitive": true``. ``Redactor`` replaces each such value with a keyed fingerprint
(HMAC-SHA256 with this collector's key), so a diff shows that a secret changed and never what
it is.

Terraform does not carry the mark everywhere the value goes: ``terraform_data`` copies
``input`` to ``output`` unmarked, and a provider may echo a marked argument into a computed
attribute. So every string found under a sensitive path (or in a sensitive output) of the
states being compared is also replaced wherever else it appears in them.

An attribute of a dynamic type is stored wrapped, ``{"value": ..., "type": ...}``, and the
paths step through the wrapper as if it were not there; both readings are tried. A path that
cannot be followed redacts the whole top-level attribute it starts at; a path that cannot be
read at all redacts every attribute of the instance.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from typing import Any

from collectors.terraform.state import Instance, TerraformState

FINGERPRINT_PREFIX = "hmac-sha256:"  # the same shape as the service's SECRET fingerprints
FINGERPRINT_HEX_CHARS = 16

Step = tuple[str, Any]  # ("attr", name) or ("index", key)


MAX_PATH_STEPS = 64


def parse_path(raw: Any) -> list[Step] | None:
    "A ``sensitive_attributes`` path as steps; None when it is not one."
    if not isinstance(raw, list) or not raw or len(raw) > MAX_PATH_STEPS:
        return None
    steps: list[Step] = []
    for step in raw:
        if not isinstance(step, dict):
            return None
        kind, value = step.get("type"), step.get("value")
        if kind == "get_attr" and isinstance(value, str):
            steps.append(("attr", value))
        elif kind == "index" and isinstance(value, dict) and "value" in value:
            key = value["value"]
            if isinstance(key, float) and key.is_integer():
                key = int(key)
            if isinstance(key, bool) or not isinstance(key, int | str):
                return None
            steps.append(("index", key))
        else:
            return None
    return steps


_CTY_KINDS = frozenset({"object", "tuple", "list", "map", "set"})
_CTY_PRIMITIVES = frozenset({"string", "number", "bool", "dynamic"})


def is_wrapped(node: Any) -> bool:
    "A value of a dynamic type as the state stores it: ``{'value': ..., 'type': <cty type>}``."
    if not isinstance(node, dict) or set(node) != {"value", "type"}:
        return False
    kind = node["type"]
    if isinstance(kind, str):
        return kind in _CTY_PRIMITIVES
    return isinstance(kind, list) and bool(kind) and kind[0] in _CTY_KINDS


def _child(node: Any, step: Step) -> tuple[bool, Any]:
    kind, key = step
    if isinstance(node, dict) and isinstance(key, str) and key in node:
        return True, key
    if kind == "index" and isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return True, key
    return False, None


def locate(node: Any, steps: list[Step]) -> tuple[Any, Any] | None:
    "The (container, key) the path leads to in ``node``, through dynamic wrappers; or None."
    candidates = [node, node["value"]] if is_wrapped(node) else [node]
    for candidate in candidates:
        found, key = _child(candidate, steps[0])
        if not found:
            continue
        if len(steps) == 1:
            return candidate, key
        below = locate(candidate[key], steps[1:])
        if below is not None:
            return below
    return None


def strings(value: Any) -> Iterator[str]:
    "Every non-empty string leaf of ``value``."
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if node:
                yield node
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _unwrap(value: Any) -> Any:
    return value["value"] if is_wrapped(value) else value


def sensitive_strings(states: Iterable[TerraformState | None]) -> set[str]:
    "The strings Terraform marked sensitive anywhere in ``states``."
    found: set[str] = set()
    for state in states:
        if state is None:
            continue
        for output in state.outputs.values():
            if output.sensitive:
                found.update(strings(output.value))
        for instance in state.instances.values():
            for raw in instance.sensitive_paths:
                steps = parse_path(raw)
                if steps is None:
                    found.update(strings(instance.attributes))
                    continue
                target = locate(instance.attributes, steps)
                if target is not None:
                    container, key = target
                    found.update(strings(_unwrap(container[key])))
                elif steps[0][1] in instance.attributes:
                    found.update(strings(instance.attributes[steps[0][1]]))
    return found


class Redactor:
    "Replaces sensitive values with keyed fingerprints (HMAC-SHA256 with this collector's key)."

    def __init__(self, key: bytes) -> None:
        self._key = key

    def fingerprint(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
        return FINGERPRINT_PREFIX + digest[:FINGERPRINT_HEX_CHARS]

    def _hide(self, container: Any, key: Any) -> None:
        value = container[key]
        if is_wrapped(value):  # keep the type; it says nothing about the value
            value["value"] = self.fingerprint(value["value"])
        else:
            container[key] = self.fingerprint(value)

    def _hide_known(self, value: Any, secrets: set[str]) -> Any:
        "``value`` with every string in ``secrets`` replaced, wherever it is."
        if isinstance(value, str):
            return self.fingerprint(value) if value in secrets else value
        if isinstance(value, dict):
            return {k: self._hide_known(v, secrets) for k, v in value.items()}
        if isinstance(value, list):
            return [self._hide_known(v, secrets) for v in value]
        return value

    def attributes(self, instance: Instance, secrets: set[str]) -> dict[str, Any]:
        "The instance's attributes, sensitive values fingerprinted (a copy)."
        attributes = copy.deepcopy(instance.attributes)
        for raw in instance.sensitive_paths:
            steps = parse_path(raw)
            if steps is None:
                for name in list(attributes):
                    attributes[name] = self.fingerprint(attributes[name])
                continue
            target = locate(attributes, steps)
            if target is not None:
                self._hide(*target)
            elif steps[0][1] in attributes:
                self._hide(attributes, steps[0][1])
        hidden: dict[str, Any] = self._hide_known(attributes, secrets)
        return hidden

    def outputs(self, state: TerraformState, secrets: set[str]) -> dict[str, Any]:
        "``{name: value}``, sensitive outputs fingerprinted."
        values: dict[str, Any] = {}
        for name, output in state.outputs.items():
            if output.sensitive:
                values[name] = self.fingerprint(output.value)
            else:
                values[name] = self._hide_known(output.value, secrets)
        return values

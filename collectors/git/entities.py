"""Entity files in a GitOps repository: which paths hold them, what they hold, and which
entities changed between two trees.

A file matching the glob (default ``.auditlog/**/*.{yml,yaml,json}``) holds one entity, a list
of entities, or (YAML) several documents of either. An entity is an object with a string
``identifier`` and ``blueprint``, and optionally ``title`` (a string), ``properties`` and
``relations`` (objects); other keys are kept as they are. An entity is known by
``<blueprint>/<identifier>``, wherever it is defined, so moving it to another file changes
nothing.

A file that cannot be read as entities (not UTF-8, not YAML or JSON, an entity without an
identifier, too big, nesting too deep) raises ``EntityFileError`` naming the problem and, for
syntax errors, the line and column.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from collectors.runtime.limits import MAX_IDENTIFIER_CHARS, MAX_SNAPSHOT_DEPTH

DEFAULT_GLOB = ".auditlog/**/*.{yml,yaml,json}"
MAX_NODES = 200_000  # values in one file, aliases expanded (a "billion laughs" stops here)
_GLOB_CHARS = frozenset("*?[{")


class EntityFileError(ValueError):
    "A file that cannot be read as entities; the message says why (and where)."


# -- which files ---------------------------------------------------------------------------


def _split_braces(body: str) -> list[str]:
    "Top-level comma-separated alternatives of a ``{...}`` body."
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += char == "{"
        depth -= char == "}"
        current.append(char)
    parts.append("".join(current))
    return parts


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(char))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif char == "{":
            depth, end = 0, -1
            for j in range(i, len(pattern)):
                depth += pattern[j] == "{"
                depth -= pattern[j] == "}"
                if depth == 0:
                    end = j
                    break
            if end < 0:
                out.append(re.escape(char))
                i += 1
                continue
            options = _split_braces(pattern[i + 1 : end])
            out.append("(?:" + "|".join(_glob_regex(o) for o in options) + ")")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class EntityGlob:
    """A path pattern: ``*`` and ``?`` within one directory, ``**/`` any directories,
    ``[abc]`` one of, ``{yml,yaml}`` alternatives. Paths are relative to the repository root."""

    pattern: str
    regex: re.Pattern[str] = field(init=False, compare=False)
    prefix: str = field(init=False, compare=False)  # the directory no glob character is in

    def __post_init__(self) -> None:
        pattern = self.pattern.lstrip("/")
        if not pattern:
            raise ValueError("the entity glob is empty")
        object.__setattr__(self, "regex", re.compile(_glob_regex(pattern) + r"\Z", re.DOTALL))
        literal: list[str] = []
        for segment in pattern.split("/")[:-1]:
            if _GLOB_CHARS & set(segment):
                break
            literal.append(segment)
        object.__setattr__(self, "prefix", "/".join(literal))

    def matches(self, path: str) -> bool:
        return self.regex.match(path) is not None


# -- what a file holds -----------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    "Safe YAML whose timestamps stay strings (an entity's values must be JSON values)."


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Budget:
    def __init__(self, nodes: int) -> None:
        self.left = nodes


def _json_value(value: Any, depth: int, budget: _Budget, where: str) -> Any:
    "``value`` (from YAML or JSON) as a JSON value, or EntityFileError; ``depth`` its level."
    budget.left -= 1
    if budget.left < 0:
        raise EntityFileError(f"more than {MAX_NODES} values (aliases expanded)")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise EntityFileError(f"{where}: {value} is not a JSON number")
        return value
    if isinstance(value, dict | list):
        if depth > MAX_SNAPSHOT_DEPTH:
            raise EntityFileError(f"{where}: nests deeper than {MAX_SNAPSHOT_DEPTH} levels")
        if isinstance(value, list):
            return [
                _json_value(item, depth + 1, budget, f"{where}[{index}]")
                for index, item in enumerate(value)
            ]
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise EntityFileError(f"{where}: a key that is a {type(key).__name__}")
            name = key if isinstance(key, str) else json.dumps(key)
            out[name] = _json_value(item, depth + 1, budget, f"{where}.{name}")
        return out
    raise EntityFileError(f"{where}: a {type(value).__name__} is not a JSON value")


def _syntax_error(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not valid YAML: {exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    return f"not valid YAML: {exc}"


def _check_entity(entity: Any, where: str) -> dict[str, Any]:
    if not isinstance(entity, dict):
        kind = "null" if entity is None else type(entity).__name__
        raise EntityFileError(f"{where} is a {kind}, not an entity (an object)")
    for name in ("identifier", "blueprint"):
        value = entity.get(name)
        if not isinstance(value, str) or not value.strip():
            problem = "missing" if value is None else f"not a non-empty string ({value!r})"
            raise EntityFileError(f"{where}: {name} is {problem}")
        if len(value) > MAX_IDENTIFIER_CHARS:
            raise EntityFileError(f"{where}: {name} is over {MAX_IDENTIFIER_CHARS} characters")
    title = entity.get("title")
    if title is not None and not isinstance(title, str):
        raise EntityFileError(f"{where}: title is not a string")
    for name in ("properties", "relations"):
        value = entity.get(name)
        if value is not None and not isinstance(value, dict):
            raise EntityFileError(f"{where}: {name} is not an object")
    return entity


def parse_entities(path: str, data: bytes) -> list[dict[str, Any]]:
    """The entities in the file at ``path`` (YAML, or JSON for ``.json``), in file order.

    :raises EntityFileError: the file cannot be read as entities.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntityFileError(f"not UTF-8 (byte {exc.start})") from None
    documents: list[Any]
    try:
        if path.lower().endswith(".json"):
            documents = [json.loads(text)] if text.strip() else []
        else:
            documents = list(yaml.load_all(text, Loader=_Loader))
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise EntityFileError(_syntax_error(exc)) from None
    except RecursionError:
        raise EntityFileError("nests too deep to be read") from None
    budget = _Budget(MAX_NODES)
    entities: list[dict[str, Any]] = []
    many = len(documents) > 1
    for number, document in enumerate(documents, 1):
        if document is None:
            continue  # an empty document
        where = f"document {number}" if many else "the file"
        if isinstance(document, list):
            for index, item in enumerate(document):
                label = f"{where}, item {index + 1}" if many else f"item {index + 1}"
                converted = _json_value(item, 1, budget, label)
                entities.append(_check_entity(converted, label))
        else:
            label = where if many else "the file"
            converted = _json_value(document, 1, budget, label)
            entities.append(_check_entity(converted, label))
    return entities


def entity_key(entity: Mapping[str, Any]) -> str:
    return f"{entity['blueprint']}/{entity['identifier']}"


# -- what changed ------------------------------------------------------------------------------


@dataclass
class FileState:
    """One entity file as last processed: its blob, its entities, and the error that kept its
    newest version from being read (its entities are then those of the last good version)."""

    blob: str
    entities: list[dict[str, Any]]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"blob": self.blob, "entities": self.entities}
        if self.error is not None:
            data["error"] = self.error
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileState:
        return cls(str(data["blob"]), list(data["entities"]), data.get("error"))


Operation = Literal["CREATE", "UPDATE", "DELETE"]


@dataclass(frozen=True)
class EntityChange:
    operation: Operation
    key: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    path: str  # where it is defined now (where it was, for a DELETE)
    previous_path: str | None = None  # where it was, when it moved


def entity_map(files: Mapping[str, FileState]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every entity of ``files`` by key, with the path that defines it. An entity defined
    twice is taken from the first path in sorted order (and the first time in that file)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in sorted(files):
        for entity in files[path].entities:
            found.setdefault(entity_key(entity), (path, entity))
    return found


def duplicates(files: Mapping[str, FileState]) -> dict[str, list[str]]:
    "Keys defined more than once, with the paths that define them."
    seen: dict[str, list[str]] = {}
    for path in sorted(files):
        for entity in files[path].entities:
            seen.setdefault(entity_key(entity), []).append(path)
    return {key: paths for key, paths in seen.items() if len(paths) > 1}


def _canonical(entity: Mapping[str, Any]) -> str:
    return json.dumps(entity, sort_keys=True, separators=(",", ":"))


def diff_entities(
    old: Mapping[str, tuple[str, dict[str, Any]]], new: Mapping[str, tuple[str, dict[str, Any]]]
) -> list[EntityChange]:
    """What changed from ``old`` to ``new`` (both from ``entity_map``): creates and updates
    in the order of ``new``, then deletes in the order of ``old``. A moved entity with the
    same content is no change."""
    changes: list[EntityChange] = []
    for key, (path, entity) in new.items():
        previous = old.get(key)
        if previous is None:
            changes.append(EntityChange("CREATE", key, None, entity, path))
        elif _canonical(previous[1]) != _canonical(entity):
            moved = previous[0] if previous[0] != path else None
            changes.append(EntityChange("UPDATE", key, previous[1], entity, path, moved))
    for key, (path, entity) in old.items():
        if key not in new:
            changes.append(EntityChange("DELETE", key, entity, None, path))
    return changes


def changed_paths(old: Mapping[str, FileState], new_blobs: Mapping[str, str]) -> Iterable[str]:
    "Paths whose blob differs (added, changed or removed)."
    for path, blob in new_blobs.items():
        state = old.get(path)
        if state is None or state.blob != blob:
            yield path
    for path in old:
        if path not in new_blobs:
            yield path

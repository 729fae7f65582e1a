"""What a provider's webhook delivery says changed, before it becomes audit events.

Each provider module (``github``, ``gitlab``, ``bitbucket``) turns one delivery (its event
header and its JSON payload) into a ``Mapped``: the sender, and a ``Change`` per entity that
changed (a repository, a pull or merge request, a branch), with snapshots built from the
payload; or, for what is not recorded, the reason (``Mapped.ignored``). A payload that lacks
what its event type must carry raises ``PayloadError`` (the receiver answers 400).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Operation = Literal["CREATE", "UPDATE", "DELETE"]
SourceKind = Literal["USER", "INTEGRATION", "SYSTEM"]
ZERO_SHA = "0" * 40


class PayloadError(ValueError):
    "The payload lacks something its event type must carry; the message names it."


@dataclass(frozen=True)
class Actor:
    "Who made the change: the provider's sender."

    kind: SourceKind
    id: str
    name: str


@dataclass
class Change:
    blueprint: str  # the default blueprint; the receiver applies --blueprint
    identifier: str
    operation: Operation
    action: str  # created, deleted, renamed, edited, archived, opened, merged, pushed, ...
    after: dict[str, Any] | None
    before: dict[str, Any] | None = None
    occurred_at: datetime | None = None
    context: dict[str, str] = field(default_factory=dict)


@dataclass
class Mapped:
    actor: Actor | None = None
    changes: list[Change] = field(default_factory=list)
    ignored: str = ""  # why nothing is recorded ('' when something is)

    @classmethod
    def ignore(cls, reason: str) -> Mapped:
        return cls(ignored=reason)


# -- reading payloads ----------------------------------------------------------------------


def need_object(payload: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    "``payload[key]``, an object. :raises PayloadError:"
    value = payload.get(key)
    if not isinstance(value, dict):
        problem = "missing" if value is None else "not an object"
        raise PayloadError(f"{what}: {key} is {problem}")
    return value


def need_text(payload: Mapping[str, Any], key: str, what: str, *, number: bool = False) -> str:
    """``payload[key]``, a non-empty string (or, with ``number``, a whole number, as its
    digits). :raises PayloadError:"""
    value = payload.get(key)
    if number and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        problem = "missing" if value is None else "not a non-empty string"
        raise PayloadError(f"{what}: {key} is {problem}")
    return value


def text(value: Any) -> str:
    "A scalar as text ('' for None and for objects)."
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def dig(payload: Any, *keys: str) -> Any:
    "``payload[k1][k2]...``, or None where something is missing."
    for key in keys:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


def present(**values: Any) -> dict[str, Any]:
    "The keyword arguments that are not None: a snapshot of what the payload carried."
    return {key: value for key, value in values.items() if value is not None}


def names(items: Any, *keys: str) -> list[str] | None:
    "The ``keys`` (first found) of each object in a list: logins, label names."
    if not isinstance(items, list):
        return None
    found = []
    for item in items:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            for key in keys:
                if isinstance(item.get(key), str):
                    found.append(item[key])
                    break
    return found


_OLD_GITLAB_TIME = re.compile(r"^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d) UTC$")


def parse_time(value: Any) -> datetime | None:
    """A payload's time: seconds since the epoch, RFC 3339 / ISO 8601 (``Z`` or an offset),
    or GitLab's older ``2013-12-03 17:23:34 UTC``. None when it is none of those."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    old = _OLD_GITLAB_TIME.match(value)
    if old:
        value = f"{old.group(1)}T{old.group(2)}+00:00"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def branch_of(ref: str) -> str | None:
    "``main`` for ``refs/heads/main``; None for tags and other refs."
    prefix = "refs/heads/"
    return ref[len(prefix) :] if ref.startswith(prefix) else None

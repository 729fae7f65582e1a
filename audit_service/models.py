"""The audit event as the service sees it: plain Python values, no protobuf, no SQL.

Enum values are the proto enum's short names (``ENTITY`` for ``RESOURCE_TYPE_ENTITY``); times
are integer nanoseconds since the Unix epoch, UTC; snapshots are JSON-compatible dicts.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

JSONObject = dict[str, Any]


class ResourceType(enum.StrEnum):
    ENTITY = "ENTITY"
    BLUEPRINT = "BLUEPRINT"
    ACTION = "ACTION"
    AUTOMATION = "AUTOMATION"
    SCORECARD = "SCORECARD"
    RUN = "RUN"
    INTEGRATION = "INTEGRATION"
    SECRET = "SECRET"  # noqa: S105 (a resource type, not a password)
    SIGN_IN = "SIGN_IN"


class Operation(enum.StrEnum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TIMER_EXPIRED = "TIMER_EXPIRED"
    READ = "READ"


class SourceKind(enum.StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    USER = "USER"
    INTEGRATION = "INTEGRATION"
    WEBHOOK = "WEBHOOK"
    AUTOMATION = "AUTOMATION"
    SYSTEM = "SYSTEM"


class Origin(enum.StrEnum):
    UI = "UI"
    API = "API"
    WEBHOOK = "WEBHOOK"
    K8S_EXPORTER = "K8S_EXPORTER"
    GITHUB_EXPORTER = "GITHUB_EXPORTER"
    BITBUCKET_EXPORTER = "BITBUCKET_EXPORTER"
    GITLAB_EXPORTER = "GITLAB_EXPORTER"
    GITHUB_GITOPS = "GITHUB_GITOPS"
    BITBUCKET_GITOPS = "BITBUCKET_GITOPS"
    GH_ACTION = "GH_ACTION"
    AWS_EXPORTER = "AWS_EXPORTER"
    TERRAFORM = "TERRAFORM"
    PULUMI = "PULUMI"
    CODEFRESH = "CODEFRESH"
    AGGREGATION_PROPERTY = "AGGREGATION_PROPERTY"
    PORT_AUTOMATION = "PORT_AUTOMATION"
    PORT_INTERNAL = "PORT_INTERNAL"


class Status(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


@dataclass(frozen=True, slots=True)
class Source:
    kind: SourceKind = SourceKind.UNSPECIFIED
    id: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        "What a person sees in the Source column (and what `source` sorts by)."
        return self.name or self.id


@dataclass(slots=True)
class NewEvent:
    """A validated event on its way to storage (ids and recorded_at are assigned there)."""

    resource: ResourceType
    identifier: str
    operation: Operation
    origin: Origin
    occurred_at: int
    recorded_by: str
    source: Source = field(default_factory=Source)
    status: Status = Status.SUCCESS
    error: str = ""
    blueprint: str = ""
    integration: str = ""
    run_id: str = ""
    idempotency_key: str = ""
    before: JSONObject | None = None
    after: JSONObject | None = None
    context: dict[str, str] = field(default_factory=dict)
    # before, after and context as compact JSON text (``encode_json``), when encoded already
    # (conversion does it on the RPC thread, off the writer's). Whoever changes before, after
    # or context must set it to None.
    json_text: tuple[str | None, str | None, str] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def diff_available(self) -> bool:
        return diff_unavailable_reason(self.operation, self.before, self.after) is None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from storage."""

    id: str
    recorded_at: int
    recorded_by: str
    resource: ResourceType
    identifier: str
    operation: Operation
    origin: Origin
    occurred_at: int
    source: Source
    status: Status
    error: str
    blueprint: str
    integration: str
    run_id: str
    idempotency_key: str
    context: dict[str, str]
    diff_available: bool
    before: JSONObject | None = None
    after: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What storage did with one NewEvent."""

    id: str
    recorded_at: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Diff:
    id: str
    available: bool
    reason: str
    before: JSONObject
    after: JSONObject
    patch: list[JSONObject]


def diff_unavailable_reason(
    operation: Operation, before: JSONObject | None, after: JSONObject | None
) -> str | None:
    "Why GetDiff has nothing to show for such an event, or None when it has."
    if operation is Operation.READ:
        return "READ events record an access, not a change: there is nothing to diff"
    if before is None and after is None:
        return "the event was recorded without before/after snapshots"
    return None


# -- JSON text --------------------------------------------------------------------------------

_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Its C encoder, made once (JSONEncoder.encode makes one per call, half the cost of encoding a
# small snapshot): the same text, without the check for circular references (values come
# from JSON, or from protobuf Structs).
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_ENCODE_OBJECT = (
    None
    if _C_MAKE_ENCODER is None
    else _C_MAKE_ENCODER(
        None,
        _JSON_ENCODER.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
)


def to_json(value: Any) -> str:
    "``value`` as compact JSON text (non-ASCII kept as it is; NaN and infinities refused)."
    if _ENCODE_OBJECT is not None and type(value) is dict:
        return "".join(_ENCODE_OBJECT(value, 0))
    return _JSON_ENCODER.encode(value)


def encode_json(event: NewEvent) -> tuple[str | None, str | None, str]:
    "An event's before, after and context as JSON text (what ``NewEvent.json_text`` holds)."
    return (
        None if event.before is None else to_json(event.before),
        None if event.after is None else to_json(event.after),
        to_json(event.context),
    )

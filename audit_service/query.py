"""List queries: the filter fields, their operators, sorting and page cursors.

This module parses what a caller sent into a ``Query`` and names the problem when it cannot;
storage turns a ``Query`` into SQL.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from audit_service import models
from audit_service.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_FILTERS = 32
MAX_FILTER_VALUES = 100
MAX_FILTER_VALUE_LENGTH = 1024
CONTEXT_PREFIX = "context."


class Kind(enum.Enum):
    TIME = "time"
    ENUM = "enum"
    TEXT = "text"
    SEARCH = "search"  # text searched, not compared: CONTAINS only, never a sort


class Op(enum.StrEnum):
    EQUALS = "EQUALS"
    NOT_EQUALS = "NOT_EQUALS"
    CONTAINS = "CONTAINS"
    STARTS_WITH = "STARTS_WITH"
    GT = "GT"
    GTE = "GTE"
    LT = "LT"
    LTE = "LTE"


RANGE_OPS = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE})
OPS_BY_KIND: dict[Kind, frozenset[Op]] = {
    Kind.TIME: frozenset({Op.EQUALS, Op.NOT_EQUALS}) | RANGE_OPS,
    Kind.ENUM: frozenset({Op.EQUALS, Op.NOT_EQUALS}),
    Kind.TEXT: frozenset(Op),
    Kind.SEARCH: frozenset({Op.CONTAINS}),
}
MIN_SEARCH_CHARS = 3  # the trigram index cannot match fewer


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    kind: Kind
    help: str
    enum: type[enum.StrEnum] | None = None
    enum_prefix: str = ""


FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        FieldSpec("occurred_at", Kind.TIME, "when the change happened (RFC 3339)"),
        FieldSpec("recorded_at", Kind.TIME, "when the service stored the event (RFC 3339)"),
        FieldSpec("resource", Kind.ENUM, "the tab", models.ResourceType, "RESOURCE_TYPE_"),
        FieldSpec("identifier", Kind.TEXT, "identifier of the changed resource"),
        FieldSpec("blueprint", Kind.TEXT, "the entity's blueprint"),
        FieldSpec("integration", Kind.TEXT, "integration installation id"),
        FieldSpec("run_id", Kind.TEXT, "the run that caused the change"),
        FieldSpec("operation", Kind.ENUM, "what happened", models.Operation, "OPERATION_"),
        FieldSpec("source", Kind.TEXT, "who: matches the source's id or name"),
        FieldSpec(
            "source_kind", Kind.ENUM, "user, integration, ...", models.SourceKind, "SOURCE_KIND_"
        ),
        FieldSpec("origin", Kind.ENUM, "the system it came through", models.Origin, "ORIGIN_"),
        FieldSpec("status", Kind.ENUM, "success or failure", models.Status, "STATUS_"),
        FieldSpec("error", Kind.TEXT, "the failure's description"),
        FieldSpec("recorded_by", Kind.TEXT, "the principal that submitted the event"),
        FieldSpec(
            "snapshot_text",
            Kind.SEARCH,
            "the keys and string values of the before and after snapshots",
        ),
    )
}
SORTABLE = tuple(name for name, spec in FIELDS.items() if spec.kind is not Kind.SEARCH)
DEFAULT_SORT = "occurred_at desc"


def valid_fields_text() -> str:
    return ", ".join([*FIELDS, CONTEXT_PREFIX + "<key>"])


@dataclass(frozen=True, slots=True)
class Condition:
    """One parsed filter rule. ``values`` are normalized: ns ints for times, short enum names."""

    field: str
    kind: Kind
    op: Op
    values: tuple[str | int, ...]
    context_key: str | None = None


@dataclass(frozen=True, slots=True)
class Sort:
    field: str
    kind: Kind
    descending: bool

    def __str__(self) -> str:
        return f"{self.field} {'desc' if self.descending else 'asc'}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last row of the previous page: its sort value and id."""

    value: str | int
    id: str


@dataclass(frozen=True, slots=True)
class Query:
    conditions: tuple[Condition, ...]
    sort: Sort
    page_size: int
    include_snapshots: bool = False
    after: Cursor | None = None


def sort_value(event: models.StoredEvent, sort: Sort) -> str | int:
    "The value ``event`` is ordered by under ``sort`` (what a cursor remembers)."
    if sort.field == "source":
        return event.source.label
    if sort.field == "source_kind":
        return event.source.kind.value
    value = getattr(event, sort.field)
    return value.value if isinstance(value, enum.Enum) else value  # type: ignore[no-any-return]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FRACTION = re.compile(r"(?<=\d)[.,](\d+)")
# Times are stored as signed 64-bit nanoseconds since the epoch.
MIN_TIME_NS = -(2**63)
MAX_TIME_NS = 2**63 - 1
TIME_RANGE = "1677-09-21T00:12:44Z to 2262-04-11T23:47:16Z"


def parse_time(text: str, where: str) -> int:
    """RFC 3339 text to integer nanoseconds since the epoch.

    The fraction of a second is read here, to the nanosecond (``datetime`` keeps only
    microseconds); RFC 3339 allows a lower-case ``t`` and ``z``.
    """
    stripped = text.strip()
    nanos = 0
    fraction = _FRACTION.search(stripped)
    if fraction:
        nanos = int(fraction.group(1)[:9].ljust(9, "0"))
        stripped = stripped[: fraction.start()] + stripped[fraction.end() :]
    try:
        parsed = datetime.fromisoformat(stripped.upper())
    except ValueError:
        raise InvalidArgument(
            where, f"{text!r} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgument(where, f"{text!r} has no UTC offset (add Z or +HH:MM)")
    delta = parsed - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    ns += nanos
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise InvalidArgument(
            where, f"{text!r} is outside the range of stored times ({TIME_RANGE})"
        )
    return ns


def parse_enum(spec: FieldSpec, text: str, where: str) -> str:
    assert spec.enum is not None
    name = text.strip().upper()
    if name.startswith(spec.enum_prefix):
        name = name[len(spec.enum_prefix) :]
    if name in spec.enum.__members__:
        return name
    valid = ", ".join(m.lower() for m in spec.enum.__members__)
    raise InvalidArgument(where, f"{text!r} is not a valid {spec.name}; valid values: {valid}")


def parse_condition(field: str, op: str, values: Sequence[str], where: str) -> Condition:
    "Parse one filter rule; ``where`` names it in errors (e.g. ``filters[2]``)."
    context_key: str | None = None
    if field.startswith(CONTEXT_PREFIX):
        context_key = field[len(CONTEXT_PREFIX) :]
        if not context_key:
            raise InvalidArgument(f"{where}.field", "context.<key> needs a key")
        spec = FieldSpec(field, Kind.TEXT, "context value")
    elif field in FIELDS:
        spec = FIELDS[field]
    else:
        raise InvalidArgument(
            f"{where}.field", f"unknown field {field!r}; valid fields: {valid_fields_text()}"
        )
    try:
        parsed_op = Op(op)
    except ValueError:
        valid = ", ".join(o.value for o in Op)
        raise InvalidArgument(
            f"{where}.op", f"missing or unknown operator; use one of {valid}"
        ) from None
    if parsed_op not in OPS_BY_KIND[spec.kind]:
        allowed = ", ".join(sorted(o.value for o in OPS_BY_KIND[spec.kind]))
        raise InvalidArgument(
            f"{where}.op", f"{parsed_op.value} does not apply to {field}; use one of {allowed}"
        )
    if not values:
        raise InvalidArgument(f"{where}.values", f"filter on {field} needs at least one value")
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidArgument(f"{where}.values", f"at most {MAX_FILTER_VALUES} values per rule")
    normalized: list[str | int] = []
    for i, value in enumerate(values):
        at = f"{where}.values[{i}]"
        if len(value) > MAX_FILTER_VALUE_LENGTH:
            raise InvalidArgument(at, f"longer than {MAX_FILTER_VALUE_LENGTH} characters")
        if spec.kind is Kind.TIME:
            normalized.append(parse_time(value, at))
        elif spec.kind is Kind.ENUM:
            normalized.append(parse_enum(spec, value, at))
        else:
            if parsed_op in (Op.CONTAINS, Op.STARTS_WITH) and value == "":
                raise InvalidArgument(at, f"{parsed_op.value} needs a non-empty value")
            if spec.kind is Kind.SEARCH and len(value) < MIN_SEARCH_CHARS:
                raise InvalidArgument(
                    at, f"{field} searches need at least {MIN_SEARCH_CHARS} characters"
                )
            normalized.append(value)
    return Condition(field, spec.kind, parsed_op, tuple(normalized), context_key)


def parse_sort(order_by: str) -> Sort:
    parts = order_by.split() if order_by.strip() else DEFAULT_SORT.split()
    if len(parts) > 2:
        raise InvalidArgument("order_by", f"{order_by!r} is not '<field> [asc|desc]'")
    name = parts[0]
    if name not in SORTABLE:
        raise InvalidArgument(
            "order_by", f"cannot sort by {name!r}; valid fields: {', '.join(SORTABLE)}"
        )
    direction = parts[1].lower() if len(parts) == 2 else "asc"
    if direction not in ("asc", "desc"):
        raise InvalidArgument("order_by", f"direction {parts[1]!r} is not asc or desc")
    return Sort(name, FIELDS[name].kind, direction == "desc")


def coerce_page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def check_filter_count(count: int) -> None:
    if count > MAX_FILTERS:
        raise InvalidArgument("filters", f"at most {MAX_FILTERS} filter rules")

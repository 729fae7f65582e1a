"""What a page shows, as it travels in its URL: the tab, the filter rules, the sort, the
columns, and the page.

``/events?tab=entities&f=source:contains:alice&f=status:eq:failure&sort=occurred_at:asc
&cols=occurred_at,identifier,source&page=<token>&at=1000``

- ``tab``: one of ``TABS`` (auditctl's ``--tab`` names); the page shows that resource only.
- ``f``: a rule ``FIELD:OP:VALUE`` (repeatable; rules are ANDed). FIELD is a List filter
  field, OP one of ``OPS``; VALUE is everything after the second colon. Enum fields take
  several values separated by commas (any of them matches), as in auditctl.
- ``sort``: ``FIELD:asc`` or ``FIELD:desc`` (default ``occurred_at:desc``, newest first).
- ``cols``: the columns in order (column keys as auditctl's ``--columns``); default the tab's.
- ``page``: the service's page token of the page shown (empty: the newest); ``at``: how many
  entries come before it (only for the "1,001-2,000" label).

The columns, tabs and per-tab defaults are auditctl's (``clients.cli._columns``), so the
console and the command line show the same table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlencode

from clients import FILTER_FIELDS, Filter, InvalidArgument
from clients._values import filter_op, format_time
from clients.cli._columns import COLUMNS, TABS, Column, column, default_keys, header
from clients.cli._errors import UsageError
from clients.cli._query import parse_when

PAGE_SIZE = 1000  # the newest 1,000 entries, then page by page through the service
MAX_RULES = 30  # the service takes 32 rules; the tab is one more

TAB_LABELS: dict[str, str] = {
    "entities": "Entities",
    "blueprints": "Blueprints",
    "actions": "Actions",
    "automations": "Automations",
    "scorecards": "Scorecards",
    "runs": "Runs",
    "integrations": "Integrations",
    "secrets": "Secrets",
    "sign-ins": "Sign-ins",
}
MEMBER_TAB = "runs"  # members see their own runs and nothing else ("My runs")

TIME_FIELDS = ("occurred_at", "recorded_at")
ENUM_FIELDS = ("resource", "operation", "source_kind", "origin", "status")

# URL word -> FilterOp short name, in the order the operator menus list them.
OPS: dict[str, str] = {
    "eq": "EQUALS",
    "ne": "NOT_EQUALS",
    "contains": "CONTAINS",
    "starts": "STARTS_WITH",
    "gt": "GT",
    "gte": "GTE",
    "lt": "LT",
    "lte": "LTE",
}
_WORD = {name: word for word, name in OPS.items()}
_TEXT_LABELS = {
    "eq": "is",
    "ne": "is not",
    "contains": "contains",
    "starts": "starts with",
    "gt": ">",
    "gte": "≥",
    "lt": "<",
    "lte": "≤",
}
_TIME_LABELS = {
    "eq": "is",
    "ne": "is not",
    "gt": "after",
    "gte": "at or after",
    "lt": "before",
    "lte": "at or before",
}


class BadView(Exception):
    "A URL parameter the console cannot make sense of; the message says which and why."


def field_kind(field: str) -> str:
    "``time``, ``enum`` or ``text``: what decides the operators a field takes."
    if field in TIME_FIELDS:
        return "time"
    if field in ENUM_FIELDS:
        return "enum"
    return "text"


def ops_for(field: str) -> dict[str, str]:
    "The operators (URL word -> label) that apply to ``field``, as docs/filters.md lists them."
    kind = field_kind(field)
    if kind == "time":
        return dict(_TIME_LABELS)
    if kind == "enum":
        return {"eq": "is", "ne": "is not"}
    return dict(_TEXT_LABELS)


def field_label(field: str) -> str:
    "What a rule chip calls ``field``: its column header, or the field itself."
    for col in COLUMNS.values():
        if col.field == field:
            return col.header
    return field


@dataclass(frozen=True)
class Rule:
    "One filter rule of the URL."

    field: str
    op: str  # a key of OPS
    value: str

    @property
    def param(self) -> str:
        return f"{self.field}:{self.op}:{self.value}"

    @property
    def label(self) -> str:
        words = ops_for(self.field).get(self.op, self.op)
        return f"{field_label(self.field)} {words} {self.value}"

    def to_filter(self) -> Filter:
        if field_kind(self.field) == "enum":
            values = tuple(v.strip() for v in self.value.split(",") if v.strip())
            return Filter(self.field, OPS[self.op], values or ("",))
        return Filter(self.field, OPS[self.op], (self.value,))


def parse_rule(text: str) -> Rule:
    """``FIELD:OP:VALUE`` as a rule.

    :raises BadView: not in that shape, an unknown field, an operator that does not apply.
    """
    field, sep, rest = text.partition(":")
    op, sep2, value = rest.partition(":")
    if not sep or not sep2:
        raise BadView(f"filter {text!r}: write it as FIELD:OP:VALUE (e.g. source:contains:alice)")
    return make_rule(field, op, value)


def make_rule(field: str, op: str, value: str) -> Rule:
    """A rule from its parts; ``op`` as a URL word or any name ``clients`` accepts.

    :raises BadView: an unknown field, an operator that does not apply to it, an empty value.
    """
    field = field.strip()
    if field not in FILTER_FIELDS and not (
        field.startswith("context.") and len(field) > len("context.")
    ):
        valid = ", ".join([*FILTER_FIELDS, "context.KEY"])
        raise BadView(f"cannot filter on {field!r}; filter fields: {valid}")
    word = op.strip().lower()
    if word not in OPS:
        try:
            word = _WORD[filter_op(op)]
        except InvalidArgument:
            raise BadView(f"unknown operator {op!r}; use one of {', '.join(OPS)}") from None
    allowed = ops_for(field)
    if word not in allowed:
        raise BadView(
            f"{OPS[word]} does not apply to {field}; use one of "
            + ", ".join(OPS[w] for w in allowed)
        )
    if value == "":
        raise BadView(f"the {field_label(field)} rule needs a value")
    return Rule(field, word, value)


def time_value(text: str, utc_offset_minutes: int, now: datetime | None = None) -> str:
    """A time typed into a filter as RFC 3339 (UTC): a duration ago (``30m``, ``12h``, ``7d``,
    ``2w``), a date or a date and time in the browser's timezone (``utc_offset_minutes`` east
    of UTC), or RFC 3339 with an offset.

    :raises BadView: none of those.
    """
    tz = timezone(timedelta(minutes=utc_offset_minutes))
    stripped = text.strip()
    try:
        parsed: datetime | None = datetime.fromisoformat(stripped.replace("z", "Z"))
    except ValueError:
        parsed = None
    if parsed is not None:
        when = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)
    else:
        try:  # a duration ago, as auditctl's --since takes it
            when = parse_when(stripped, "value", (now or datetime.now(UTC)).astimezone(tz))
        except UsageError:
            raise BadView(
                f"{text!r} is not a time: use a duration (30m, 12h, 7d, 2w), a date"
                " (2026-01-31), a local time (2026-01-31T14:00) or RFC 3339"
                " (2026-01-31T14:00:00Z)"
            ) from None
    if when.microsecond:
        return format_time(when)
    return format_time(when).replace(".000000", "")  # 1999-12-31T18:30:00Z reads better


@dataclass(frozen=True)
class View:
    tab: str
    rules: tuple[Rule, ...] = ()
    sort_field: str = "occurred_at"
    sort_dir: str = "desc"
    cols: tuple[str, ...] | None = None  # None: the tab's defaults
    page: str = ""
    at: int = 0

    # -- reading --------------------------------------------------------------------------

    @classmethod
    def parse(cls, params: Mapping[str, str], rules: Sequence[str], default_tab: str) -> View:
        """The view of a query string (``rules``: every ``f`` value).

        :raises BadView:
        """
        tab = params.get("tab") or default_tab
        if tab not in TABS:
            raise BadView(f"unknown tab {tab!r}; tabs: {', '.join(TABS)}")
        if len(rules) > MAX_RULES:
            raise BadView(f"at most {MAX_RULES} filter rules")
        parsed = tuple(parse_rule(r) for r in rules)
        sort_field, sort_dir = "occurred_at", "desc"
        if params.get("sort"):
            sort_field, _, sort_dir = params["sort"].partition(":")
            sort_dir = (sort_dir or "asc").lower()
            if sort_dir not in ("asc", "desc"):
                raise BadView(f"sort {params['sort']!r}: the direction is asc or desc")
            if sort_field not in FILTER_FIELDS:
                raise BadView(f"cannot sort by {sort_field!r}; sort by one of {FILTER_FIELDS}")
        cols: tuple[str, ...] | None = None
        if params.get("cols"):
            keys = [k for k in params["cols"].split(",") if k.strip()]
            try:
                cols = tuple(dict.fromkeys(column(k).key for k in keys))
            except UsageError as exc:
                raise BadView(str(exc)) from None
        try:
            at = max(0, int(params.get("at") or 0))
        except ValueError:
            raise BadView("at: not a number") from None
        return cls(tab, parsed, sort_field, sort_dir, cols, params.get("page", ""), at)

    @property
    def label(self) -> str:
        return TAB_LABELS[self.tab]

    @property
    def default_keys(self) -> list[str]:
        return default_keys(self.tab)

    @property
    def column_keys(self) -> list[str]:
        return list(self.cols) if self.cols else self.default_keys

    def columns(self) -> list[Column]:
        return [column(k) for k in self.column_keys]

    def header(self, col: Column) -> str:
        return header(col, self.tab)

    def filters(self) -> list[Filter]:
        "The List rules: the user's (``filters[i]`` is rule i), then the tab's resource."
        return [
            *(r.to_filter() for r in self.rules),
            Filter("resource", "EQUALS", (TABS[self.tab],)),
        ]

    @property
    def order_by(self) -> str:
        return f"{self.sort_field} {self.sort_dir}"

    # -- writing --------------------------------------------------------------------------

    def params(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [("tab", self.tab)]
        out += [("f", r.param) for r in self.rules]
        if (self.sort_field, self.sort_dir) != ("occurred_at", "desc"):
            out.append(("sort", f"{self.sort_field}:{self.sort_dir}"))
        if self.cols:
            out.append(("cols", ",".join(self.cols)))
        if self.page:
            out += [("page", self.page), ("at", str(self.at))]
        return out

    def url(self) -> str:
        return "/events?" + urlencode(self.params())

    def first_page(self) -> View:
        return replace(self, page="", at=0)

    def with_rule(self, rule: Rule) -> View:
        return replace(self, rules=(*self.rules, rule), page="", at=0)

    def without_rule(self, index: int) -> View:
        rules = self.rules[:index] + self.rules[index + 1 :]
        return replace(self, rules=rules, page="", at=0)

    def without_rules(self) -> View:
        return replace(self, rules=(), page="", at=0)

    def sorted_by(self, field: str) -> View:
        "Sorted by ``field``: descending first for times, ascending for the rest; a second"
        " click on the same column turns the direction around."
        if field == self.sort_field:
            direction = "asc" if self.sort_dir == "desc" else "desc"
        else:
            direction = "desc" if field in TIME_FIELDS else "asc"
        return replace(self, sort_field=field, sort_dir=direction, page="", at=0)

    def next_page(self, token: str, shown: int) -> View:
        return replace(self, page=token, at=self.at + shown)

    def for_tab(self, tab: str) -> View:
        "Another tab, fresh: no rules, default sort, its own remembered columns."
        return View(tab)

    def run_url(self, run_id: str) -> str:
        "The Runs tab showing the entries of the run ``run_id``."
        return View("runs", (Rule("run_id", "eq", run_id),)).url()

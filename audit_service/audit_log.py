"""The service's domain logic, free of gRPC: record, list and diff, with access rules.

The servicer converts protobuf to models and calls this; this validates, applies the rules,
redacts SECRET snapshots and hands writes to the group-commit writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

from audit_service.diffs import diff_of
from audit_service.errors import (
    AuditError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from audit_service.ids import is_event_id
from audit_service.models import Diff, NewEvent, RecordOutcome, ResourceType, StoredEvent
from audit_service.page_tokens import PageTokens, query_digest
from audit_service.principals import Principal, Role
from audit_service.query import Condition, Cursor, Kind, Op, Query, Sort, sort_value
from audit_service.retention import RetentionPolicy
from audit_service.secrets_redaction import SecretFingerprinter
from audit_service.storage.base import Storage, StorageError
from audit_service.validation import validate
from audit_service.writer import GroupCommitWriter

WRITE_TIMEOUT_S = 120.0

Clock = Callable[[], int]


class AuditLog:
    def __init__(
        self,
        storage: Storage,
        writer: GroupCommitWriter,
        fingerprinter: SecretFingerprinter,
        page_tokens: PageTokens,
        retention: RetentionPolicy | None = None,
        clock: Clock = time.time_ns,
    ) -> None:
        self.storage = storage
        self._writer = writer
        self._fingerprinter = fingerprinter
        self._page_tokens = page_tokens
        self._retention = retention or RetentionPolicy()
        self._clock = clock

    def now(self) -> int:
        return self._clock()

    # -- Record ---------------------------------------------------------------------------

    def record(
        self,
        principal: Principal,
        events: Sequence[NewEvent | AuditError],
        *,
        depth_checked: bool = False,
    ) -> list[RecordOutcome | AuditError]:
        """Store every event that passes the rules, in one durable group; report each one.

        Items already AuditErrors (they failed conversion) are passed through in place.
        """
        return self.submit(principal, events, depth_checked=depth_checked).results()

    def submit(
        self,
        principal: Principal,
        events: Sequence[NewEvent | AuditError],
        *,
        depth_checked: bool = False,
    ) -> PendingRecord:
        """Check the events and queue those that pass for the writer, without waiting for
        their commit (``PendingRecord.results`` waits). Several submits from one caller are
        committed in the order they were made. ``depth_checked``: the events come from
        ``convert``, which checked their snapshots' nesting."""
        self.require_recorder(principal)
        now = self._clock()
        results: list[NewEvent | RecordOutcome | AuditError] = []
        for event in events:
            if isinstance(event, AuditError):
                results.append(event)
                continue
            try:
                results.append(self._admit(principal, event, now, depth_checked))
            except AuditError as exc:
                results.append(exc)
        accepted = [item for item in results if isinstance(item, NewEvent)]
        future = self._writer.submit(accepted) if accepted else None
        return PendingRecord(results, future)

    def _admit(
        self, principal: Principal, event: NewEvent, now: int, depth_checked: bool = False
    ) -> NewEvent:
        if principal.role is Role.RECORDER and event.origin not in principal.origins:
            raise PermissionDenied(
                f"{principal.id} may not record events with origin {event.origin.value}"
            )
        cutoff = self._retention.cutoff(event.resource, now)
        validate(event, now, oldest_allowed_ns=cutoff, depth_checked=depth_checked)
        # A copy only when something changes: the servicer converts events with the caller
        # as recorded_by already (a copy per event cost more than the rest of admitting it).
        if event.recorded_by != principal.id:
            event = replace(event, recorded_by=principal.id)
        if event.resource is ResourceType.SECRET:
            event = replace(
                event,
                before=None if event.before is None else self._fingerprinter.redact(event.before),
                after=None if event.after is None else self._fingerprinter.redact(event.after),
                json_text=None,  # the redacted snapshots are encoded by storage
            )
        return event

    @staticmethod
    def require_recorder(principal: Principal) -> None:
        if principal.role not in (Role.ADMIN, Role.RECORDER):
            raise PermissionDenied(f"{principal.id} ({principal.role.value}) may not record")

    # -- List and GetDiff -----------------------------------------------------------------

    def list(self, principal: Principal, query: Query, page_token: str) -> Page:
        query = replace(query, conditions=query.conditions + _visibility(principal))
        digest = query_digest(query.conditions, query.sort)
        if page_token:
            query = replace(query, after=self._page_tokens.decode(page_token, digest))
        try:
            events, cursor = self.storage.list_events(query)
        except StorageError as exc:
            raise Unavailable(f"storage cannot answer now: {exc}; retry") from exc
        token = "" if cursor is None else self._page_tokens.encode(cursor, digest)
        return Page(events, token, query.sort, digest, self._page_tokens)

    def get_diff(self, principal: Principal, event_id: str) -> Diff:
        if not is_event_id(event_id):
            raise InvalidArgument("id", f"{event_id[:64]!r} is not an event id (a UUIDv7)")
        _require_reader(principal)
        try:
            event = self.storage.get_event(event_id)
        except StorageError as exc:
            raise Unavailable(f"storage cannot answer now: {exc}; retry") from exc
        if event is None or not _may_see(principal, event):
            raise NotFound(f"no event with id {event_id}")
        return diff_of(event)


class PendingRecord:
    "Events handed to the writer: ``results`` waits until they are durable."

    def __init__(
        self,
        results: list[NewEvent | RecordOutcome | AuditError],
        future: Future[list[RecordOutcome]] | None,
    ) -> None:
        self._results = results
        self._future = future

    def results(self) -> list[RecordOutcome | AuditError]:
        """One outcome or error per submitted event, in order, once the accepted ones are
        durable.

        :raises Unavailable: the writer did not commit within ``WRITE_TIMEOUT_S``, or is
            shutting down.
        :raises StorageError: the commit failed.
        """
        results = self._results
        if self._future is not None:
            try:
                outcomes = iter(self._future.result(timeout=WRITE_TIMEOUT_S))
            except TimeoutError:
                raise Unavailable(
                    f"storage did not commit within {WRITE_TIMEOUT_S:.0f} s; retry"
                ) from None
            results = [next(outcomes) if isinstance(r, NewEvent) else r for r in results]
        return [r for r in results if not isinstance(r, NewEvent)]


@dataclass(frozen=True, slots=True)
class Page:
    events: list[StoredEvent]
    next_page_token: str
    sort: Sort
    _digest: str
    _tokens: PageTokens

    def token_after(self, index: int) -> str:
        "A page token that continues right after ``events[index]`` (to cut a page short)."
        event = self.events[index]
        return self._tokens.encode(Cursor(sort_value(event, self.sort), event.id), self._digest)


def _require_reader(principal: Principal) -> None:
    if principal.role is Role.RECORDER:
        raise PermissionDenied(f"{principal.id} (recorder) may only record events")


def _visibility(principal: Principal) -> tuple[Condition, ...]:
    "Conditions ANDed to every query of ``principal``: a member sees only its own runs."
    _require_reader(principal)
    if principal.role is Role.MEMBER:
        return (
            Condition("resource", Kind.ENUM, Op.EQUALS, (ResourceType.RUN.value,)),
            Condition("source_id", Kind.TEXT, Op.EQUALS, (principal.id,)),
        )
    return ()


def _may_see(principal: Principal, event: StoredEvent) -> bool:
    if principal.role is Role.MEMBER:
        return event.resource is ResourceType.RUN and event.source.id == principal.id
    return True

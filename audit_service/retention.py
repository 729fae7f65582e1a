"""Retention: events older than their resource type's window are deleted.

Defaults: 90 days, 30 for SIGN_IN (account access). A sweep deletes in bounded batches, each
its own transaction, sized to take about 50 ms: the database's write lock is never held long
(in SQLite, Records commit to the intake log and never wait for a delete; what the applier
has to write waits for at most one batch). The sweep takes ``now`` as a parameter;
APScheduler runs it at start and then on an interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from audit_service.models import ResourceType
from audit_service.storage.base import Storage, StorageError

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 1_000_000_000
DEFAULT_DAYS = 90
DEFAULT_OVERRIDES: Mapping[ResourceType, int] = {ResourceType.SIGN_IN: 30}
DEFAULT_BATCH = 1000  # the most events one delete transaction takes
# Each delete transaction is sized to take about this long: writes of the events tables (and,
# in SQLite, reads waiting for the latest events) arriving meanwhile wait for it. The size
# adapts to what the last transaction took, from FIRST_BATCH events up to the batch size.
TARGET_BATCH_S = 0.05
FIRST_BATCH = 100
JOB_ID = "retention-sweep"


class RetentionConfigError(ValueError):
    "A retention setting cannot be used; the message says which and why."


@dataclass(frozen=True)
class RetentionPolicy:
    default_days: int = DEFAULT_DAYS
    overrides: Mapping[ResourceType, int] = field(default_factory=lambda: dict(DEFAULT_OVERRIDES))

    def days_for(self, resource: ResourceType) -> int:
        return self.overrides.get(resource, self.default_days)

    def cutoff(self, resource: ResourceType, now_ns: int) -> int:
        "Events of ``resource`` that occurred before this instant are past retention."
        return now_ns - self.days_for(resource) * DAY_NS

    @classmethod
    def from_settings(cls, default_days: int, overrides: str) -> RetentionPolicy:
        """``overrides`` as ``"SIGN_IN=30,SECRET=365"``. :raises RetentionConfigError:"""
        if default_days < 1:
            raise RetentionConfigError(f"retention_days must be at least 1, not {default_days}")
        parsed: dict[ResourceType, int] = {}
        for part in filter(None, (p.strip() for p in overrides.split(","))):
            name, sep, days = part.partition("=")
            if not sep:
                raise RetentionConfigError(f"retention override {part!r} is not TYPE=DAYS")
            key = name.strip().upper().removeprefix("RESOURCE_TYPE_")
            if key not in ResourceType.__members__:
                valid = ", ".join(ResourceType.__members__)
                raise RetentionConfigError(f"retention override for unknown type {name!r}; {valid}")
            try:
                parsed[ResourceType(key)] = int(days)
            except ValueError:
                raise RetentionConfigError(
                    f"retention days for {key}: {days!r} is not a number"
                ) from None
            if parsed[ResourceType(key)] < 1:
                raise RetentionConfigError(f"retention days for {key} must be at least 1")
        return cls(default_days, parsed)


def sweep(
    storage: Storage, policy: RetentionPolicy, now_ns: int, batch_size: int = DEFAULT_BATCH
) -> dict[ResourceType, int] | None:
    """Delete every event past retention as of ``now_ns``; return the counts per type.

    Returns None, having done nothing, when another process sharing the database is sweeping
    (``Storage.sweep_lock``). Whole expired units go first (``Storage.drop_expired``: monthly
    partitions in PostgreSQL), then the rest in batches, each its own transaction.
    """
    cutoffs = {resource: policy.cutoff(resource, now_ns) for resource in ResourceType}
    with storage.sweep_lock() as ours:
        if not ours:
            return None
        removed = storage.drop_expired(cutoffs)
        limit = min(FIRST_BATCH, batch_size)
        for resource, cutoff in cutoffs.items():
            total = 0
            while True:
                deleted, seconds = _delete_batch(resource, cutoff, limit, storage)
                total += deleted
                if deleted < limit:
                    break
                limit = _next_limit(limit, seconds, batch_size)
            if total:
                removed[resource] = removed.get(resource, 0) + total
    return removed


def _delete_batch(
    resource: ResourceType, cutoff: int, limit: int, storage: Storage
) -> tuple[int, float]:
    "One delete transaction: how many it deleted, in how long."
    started = time.monotonic()
    deleted = storage.delete_expired(resource, cutoff, limit)
    seconds = time.monotonic() - started
    name = resource.value
    log.debug("deleted %d of %d %s events in %.1f ms", deleted, limit, name, seconds * 1e3)
    return deleted, seconds


def _next_limit(limit: int, seconds: float, most: int) -> int:
    "The next batch's size: toward TARGET_BATCH_S, at most doubling or halving at a time."
    scaled = limit * TARGET_BATCH_S / max(seconds, 1e-6)
    return max(1, min(most, int(max(limit / 2, min(limit * 2, scaled)))))


class RetentionScheduler:
    """Runs ``sweep`` in the background: once at start, then every ``interval_minutes``."""

    def __init__(
        self,
        storage: Storage,
        policy: RetentionPolicy,
        interval_minutes: float,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._storage = storage
        self.policy = policy
        self._clock = clock
        self.sweeps = 0
        self.skipped = 0  # sweeps left to another process that was sweeping
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.scheduler.add_job(
            self.run_once,
            IntervalTrigger(minutes=interval_minutes, timezone=UTC),
            id=JOB_ID,
            name="retention sweep",
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
        )

    def start(self) -> None:
        self.scheduler.start()

    def run_once(self) -> dict[ResourceType, int]:
        started = time.monotonic()
        try:
            removed = sweep(self._storage, self.policy, self._clock())
        except StorageError as exc:
            log.warning("retention sweep failed (the next one retries): %s", exc)
            return {}
        if removed is None:
            self.skipped += 1
            log.info("retention sweep skipped: another process sharing the database is sweeping")
            return {}
        self.sweeps += 1
        summary = ", ".join(f"{r.value}: {n}" for r, n in removed.items()) or "nothing expired"
        log.info(
            "retention sweep removed %d events (%s) in %.2f s",
            sum(removed.values()), summary, time.monotonic() - started,
        )  # fmt: skip
        return removed

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=False)

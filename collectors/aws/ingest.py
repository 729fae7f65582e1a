"""CloudTrail records in, AuditEvents spooled: shared by the queue readers and the log files."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from collectors.aws import history
from collectors.aws.mapping import Mapped, Mapper
from collectors.runtime import Runtime, SpoolTransaction


class Ingest:
    def __init__(self, runtime: Runtime, mapper: Mapper) -> None:
        self.runtime = runtime
        self.mapper = mapper
        self.log = runtime.logger("ingest")

    def map(self, records: Iterable[Any]) -> tuple[list[Mapped], dict[str, int]]:
        "The records that become events, and how many were ignored for each reason."
        mapped: list[Mapped] = []
        ignored: dict[str, int] = {}
        for record in records:
            try:
                result = self.mapper.map(record)
            except Exception:  # a record shaped in a way nobody foresaw: never the whole batch
                self.log.exception("a CloudTrail record could not be mapped; skipped")
                result = "malformed"
            if isinstance(result, str):
                ignored[result] = ignored.get(result, 0) + 1
            else:
                mapped.append(result)
        return mapped, ignored

    def __call__(
        self,
        records: Iterable[Any],
        also: Callable[[SpoolTransaction], None] | None = None,
    ) -> int:
        """Map ``records`` and spool what they say in one transaction, with ``also(tx)`` (dead
        letters, a checkpoint) in it too. Returns the events spooled.

        :raises SpoolFull: nothing was spooled (``also`` neither).
        """
        mapped, ignored = self.map(records)
        with self.runtime.spool.transaction() as tx:
            for event in history.resolve_all(tx, mapped):
                tx.add(event)
            if also is not None:
                also(tx)
        for reason, count in ignored.items():
            self.runtime.count(f"ignored_{reason}", count)
        self.runtime.count("mapped", len(mapped))
        return len(mapped)

"""Audit events in, AuditEvents spooled: shared by the webhook receiver and the log follower."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from collectors.kubernetes import history
from collectors.kubernetes.mapping import Mapped, Mapper
from collectors.runtime import Runtime, SpoolTransaction


class Ingest:
    def __init__(self, runtime: Runtime, mapper: Mapper) -> None:
        self.runtime = runtime
        self.mapper = mapper
        self.log = runtime.logger("ingest")

    def __call__(
        self,
        items: Iterable[Any],
        also: Callable[[SpoolTransaction], None] | None = None,
    ) -> int:
        """Map ``items`` (parsed audit events) and spool what they say in one transaction,
        with ``also(tx)`` (a follower's position) in it too. Returns the events spooled.

        :raises SpoolFull: nothing was spooled (``also`` neither).
        """
        mapped: list[Mapped] = []
        ignored: dict[str, int] = {}
        for item in items:
            result = self.mapper.map(item)
            if isinstance(result, str):
                ignored[result] = ignored.get(result, 0) + 1
            else:
                mapped.append(result)
        with self.runtime.spool.transaction() as tx:
            for resolved in history.resolve_batch(tx, mapped):
                # Serialized as it is built: the snapshots are never parsed into the message.
                tx.add_serialized(resolved.event.idempotency_key, resolved.serialized())
            if also is not None:
                also(tx)
        for reason, count in ignored.items():
            self.runtime.count(f"ignored_{reason}", count)
        if ignored.get("malformed"):
            self.log.warning(
                "audit events without auditID or stage skipped", events=ignored["malformed"]
            )
        self.runtime.count("mapped", len(mapped))
        return len(mapped)

"""The last state this collector recorded per resource, kept in the spool's state table: the
``before`` of the next change to it.

Kept per ``<blueprint>|<identifier>`` with the record's eventTime beside it, so that

- an UPDATE or DELETE gets as ``before`` the ``after`` this collector last recorded for the
  same resource (what the previous successful change asked for and AWS answered);
- a record older than the one recorded (SQS does not keep order; log files overlap) neither
  gets the newer state as its ``before`` nor replaces it;
- a DELETE forgets the resource; a CREATE starts it afresh (no ``before``);
- a failed change, a read and a sign-in leave it as it was.

States are serialized ``google.protobuf.Struct``, already redacted. A batch is resolved with
one read of the states it needs and one write of what changed, inside the transaction that
spools its events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clients import pb
from collectors.aws.mapping import Mapped
from collectors.runtime.limits import OMITTED_KEY, fit_event
from collectors.runtime.spool import SpoolTransaction
from collectors.runtime.state_cache import StateCache

SCOPE = "aws.resources"


@dataclass(frozen=True)
class Seen:
    moment: int  # eventTime, nanoseconds since the epoch
    snapshot: bytes  # a serialized google.protobuf.Struct

    def encode(self) -> bytes:
        return f"{self.moment}\n".encode() + self.snapshot

    @classmethod
    def decode(cls, data: bytes) -> Seen:
        moment, snapshot = data.split(b"\n", 1)
        return cls(int(moment), snapshot)


class History:
    "The states recorded, read for one batch and written back with it."

    def __init__(self, tx: SpoolTransaction, batch: Sequence[Mapped]) -> None:
        keys = [m.resource_key for m in batch if m.resource_key is not None and not m.failed]
        self._states = StateCache(tx, SCOPE, keys, Seen.decode, Seen.encode)

    def resolve(self, mapped: Mapped) -> pb.AuditEvent:
        "``mapped.event`` with its snapshots; the state recorded updated; fitted to the limits."
        event = mapped.event
        if mapped.after_struct is not None:
            event.after.MergeFromString(mapped.after_struct)
        key = mapped.resource_key
        if mapped.failed or mapped.operation == "READ" or key is None:
            return fit_event(event)
        seen = self._states.get(key)
        if seen is not None and mapped.moment < seen.moment:
            if mapped.operation != "CREATE":
                event.context[OMITTED_KEY] = "before: arrived after a newer change to the resource"
            return fit_event(event)
        if seen is not None and mapped.operation in ("UPDATE", "DELETE"):
            event.before.MergeFromString(seen.snapshot)
        if mapped.operation == "DELETE":
            if seen is not None:
                self._states.put(key, None)
        elif mapped.after_struct is not None:
            self._states.put(key, Seen(mapped.moment, mapped.after_struct))
        return fit_event(event)

    def save(self) -> None:
        "Write what changed (inside the same transaction)."
        self._states.save()


def resolve_all(tx: SpoolTransaction, batch: Sequence[Mapped]) -> list[pb.AuditEvent]:
    "Every event of ``batch`` with its snapshots, in order; the states saved in ``tx``."
    history = History(tx, batch)
    events = [history.resolve(mapped) for mapped in batch]
    history.save()
    return events

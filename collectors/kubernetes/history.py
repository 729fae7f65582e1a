"""The last object this collector saw, per object, kept in the spool's state table: the
``before`` of the next change to it.

Kept per ``<apiGroup>/<resource>/<namespace>/<name>`` with the object's uid and
resourceVersion beside it, so that

- an object deleted and created again under the same name (a new uid) starts afresh;
- an event that arrives after a newer one for the same object (concurrent webhook batches)
  neither gets the newer object as its ``before`` nor replaces it;
- a DELETE's ``before`` is the object as last seen, its ``after`` absent (the diff empties it).

Objects are stored as serialized ``google.protobuf.Struct``, already cleaned and redacted (no
Secret value ever reaches the disk). A batch is resolved with one read of the state it needs
and one write of what changed, inside the transaction that spools its events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clients import pb
from collectors.kubernetes.mapping import Mapped
from collectors.runtime.limits import OMITTED_KEY, fit_event
from collectors.runtime.spool import SpoolTransaction
from collectors.runtime.state_cache import StateCache

SCOPE = "kubernetes.objects"


@dataclass(frozen=True)
class Seen:
    uid: str
    resource_version: int | None
    snapshot: bytes  # a serialized google.protobuf.Struct

    def encode(self) -> bytes:
        version = "" if self.resource_version is None else str(self.resource_version)
        return f"{self.uid}\n{version}\n".encode() + self.snapshot

    @classmethod
    def decode(cls, data: bytes) -> Seen:
        uid, version, snapshot = data.split(b"\n", 2)
        return cls(uid.decode(), int(version) if version else None, snapshot)


def _older(new: int | None, seen: int | None) -> bool:
    "Whether the new object is not newer than the one seen (when both versions are known)."
    return new is not None and seen is not None and new <= seen


def _same_object(mapped: Mapped, seen: Seen) -> bool:
    return not mapped.uid or not seen.uid or mapped.uid == seen.uid


class History:
    "The objects seen, read for one batch and written back with it."

    def __init__(self, tx: SpoolTransaction, batch: Sequence[Mapped]) -> None:
        keys = [m.object_key for m in batch if m.object_key is not None and not m.failed]
        self._states = StateCache(tx, SCOPE, keys, Seen.decode, Seen.encode)

    def resolve(self, mapped: Mapped) -> pb.AuditEvent:
        """``mapped.event`` with its snapshots, the last-seen object updated; fitted under the
        service's limits."""
        event = mapped.event
        key = mapped.object_key
        if mapped.failed or mapped.operation == "READ" or key is None:
            return fit_event(event)  # a refused change, a read, or not one object
        seen = self._states.get(key)
        if mapped.operation == "DELETE":
            if seen is not None and _same_object(mapped, seen):
                event.before.MergeFromString(seen.snapshot)
            elif mapped.after_struct is not None:
                event.before.MergeFromString(mapped.after_struct)
            if seen is not None:
                self._states.put(key, None)
            return fit_event(event)
        if mapped.after_struct is None:
            return fit_event(event)  # no object in the event (Metadata level): no snapshots
        if seen is not None and _same_object(mapped, seen):
            if _older(mapped.resource_version, seen.resource_version):
                # A newer object was seen already (keep it); this change's before is unknown.
                if mapped.operation == "UPDATE":
                    event.context[OMITTED_KEY] = "arrived after a newer change to the object"
                    return fit_event(event)
                event.after.MergeFromString(mapped.after_struct)
                return fit_event(event)
            if mapped.operation == "UPDATE":
                event.before.MergeFromString(seen.snapshot)
        event.after.MergeFromString(mapped.after_struct)
        self._states.put(key, Seen(mapped.uid, mapped.resource_version, mapped.after_struct))
        return fit_event(event)

    def save(self) -> None:
        "Write what changed (inside the same transaction)."
        self._states.save()


def resolve_all(tx: SpoolTransaction, batch: Sequence[Mapped]) -> list[pb.AuditEvent]:
    "Every event of ``batch`` with its snapshots, in order; the history saved in ``tx``."
    history = History(tx, batch)
    events = [history.resolve(mapped) for mapped in batch]
    history.save()
    return events

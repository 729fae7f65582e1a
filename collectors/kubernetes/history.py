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
from collectors.runtime.limits import OMITTED_KEY, fit_event, fit_serialized
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


@dataclass(frozen=True, slots=True)
class Resolved:
    "One event and its snapshots (serialized Structs), not yet fitted under the limits."

    event: pb.AuditEvent  # without snapshots
    before: bytes | None = None
    after: bytes | None = None

    def message(self) -> pb.AuditEvent:
        "The event with its snapshots, fitted (``fit_event``)."
        event = self.event
        if self.before is not None:
            event.before.MergeFromString(self.before)
        if self.after is not None:
            event.after.MergeFromString(self.after)
        return fit_event(event)

    def serialized(self) -> bytes:
        """The same message serialized, without parsing the snapshots into it
        (``fit_serialized``)."""
        return fit_serialized(self.event, self.before, self.after)


class History:
    "The objects seen, read for one batch and written back with it."

    def __init__(self, tx: SpoolTransaction, batch: Sequence[Mapped]) -> None:
        keys = [m.object_key for m in batch if m.object_key is not None and not m.failed]
        self._states = StateCache(tx, SCOPE, keys, Seen.decode, Seen.encode)

    def resolve(self, mapped: Mapped) -> Resolved:
        "``mapped.event`` with its snapshots; the last-seen object updated."
        event = mapped.event
        key = mapped.object_key
        if mapped.failed or mapped.operation == "READ" or key is None:
            return Resolved(event)  # a refused change, a read, or not one object
        seen = self._states.get(key)
        if mapped.operation == "DELETE":
            before = None
            if seen is not None and _same_object(mapped, seen):
                before = seen.snapshot
            elif mapped.after_struct is not None:
                before = mapped.after_struct
            if seen is not None:
                self._states.put(key, None)
            return Resolved(event, before=before)
        after = mapped.after_struct
        if after is None:
            return Resolved(event)  # no object in the event (Metadata level): no snapshots
        before = None
        if seen is not None and _same_object(mapped, seen):
            if _older(mapped.resource_version, seen.resource_version):
                # A newer object was seen already (keep it); this change's before is unknown.
                if mapped.operation == "UPDATE":
                    event.context[OMITTED_KEY] = "arrived after a newer change to the object"
                    return Resolved(event)
                return Resolved(event, after=after)
            if mapped.operation == "UPDATE":
                before = seen.snapshot
        self._states.put(key, Seen(mapped.uid, mapped.resource_version, after))
        return Resolved(event, before, after)

    def save(self) -> None:
        "Write what changed (inside the same transaction)."
        self._states.save()


def resolve_batch(tx: SpoolTransaction, batch: Sequence[Mapped]) -> list[Resolved]:
    "Every event of ``batch`` with its snapshots, in order; the history saved in ``tx``."
    history = History(tx, batch)
    resolved = [history.resolve(mapped) for mapped in batch]
    history.save()
    return resolved


def resolve_all(tx: SpoolTransaction, batch: Sequence[Mapped]) -> list[pb.AuditEvent]:
    "Every event of ``batch`` with its snapshots, fitted, in order; the history saved in ``tx``."
    return [resolved.message() for resolved in resolve_batch(tx, batch)]

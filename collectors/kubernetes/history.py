"""The last object this collector saw, per object, kept in the spool's state table: the
``before`` of the next change to it.

Kept per ``<apiGroup>/<resource>/<namespace>/<name>`` with the object's uid and
resourceVersion beside it, so that

- an object deleted and created again under the same name (a new uid) starts afresh;
- an event that arrives after a newer one for the same object (concurrent webhook batches)
  neither gets the newer object as its ``before`` nor replaces it;
- a DELETE's ``before`` is the object as last seen, its ``after`` absent (the diff empties it).

Stored compressed, already cleaned and redacted (no Secret value ever reaches the disk).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from clients import pb
from collectors.kubernetes.mapping import Mapped
from collectors.runtime.limits import OMITTED_KEY, fit_event
from collectors.runtime.spool import SpoolTransaction

SCOPE = "kubernetes.objects"


@dataclass(frozen=True)
class Seen:
    uid: str
    resource_version: int | None
    snapshot: bytes  # a serialized google.protobuf.Struct

    def encode(self) -> bytes:
        version = "" if self.resource_version is None else str(self.resource_version)
        return f"{self.uid}\n{version}\n".encode() + zlib.compress(self.snapshot, 1)

    @classmethod
    def decode(cls, data: bytes) -> Seen:
        uid, version, packed = data.split(b"\n", 2)
        return cls(
            uid.decode(),
            int(version) if version else None,
            zlib.decompress(packed),
        )


def _older(new: int | None, seen: int | None) -> bool:
    "Whether the new object is not newer than the one seen (when both versions are known)."
    return new is not None and seen is not None and new <= seen


def _same_object(mapped: Mapped, seen: Seen) -> bool:
    return not mapped.uid or not seen.uid or mapped.uid == seen.uid


def resolve(tx: SpoolTransaction, mapped: Mapped) -> pb.AuditEvent:
    """``mapped.event`` with its snapshots, the last-seen object updated; fitted under the
    service's limits."""
    event = mapped.event
    key = mapped.object_key
    if mapped.failed or mapped.operation == "READ":
        return fit_event(event)
    if key is None:  # not one object (deletecollection)
        return fit_event(event)
    raw = tx.get_state(SCOPE, key)
    seen = Seen.decode(raw) if raw is not None else None
    if mapped.operation == "DELETE":
        if seen is not None and _same_object(mapped, seen):
            event.before.ParseFromString(seen.snapshot)
        elif mapped.after is not None:
            event.before.update(mapped.after)
        if seen is not None:
            tx.delete_state(SCOPE, key)
        return fit_event(event)
    if mapped.after is None:
        return fit_event(event)  # no object in the event (Metadata level): no snapshots
    event.after.update(mapped.after)
    if seen is not None and _same_object(mapped, seen):
        if _older(mapped.resource_version, seen.resource_version):
            # A newer object was seen already (keep it); this change's before is unknown.
            if mapped.operation == "UPDATE":
                event.ClearField("after")
                event.context[OMITTED_KEY] = "arrived after a newer change to the object"
            return fit_event(event)
        if mapped.operation == "UPDATE":
            event.before.ParseFromString(seen.snapshot)
    tx.set_state(
        SCOPE,
        key,
        Seen(mapped.uid, mapped.resource_version, event.after.SerializeToString()).encode(),
    )
    return fit_event(event)

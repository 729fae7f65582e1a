"""A batch's view of one scope of the spool's state table: read once, written back once.

Collectors that remember something per object (the last snapshot, for the next change's
``before``) resolve a whole batch against it: one read of the entries the batch needs, changes
kept in memory while the batch is mapped, one write of what changed, all inside the spool
transaction that stores the batch's events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from collectors.runtime.spool import SpoolTransaction

T = TypeVar("T")


class StateCache(Generic[T]):
    def __init__(
        self,
        tx: SpoolTransaction,
        scope: str,
        keys: Iterable[str],
        decode: Callable[[bytes], T],
        encode: Callable[[T], bytes],
    ) -> None:
        self._tx = tx
        self._scope = scope
        self._encode = encode
        self._values: dict[str, T | None] = {
            key: decode(value) for key, value in tx.get_states(scope, keys).items()
        }
        self._changed: dict[str, T | None] = {}

    def get(self, key: str) -> T | None:
        return self._values.get(key)

    def put(self, key: str, value: T | None) -> None:
        "Set ``key`` (None forgets it); written by ``save``."
        self._values[key] = value
        self._changed[key] = value

    def save(self) -> None:
        "Write what changed, inside the transaction the cache was read in."
        kept = [(k, self._encode(v)) for k, v in self._changed.items() if v is not None]
        gone = [k for k, v in self._changed.items() if v is None]
        if kept:
            self._tx.set_states(self._scope, kept)
        if gone:
            self._tx.delete_states(self._scope, gone)
        self._changed.clear()

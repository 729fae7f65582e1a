"""Counters a collector keeps since it started, shown by ``/stats``."""

from __future__ import annotations

import threading
from collections import Counter

# The runtime's own counters, in the order /stats shows them (docs/collectors.md explains each).
RUNTIME_COUNTERS = (
    "received",  # events collectors handed to the spool (before de-duplication in the spool)
    "delivered",  # events the service acknowledged as stored
    "duplicates",  # of those, events the service already had (same idempotency key)
    "retried",  # events sent again after a failed attempt (the service down, a timeout)
    "dead_lettered",  # events the service refused; moved to the dead-letter table
    "rejected_full",  # events refused because the spool was full (503 / follower paused)
)


class Stats:
    "Thread-safe named counters; names with a dot (``kubernetes.ignored``) belong to a collector."

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(RUNTIME_COUNTERS, 0))

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

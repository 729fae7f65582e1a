"""How each source is doing, for ``/stats`` and the logs: failures are logged once, then at
most every ``LOG_EVERY`` seconds, and once more when reading works again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from collectors.runtime import FieldLogger, Runtime, SpoolFull

LOG_EVERY = 30.0


def describe(exc: BaseException) -> str:
    "An AWS error in one line: ``AccessDenied: Access Denied`` (never a credential)."
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class SourceStatus:
    def __init__(self, name: str, what: str, log: FieldLogger) -> None:
        self.name = name
        self.what = what  # the queue URL, s3://bucket/prefix
        self._log = log
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._failing_since: float | None = None
        self._next_log = 0.0

    def ok(self) -> None:
        with self._lock:
            now = time.time()
            self.last_success = now
            if self._failing_since is not None:
                self._log.info(
                    "reading again",
                    source=self.name,
                    after_seconds=round(now - self._failing_since, 1),
                )
                self._failing_since = None

    def failed(self, action: str, exc: BaseException) -> None:
        "A failure that will be retried."
        with self._lock:
            now = time.time()
            self.last_error = f"{action}: {describe(exc)}"
            if self._failing_since is None:
                self._failing_since = now
            if now >= self._next_log:
                self._log.warning(
                    "reading failed; will retry", source=self.name, error=self.last_error
                )
                self._next_log = now + LOG_EVERY

    def document(self) -> dict[str, Any]:
        with self._lock:
            return {
                "reads": self.what,
                "last_success": self.last_success,
                "last_error": self.last_error,
                "failing": self._failing_since is not None,
            }


class Backoff:
    "Waits between retries: from ``first`` doubling to ``cap``; reset by a success."

    def __init__(self, first: float, cap: float = 30.0) -> None:
        self.first = max(first, 0.05)
        self.cap = max(cap, self.first)
        self._next = self.first

    def next(self) -> float:
        wait, self._next = self._next, min(self._next * 2, self.cap)
        return wait

    def reset(self) -> None:
        self._next = self.first


def spool_when_room(
    runtime: Runtime,
    stop: threading.Event,
    write: Callable[[], object],
    events: int,
    wait: float = 1.0,
) -> bool:
    """Call ``write()`` (which spools ``events`` events) until the spool takes it: True; False
    when the collector stops first (nothing was written)."""
    while True:
        try:
            write()
        except SpoolFull:
            runtime.count("spool_full_pauses")
            if stop.is_set():
                return False
            runtime.spool.wait_for_room(max(events, 1), timeout=wait)
            continue
        return True

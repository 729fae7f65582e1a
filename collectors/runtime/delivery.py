"""The sender: a thread that streams spooled events to the service and settles the spool.

Each round streams the oldest events over one RecordStream (``AuditClient.record_many``,
``window`` batches of ``batch_size`` in flight), reading the spool as the stream asks for more,
so events spooled meanwhile join the round, up to ``round_events``. Then, in one spool
transaction:

- removes every event the service acknowledged (stored, or a duplicate of one it had);
- moves to the dead-letter table every event it refused for good: invalid, not permitted for
  this token's origins, too large (the reason is logged and counted);
- keeps the rest for the next round (an error the service may not repeat).

While the service is unreachable (or any whole-stream failure) nothing is removed: the round
is tried again after an exponential backoff with jitter, reset by the first success.
Events wait at most ``linger`` seconds for a fuller batch. Idempotency keys make a resend after
a crash or a lost acknowledgement store nothing twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from clients import (
    AuditClient,
    AuditClientError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
)
from collectors.runtime.logs import get_logger
from collectors.runtime.spool import Spool, SpooledEvent
from collectors.runtime.stats import Stats

MAX_BATCH = 500  # the most events one RecordStream batch carries

log = get_logger("delivery")

# Refusals that sending the same event again cannot change: dead-letter at once.
PERMANENT_ERRORS: tuple[type[AuditClientError], ...] = (
    InvalidArgument,
    TooLarge,
    PermissionDenied,
    NotFound,
)


@dataclass(frozen=True, kw_only=True)
class DeliverySettings:
    "How the sender batches, waits and retries."

    batch_size: int = MAX_BATCH
    linger: float = 0.2  # seconds an event may wait for a fuller batch
    window: int = 4  # batches in flight on one stream
    round_events: int = 10_000  # most events one stream carries before the spool is settled
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    max_attempts: int = 10  # per-event errors that are not refusals, before dead-lettering
    stream_timeout: float = 120.0  # seconds one round's stream may take

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH}")
        if self.window < 1 or self.max_attempts < 1 or self.round_events < 1:
            raise ValueError("window, round size and max attempts must be at least 1")


class Backoff:
    """Exponential backoff with jitter: the n-th wait is uniform in ``[cap/2, cap]`` with
    ``cap = min(maximum, initial * 2**n)`` (so many collectors coming back do not knock in
    step, and none spins); ``reset()`` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        cap = min(self.maximum, self.initial * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return random.uniform(cap / 2, cap)  # noqa: S311 (jitter, not a secret)

    def reset(self) -> None:
        self.failures = 0


ClientFactory = Callable[[], AuditClient]


class Delivery:
    """Streams ``spool`` to the service through clients made by ``connect``.

    ``connect`` is called for the first round and again after the service refused the token
    (so a rotated token file is picked up).
    """

    def __init__(
        self,
        spool: Spool,
        connect: ClientFactory,
        stats: Stats,
        settings: DeliverySettings | None = None,
    ) -> None:
        self.spool = spool
        self.settings = settings or DeliverySettings()
        self._connect = connect
        self._stats = stats
        self._client: AuditClient | None = None
        self._client_lock = threading.Lock()
        self._backoff = Backoff(self.settings.initial_backoff, self.settings.max_backoff)
        self._stop_now = threading.Event()
        self._draining = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self.service_reachable: bool | None = None  # None: nothing sent yet
        self.last_error = ""
        self._failing_since: float | None = None
        self._last_failure_log = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, drain_seconds: float) -> int:
        """Send what can be sent within ``drain_seconds`` (no more lingering), then stop.

        Returns how many events are left in the spool (they go out after the next start).
        """
        self._draining.set()
        deadline = time.monotonic() + drain_seconds
        while self.spool.pending and self.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop_now.set()
        with self._client_lock:
            if self._client is not None:
                self._client.close()  # ends a stream still waiting for the service
        self._thread.join(timeout=10)
        return self.spool.pending

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop_now.is_set():
                if not self._wait_for_round():
                    continue
                if self._deliver():
                    self._backoff.reset()
                else:
                    self._stop_now.wait(self._backoff.next_delay())
        except Exception:
            log.exception("delivery stopped by an unexpected error")
            raise
        finally:
            with self._client_lock:
                if self._client is not None:
                    self._client.close()
                    self._client = None

    def _wait_for_round(self) -> bool:
        "Wait for events, then (unless draining) up to ``linger`` for a full batch."
        if not self.spool.wait_for_events(0.25):
            return False
        if self._draining.is_set():
            return True
        oldest = self.spool.oldest_spooled_at()
        if oldest is None:
            return False
        deadline = oldest + min(self.settings.linger, 60.0)
        while not (self._draining.is_set() or self._stop_now.is_set()):
            left = deadline - time.time()
            if left <= 0:
                break
            # In short waits, so that a stop does not wait out the linger.
            if self.spool.wait_for_count(self.settings.batch_size, min(left, 0.05)):
                break
        return True

    def _client_now(self) -> AuditClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _reconnect(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _source(self, taken: list[SpooledEvent]) -> Iterator[bytes]:
        """The round's events, read from the spool page by page as the stream pulls them: their
        spooled AuditEvent bytes, which ``record_many`` sends as they are."""
        after = 0
        page_size = self.settings.batch_size
        while len(taken) < self.settings.round_events:
            page = self.spool.head(min(page_size, self.settings.round_events - len(taken)), after)
            if not page:
                return  # caught up: the round ends once what was sent is acknowledged
            for item in page:
                taken.append(item)
                yield item.data
            after = page[-1].seq

    def _deliver(self) -> bool:
        "One round; True when nothing needs another attempt."
        chunk: list[SpooledEvent] = []
        try:
            client = self._client_now()
            results = client.record_many(
                self._source(chunk),
                batch_size=self.settings.batch_size,
                window=self.settings.window,
                timeout=self.settings.stream_timeout,
            )
        except (AuditClientError, OSError, ValueError) as exc:
            if self._stop_now.is_set():
                return True  # closed on purpose while stopping
            self._round_failed(exc, len(chunk))
            if isinstance(exc, Unauthenticated | OSError | ValueError):
                self._reconnect()  # the token file may have changed
            return False
        self._round_succeeded()
        delivered: list[int] = []
        dead: list[tuple[int, str]] = []
        failed: list[tuple[int, str]] = []
        duplicates = 0
        for item, result in zip(chunk, results, strict=True):
            error = result.error
            if error is None:
                delivered.append(item.seq)
                duplicates += result.duplicate
            elif isinstance(error, PERMANENT_ERRORS):
                dead.append((item.seq, str(error)))
            elif item.attempts + 1 >= self.settings.max_attempts:
                dead.append((item.seq, f"{error} (after {item.attempts + 1} attempts)"))
            else:
                failed.append((item.seq, str(error)))
        self.spool.settle(delivered, dead, failed)
        self._stats.add("delivered", len(delivered))
        self._stats.add("duplicates", duplicates)
        self._stats.add("dead_lettered", len(dead))
        self._stats.add("retried", len(failed))
        by_seq = {item.seq: item for item in chunk}
        for seq, reason in dead:
            log.warning("event dead-lettered", key=by_seq[seq].key, reason=reason)
        if failed:
            log.warning(
                "events to retry",
                events=len(failed),
                first_key=by_seq[failed[0][0]].key,
                error=failed[0][1],
            )
        log.debug("round delivered", delivered=len(delivered), duplicates=duplicates)
        return not failed

    def _round_failed(self, exc: Exception, events: int) -> None:
        self._stats.add("retried", events)
        self.service_reachable = False
        self.last_error = str(exc)
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._last_failure_log = now
            log.warning("delivery failed; will retry with backoff", error=str(exc), events=events)
        elif now - self._last_failure_log >= 30:
            self._last_failure_log = now
            log.warning(
                "delivery still failing",
                error=str(exc),
                seconds=round(now - self._failing_since, 1),
                pending=self.spool.pending,
            )
        if isinstance(exc, Unauthenticated | PermissionDenied):
            log.error(
                "the service refuses this collector's token; check --token-file and the"
                " token's role (recorder) and origins",
                error=str(exc),
            )

    def _round_succeeded(self) -> None:
        if self._failing_since is not None:
            log.info(
                "delivery resumed", after_seconds=round(time.monotonic() - self._failing_since, 1)
            )
        self._failing_since = None
        self.service_reachable = True
        self.last_error = ""

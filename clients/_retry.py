"""Retrying calls that are safe to repeat, with exponential backoff and full jitter.

Only UNAVAILABLE is retried (the service is unreachable or shutting down: nothing was done),
and only for calls whose repeat cannot store an event twice: ``record`` with an idempotency
key, ``record_many`` while every unacknowledged event has one, ``list`` and ``get_diff``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from clients._errors import AuditClientError, Unavailable

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How hard to try before an UNAVAILABLE becomes an ``Unavailable`` error.

    The n-th retry waits a random time between 0 and ``min(max_backoff, initial_backoff *
    multiplier**n)`` seconds ("full jitter", so many clients coming back do not all knock at
    once); at most ``attempts`` tries in all, and none that would start after ``deadline``
    seconds have passed since the first.
    """

    attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    deadline: float = 60.0

    def delays(self) -> Iterator[float]:
        "The waits before each retry (``attempts - 1`` of them)."
        for n in range(max(self.attempts - 1, 0)):
            cap = min(self.max_backoff, self.initial_backoff * self.multiplier**n)
            yield random.uniform(0, cap)  # noqa: S311 (jitter, not a secret)


NO_RETRY = RetryPolicy(attempts=1)


class Retrier:
    "One retry budget: ``should_retry`` says whether (after its wait) to try again."

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._delays = policy.delays()
        self._clock = clock
        self._give_up_at = clock() + policy.deadline

    def next_delay(self, error: AuditClientError) -> float | None:
        "The wait before the next try, or None to give up and raise ``error``."
        if not isinstance(error, Unavailable):
            return None
        delay = next(self._delays, None)
        if delay is None or self._clock() + delay > self._give_up_at:
            return None
        return delay


def call_with_retry(
    call: Callable[[], T],
    policy: RetryPolicy,
    convert: Callable[[Exception], AuditClientError | None],
    *,
    safe: bool = True,
) -> T:
    """``call()``, retried on UNAVAILABLE when ``safe``; errors leave as AuditClientErrors.

    ``convert`` turns a raised exception into the library's error, or None to let it pass.
    """
    retrier = Retrier(policy if safe else NO_RETRY)
    while True:
        try:
            return call()
        except Exception as exc:
            error = convert(exc)
            if error is None:
                raise
            delay = retrier.next_delay(error)
            if delay is None:
                raise error from None
        time.sleep(delay)


async def call_with_retry_async(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    convert: Callable[[Exception], AuditClientError | None],
    *,
    safe: bool = True,
) -> T:
    "The asyncio twin of ``call_with_retry``."
    retrier = Retrier(policy if safe else NO_RETRY)
    while True:
        try:
            return await call()
        except Exception as exc:
            error = convert(exc)
            if error is None:
                raise
            delay = retrier.next_delay(error)
            if delay is None:
                raise error from None
        await asyncio.sleep(delay)

"""``record_many(timeout=...)``: a stream to a service that stopped answering ends in time.

The service is a real ``audit-service`` child process, frozen with SIGSTOP once the client under
test has connected to it (so the stream, not the connection, is what waits).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clients import AsyncAuditClient, AuditClient, DeadlineExceeded, Event, RetryPolicy
from tests.helpers import spawn_server


def entity(identifier: str) -> Event:
    return Event(
        resource="entity",
        identifier=identifier,
        blueprint="service",
        operation="create",
        origin="api",
        idempotency_key=f"timeout-{identifier}",
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    "The endpoint of a real service, and a function that freezes it (SIGSTOP)."
    server = spawn_server("--dev", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "a.db"))
    frozen = False

    def freeze() -> None:
        nonlocal frozen
        os.kill(server.process.pid, signal.SIGSTOP)
        frozen = True

    try:
        yield server.endpoint, freeze
    finally:
        if frozen:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_record_many_timeout_ends_a_stream_the_service_never_answers(
    service: tuple[str, Callable[[], None]],
) -> None:
    endpoint, freeze = service
    with AuditClient(endpoint, retry=RetryPolicy(attempts=1)) as client:
        assert client.record_many([entity("warm-up")], timeout=10)[0].id
        freeze()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.record_many([entity("a"), entity("b")], timeout=0.5)
        assert time.monotonic() - started < 5


def test_async_record_many_timeout(service: tuple[str, Callable[[], None]]) -> None:
    endpoint, freeze = service

    async def attempt() -> float:
        async with AsyncAuditClient(endpoint, retry=RetryPolicy(attempts=1)) as client:
            assert (await client.record_many([entity("warm-up")], timeout=10))[0].id
            freeze()
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.record_many([entity("c")], timeout=0.5)
            return time.monotonic() - started

    assert asyncio.run(attempt()) < 5

"""``list_page`` (one page and its token, sync and asyncio) and ``record_many([])`` as a
"may this token record?" question, against the real service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import (
    AsyncAuditClient,
    AuditClient,
    Event,
    InvalidArgument,
    Page,
    PermissionDenied,
    Source,
    Unauthenticated,
)
from tests.helpers import TestServer, Token, start_server, write_tokens_file

ADMIN = Token("admin@example.com", "admin", "alog_admin-token-for-list-page")
MEMBER = Token("mia@example.com", "member", "alog_member-token-for-list-page")


def run(identifier: str, who: str = "u-1") -> Event:
    return Event(
        resource="run",
        identifier=identifier,
        run_id=identifier,
        operation="create",
        origin="api",
        source=Source(kind="user", id=who),
    )


def test_list_page_returns_one_page_and_the_token_of_the_next(server: TestServer) -> None:
    with AuditClient(server.endpoint) as client:
        client.record_many([run(f"r-{i:02}") for i in range(25)])
        first = client.list_page(("resource", "=", "run"), order_by="identifier asc", page_size=10)
        assert isinstance(first, Page)
        assert [e.identifier for e in first.events] == [f"r-{i:02}" for i in range(10)]
        assert first.next_page_token
        seen = [e.identifier for e in first.events]
        token = first.next_page_token
        while token:
            page = client.list_page(
                ("resource", "=", "run"), order_by="identifier asc", page_size=10, page_token=token
            )
            seen += [e.identifier for e in page.events]
            token = page.next_page_token
        assert seen == [f"r-{i:02}" for i in range(25)]
        with pytest.raises(InvalidArgument) as garbled:
            client.list_page(page_token="not-a-token")
        assert garbled.value.field == "page_token"


def test_async_list_page_matches_the_sync_one(server: TestServer) -> None:
    with AuditClient(server.endpoint) as client:
        client.record_many([run(f"r-{i}") for i in range(5)])
        expected = client.list_page(page_size=3)

    async def main() -> tuple[Page, Page]:
        async with AsyncAuditClient(server.endpoint) as aio:
            first = await aio.list_page(page_size=3)
            return first, await aio.list_page(page_size=3, page_token=first.next_page_token)

    first, second = asyncio.run(main())
    assert [e.id for e in first.events] == [e.id for e in expected.events]
    assert len(second.events) == 2
    assert second.next_page_token == ""


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[TestServer]:
    tokens = write_tokens_file(tmp_path / "tokens.toml", [ADMIN, MEMBER])
    running = start_server(tmp_path / "audit.db", dev=False, tokens=str(tokens))
    try:
        yield running
    finally:
        running.close()


def test_an_empty_record_many_tells_whether_the_token_may_record(secured: TestServer) -> None:
    with AuditClient(secured.endpoint, token=ADMIN.value) as admin:
        assert admin.record_many([]) == []
    with (
        AuditClient(secured.endpoint, token=MEMBER.value) as member,
        pytest.raises(PermissionDenied),
    ):
        member.record_many([])

    async def main(token: str) -> None:
        async with AsyncAuditClient(secured.endpoint, token=token) as aio:
            assert await aio.record_many([]) == []

    asyncio.run(main(ADMIN.value))
    with pytest.raises(PermissionDenied):
        asyncio.run(main(MEMBER.value))
    with pytest.raises(Unauthenticated):
        asyncio.run(main("alog_nobody"))

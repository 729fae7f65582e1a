"""Fixtures of the storage contract suite: every test runs once per backend.

The PostgreSQL cluster is started once per session (``tests.postgres_cluster``); each test
gets a database of its own. Without PostgreSQL's programs the PostgreSQL tests fail with a
message saying what is missing, unless AUDITLOG_TEST_POSTGRES=skip asks to skip them.
AUDITLOG_TEST_POSTGRES_URL runs them against another server instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from audit_service.storage import Storage, open_storage
from tests.postgres_cluster import (
    SKIP_ENV,
    URL_ENV,
    ExternalServer,
    PostgresCluster,
    PostgresServer,
    PostgresUnavailable,
)

BACKENDS = ("sqlite", "postgres")
OpenDb = Callable[[], str]


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session, on a Unix socket in a temp dir (or the
    server AUDITLOG_TEST_POSTGRES_URL names)."""
    try:
        url = os.environ.get(URL_ENV)
        cluster: PostgresServer = ExternalServer(url) if url else PostgresCluster.start()
    except PostgresUnavailable as exc:
        if os.environ.get(SKIP_ENV, "").lower() == "skip":
            pytest.skip(f"PostgreSQL unavailable ({SKIP_ENV}=skip): {exc}")
        pytest.fail(f"PostgreSQL unavailable: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    "The --db value of a fresh database of this test's backend: a file path or a URL."
    if backend == "sqlite":
        return str(tmp_path / "audit.db")
    cluster: PostgresServer = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()


@pytest.fixture
def open_db(db: str) -> Iterator[Callable[[], Storage]]:
    "Open (another) storage on this test's database; every one opened is closed at the end."
    opened: list[Storage] = []

    def open_one() -> Storage:
        storage = open_storage(db)
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        storage.close()


@pytest.fixture
def storage(open_db: Callable[[], Storage]) -> Storage:
    return open_db()


@pytest.fixture
def pg_url(postgres_cluster: PostgresServer) -> str:
    "A fresh PostgreSQL database (for the tests that only PostgreSQL has)."
    return postgres_cluster.new_database()

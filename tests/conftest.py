from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import pb_grpc
from tests.helpers import TestServer, start_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TestServer]:
    "A real audit-service on a free port with a fresh SQLite file (--dev)."
    running = start_server(tmp_path / "audit.db")
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def stub(server: TestServer) -> pb_grpc.AuditServiceStub:
    return server.stub

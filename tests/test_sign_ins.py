"""Failed authentications and the first use of a token each hour become SIGN_IN events."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from audit_service.models import Status
from audit_service.principals import Principal, Role
from audit_service.sign_ins import HOUR_NS, SignInAuditor, peer_host
from audit_service.storage.sqlite import SQLiteStorage
from audit_service.writer import GroupCommitWriter
from clients import pb
from tests.helpers import TestServer, Token, list_all, start_server, write_tokens_file

ADMIN = Token("root@example.com", "admin", "adm-7c1f0b2e9a8d4c3b")
SIGN_INS = pb.ListRequest(
    filters=[pb.Filter(field="resource", op=pb.FILTER_OP_EQUALS, values=["sign_in"])],
    order_by="recorded_at asc",
)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[TestServer]:
    tokens = write_tokens_file(tmp_path / "tokens.toml", [ADMIN])
    running = start_server(
        tmp_path / "audit.db", dev=False, tokens=str(tokens), sign_in_failures_per_minute=5
    )
    try:
        yield running
    finally:
        running.close()


def _sign_ins(server: TestServer, expected: int) -> list[pb.AuditEvent]:
    "The SIGN_IN events, once ``expected`` of them are in (they are recorded asynchronously)."
    deadline = time.monotonic() + 5
    while True:
        events = list(list_all(server.stub, SIGN_INS, metadata=ADMIN.metadata))
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_failed_sign_in_records_peer_reason_and_only_a_hash_prefix(secured: TestServer) -> None:
    presented = "guess-3f9a1c77d2"
    with pytest.raises(grpc.RpcError):
        secured.stub.List(pb.ListRequest(), metadata=(("authorization", f"Bearer {presented}"),))
    events = [e for e in _sign_ins(secured, 2) if e.status == pb.STATUS_FAILURE]
    assert len(events) == 1
    failure = events[0]
    prefix = hashlib.sha256(presented.encode()).hexdigest()[:8]
    assert failure.operation == pb.OPERATION_READ
    assert failure.error == "unknown or revoked token"
    assert failure.context["token_sha256_prefix"] == prefix
    assert failure.context["peer"].startswith("ipv4:127.0.0.1:")
    assert presented not in str(failure)


def test_missing_token_is_recorded_as_a_failure(secured: TestServer) -> None:
    with pytest.raises(grpc.RpcError):
        secured.stub.List(pb.ListRequest())
    failures = [e for e in _sign_ins(secured, 2) if e.status == pb.STATUS_FAILURE]
    assert [e.identifier for e in failures] == ["no-token"]
    assert "missing credentials" in failures[0].error


def test_a_flood_of_bad_tokens_is_rate_limited_per_peer(secured: TestServer) -> None:
    for i in range(40):
        with pytest.raises(grpc.RpcError):
            secured.stub.List(pb.ListRequest(), metadata=(("authorization", f"Bearer bad-{i}"),))
    time.sleep(0.3)
    failures = [e for e in _sign_ins(secured, 6) if e.status == pb.STATUS_FAILURE]
    # 5 a minute per peer; the test may straddle a minute boundary, which allows 5 more.
    assert 5 <= len(failures) <= 10


def test_first_successful_use_each_hour_is_one_sign_in_event(secured: TestServer) -> None:
    for _ in range(5):
        secured.stub.List(pb.ListRequest(), metadata=ADMIN.metadata)
    successes = [e for e in _sign_ins(secured, 1) if e.status == pb.STATUS_SUCCESS]
    assert [(e.identifier, e.source.id, e.context["role"]) for e in successes] == [
        ("root@example.com", "root@example.com", "admin")
    ]


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000 * 1_000_000_000

    def __call__(self) -> int:
        return self.now


def test_hourly_success_and_per_minute_failure_windows(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "a.db")
    writer = GroupCommitWriter(storage)
    clock = _Clock()
    auditor = SignInAuditor(writer, failures_per_minute=2, clock=clock)
    alice = Principal("alice", Role.ADMIN)
    try:
        auditor.succeeded(alice, "ipv4:10.0.0.1:1")
        auditor.succeeded(alice, "ipv4:10.0.0.1:2")
        clock.now += HOUR_NS
        auditor.succeeded(alice, "ipv4:10.0.0.1:3")
        for _ in range(5):
            auditor.failed("ipv4:10.0.0.9:1", "unknown or revoked token", "abcd1234")
        clock.now += 60 * 1_000_000_000
        auditor.failed("ipv4:10.0.0.9:1", "unknown or revoked token", "abcd1234")
    finally:
        writer.close()
    storage.wait_applied()
    rows = storage._writer.execute(
        "SELECT status, identifier, context FROM events ORDER BY seq"
    ).fetchall()
    storage.close()
    assert [r[:2] for r in rows] == [
        (Status.SUCCESS.value, "alice"),
        (Status.SUCCESS.value, "alice"),
        (Status.FAILURE.value, "token:abcd1234"),
        (Status.FAILURE.value, "token:abcd1234"),
        (Status.FAILURE.value, "token:abcd1234"),
    ]
    assert '"failures_not_recorded":"3"' in rows[-1][2]


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:127.0.0.1:5555", "127.0.0.1"), ("ipv6:[::1]:5555", "::1"), ("unix:/tmp/s", "/tmp/s")],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host

"""Tokens, roles and what each may do, against a real server started with --tokens."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients import pb, pb_grpc
from tests.helpers import (
    TestServer,
    Token,
    event,
    list_all,
    spawn_server,
    start_server,
    write_tokens_file,
)

ADMIN = Token("admin@example.com", "admin", "adm-" + secrets.token_urlsafe(24))
RECORDER = Token("k8s-exporter", "recorder", "rec-" + secrets.token_urlsafe(24), ("K8S_EXPORTER",))
MEMBER = Token("mia@example.com", "member", "mem-" + secrets.token_urlsafe(24))
OTHER_MEMBER = Token("otto@example.com", "member", "oth-" + secrets.token_urlsafe(24))
ALL = [ADMIN, RECORDER, MEMBER, OTHER_MEMBER]
NO_TOKEN: tuple[tuple[str, str], ...] = ()
BAD_TOKEN = (("authorization", "Bearer not-a-known-token"),)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[TestServer]:
    tokens = write_tokens_file(tmp_path / "tokens.toml", ALL)
    running = start_server(tmp_path / "audit.db", dev=False, tokens=str(tokens))
    try:
        yield running
    finally:
        running.close()


def _admin_record(stub: pb_grpc.AuditServiceStub, **fields: Any) -> str:
    response = stub.Record(pb.RecordRequest(event=event(**fields)), metadata=ADMIN.metadata)
    return str(response.id)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


OK = grpc.StatusCode.OK
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND

# (who, metadata) x (Record, RecordStream, List, GetDiff of an admin's ENTITY event)
MATRIX = [
    ("no token", NO_TOKEN, (UNAUTH, UNAUTH, UNAUTH, UNAUTH)),
    ("bad token", BAD_TOKEN, (UNAUTH, UNAUTH, UNAUTH, UNAUTH)),
    ("admin", ADMIN.metadata, (OK, OK, OK, OK)),
    ("recorder", RECORDER.metadata, (OK, OK, DENIED, DENIED)),
    ("member", MEMBER.metadata, (DENIED, DENIED, OK, NOT_FOUND)),
]


@pytest.mark.parametrize(("who", "metadata", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
def test_access_matrix(
    secured: TestServer,
    who: str,
    metadata: tuple[tuple[str, str], ...],
    expected: tuple[grpc.StatusCode, ...],
) -> None:
    stub = secured.stub
    target = _admin_record(stub)
    k8s_event = event(origin=pb.ORIGIN_K8S_EXPORTER)

    def record() -> Any:
        return stub.Record(pb.RecordRequest(event=k8s_event), metadata=metadata)

    def record_stream() -> Any:
        requests = iter([pb.RecordStreamRequest(batch=1, events=[k8s_event])])
        responses = list(stub.RecordStream(requests, metadata=metadata))
        assert [r.error for r in responses[0].results] == [""]
        return responses

    def list_() -> Any:
        return stub.List(pb.ListRequest(), metadata=metadata)

    def get_diff() -> Any:
        return stub.GetDiff(pb.GetDiffRequest(id=target), metadata=metadata)

    got = tuple(_code(call) for call in (record, record_stream, list_, get_diff))
    assert got == expected, who


def test_unauthenticated_message_says_what_to_send(secured: TestServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        secured.stub.List(pb.ListRequest())
    assert caught.value.code() == UNAUTH
    assert "authorization: Bearer" in str(caught.value.details())


def test_recorder_may_not_record_other_origins_and_is_named_recorded_by(
    secured: TestServer,
) -> None:
    stub = secured.stub
    with pytest.raises(grpc.RpcError) as caught:
        stub.Record(pb.RecordRequest(event=event(origin=pb.ORIGIN_UI)), metadata=RECORDER.metadata)
    assert caught.value.code() == DENIED
    assert "UI" in str(caught.value.details())
    batch = pb.RecordStreamRequest(
        batch=7, events=[event(origin=pb.ORIGIN_K8S_EXPORTER), event(origin=pb.ORIGIN_TERRAFORM)]
    )
    (response,) = list(stub.RecordStream(iter([batch]), metadata=RECORDER.metadata))
    assert response.results[0].id
    assert response.results[1].error.startswith("PERMISSION_DENIED:")
    assert "TERRAFORM" in response.results[1].error
    stored = stub.List(pb.ListRequest(), metadata=ADMIN.metadata).events
    assert [(e.id, e.origin) for e in stored if e.resource != pb.RESOURCE_TYPE_SIGN_IN] == [
        (response.results[0].id, pb.ORIGIN_K8S_EXPORTER)
    ]


def test_recorded_by_is_the_recorder(secured: TestServer) -> None:
    stub = secured.stub
    response = stub.Record(
        pb.RecordRequest(event=event(origin=pb.ORIGIN_K8S_EXPORTER, recorded_by="forged")),
        metadata=RECORDER.metadata,
    )
    listed = stub.List(pb.ListRequest(), metadata=ADMIN.metadata)
    mine = [e for e in listed.events if e.id == response.id]
    assert [e.recorded_by for e in mine] == ["k8s-exporter"]


def _run(stub: pb_grpc.AuditServiceStub, member: str, identifier: str) -> str:
    return _admin_record(
        stub,
        resource=pb.RESOURCE_TYPE_RUN,
        blueprint="",
        identifier=identifier,
        run_id=identifier,
        source=pb.Source(kind=pb.SOURCE_KIND_USER, id=member, name=member),
        before={"status": "IN_PROGRESS"},
        after={"status": "SUCCESS"},
    )


def _rule(field: str, op: int, *values: str) -> pb.Filter:
    return pb.Filter(field=field, op=op, values=values)  # type: ignore[arg-type]


# (filters a member sends, whether its own runs still match them)
MEMBER_FILTERS = [
    ([], True),
    ([_rule("resource", pb.FILTER_OP_EQUALS, "entity", "run")], True),
    ([_rule("resource", pb.FILTER_OP_NOT_EQUALS, "run")], False),
    ([_rule("source", pb.FILTER_OP_EQUALS, "otto@example.com")], False),
    ([_rule("source", pb.FILTER_OP_CONTAINS, "example")], True),
    ([_rule("recorded_by", pb.FILTER_OP_EQUALS, "admin@example.com")], True),
    ([_rule("identifier", pb.FILTER_OP_STARTS_WITH, "run-")], True),
]


@pytest.mark.parametrize(("filters", "own_runs_match"), MEMBER_FILTERS)
def test_member_sees_only_its_own_runs_whatever_it_filters(
    secured: TestServer, filters: list[pb.Filter], own_runs_match: bool
) -> None:
    stub = secured.stub
    mine = {
        _run(stub, MEMBER.principal_id, "run-mine-1"),
        _run(stub, MEMBER.principal_id, "run-mine-2"),
    }
    _run(stub, OTHER_MEMBER.principal_id, "run-otto")
    _admin_record(stub, identifier="svc")  # an ENTITY event
    request = pb.ListRequest(filters=filters, page_size=1)
    seen = {e.id for e in list_all(stub, request, metadata=MEMBER.metadata)}
    assert seen == (mine if own_runs_match else set())


def test_member_get_diff_of_someone_elses_run_is_not_found(secured: TestServer) -> None:
    stub = secured.stub
    mine = _run(stub, MEMBER.principal_id, "run-mine")
    theirs = _run(stub, OTHER_MEMBER.principal_id, "run-theirs")
    diff = stub.GetDiff(pb.GetDiffRequest(id=mine), metadata=MEMBER.metadata)
    assert diff.available
    for event_id in (theirs, _admin_record(stub)):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetDiff(pb.GetDiffRequest(id=event_id), metadata=MEMBER.metadata)
        assert caught.value.code() == NOT_FOUND
        # Same answer as for an id that does not exist: no existence leak.
        assert "no event with id" in str(caught.value.details())


def test_tokens_file_change_takes_effect_without_restart(
    secured: TestServer, tmp_path: Path
) -> None:
    stub = secured.stub
    newcomer = Token("new@example.com", "admin", "new-" + secrets.token_urlsafe(24))
    assert _code(lambda: stub.List(pb.ListRequest(), metadata=newcomer.metadata)) == UNAUTH
    tokens = tmp_path / "tokens.toml"
    write_tokens_file(tokens, [*ALL, newcomer])
    os.utime(tokens, ns=(time.time_ns() + 5_000_000_000,) * 2)  # a certainly different mtime
    deadline = time.monotonic() + 5
    while _code(lambda: stub.List(pb.ListRequest(), metadata=newcomer.metadata)) != OK:
        assert time.monotonic() < deadline, "the changed tokens file was not picked up"
        time.sleep(0.2)


def test_broken_tokens_file_keeps_the_last_good_one(secured: TestServer, tmp_path: Path) -> None:
    stub = secured.stub
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("[[principal]]\nid = 'x'\nrole = 'superuser'\n")
    os.utime(tokens, ns=(time.time_ns() + 5_000_000_000,) * 2)
    time.sleep(1.2)  # past the once-a-second check
    assert _code(lambda: stub.List(pb.ListRequest(), metadata=ADMIN.metadata)) == OK
    assert secured.service.reload_tokens() is False


def test_sighup_reloads_tokens_and_planted_tokens_never_reach_db_or_log(tmp_path: Path) -> None:
    tokens = write_tokens_file(tmp_path / "tokens.toml", [ADMIN])
    db = tmp_path / "audit.db"
    server = spawn_server("--tokens", str(tokens), "--listen", "127.0.0.1:0", "--db", str(db))
    channel, stub = server.stub()
    try:
        newcomer = Token("late@example.com", "admin", "late-" + secrets.token_urlsafe(24))
        assert _code(lambda: stub.List(pb.ListRequest(), metadata=newcomer.metadata)) == UNAUTH
        write_tokens_file(tokens, [ADMIN, newcomer])
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while _code(lambda: stub.List(pb.ListRequest(), metadata=newcomer.metadata)) != OK:
            assert time.monotonic() < deadline, "SIGHUP did not reload the tokens file"
            time.sleep(0.1)
        stub.Record(pb.RecordRequest(event=event()), metadata=ADMIN.metadata)
        for _ in range(3):  # failed sign-ins with a token that looks real
            _code(lambda: stub.List(pb.ListRequest(), metadata=BAD_TOKEN))
    finally:
        channel.close()
        code, log = server.stop()
    assert code == 0
    assert "SIGHUP" in log
    for token in (ADMIN.value, newcomer.value, "not-a-known-token"):
        assert token not in log
        for path in (db, db.with_name(db.name + "-wal")):
            if path.exists():
                assert token.encode() not in path.read_bytes()


def test_server_refuses_non_loopback_without_tokens(tmp_path: Path) -> None:
    from audit_service import Settings, StartupError, create_server

    with pytest.raises(StartupError, match="non-loopback"):
        create_server(Settings(dev=True, db=str(tmp_path / "a.db"), listen="0.0.0.0:0"))

"""The servicer driven directly through grpc_testing: no sockets, the real AuditLog and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest

from audit_service.audit_log import AuditLog
from audit_service.auth import DevAuthenticator
from audit_service.keys import ServerKey, key_path_for
from audit_service.page_tokens import PageTokens
from audit_service.secrets_redaction import SecretFingerprinter
from audit_service.servicer import AuditServicer
from audit_service.storage.sqlite import SQLiteStorage
from audit_service.writer import GroupCommitWriter
from clients import pb
from tests.helpers import event

SERVICE = pb.DESCRIPTOR.services_by_name["AuditService"]


@pytest.fixture
def testing_server(tmp_path: Path) -> Iterator[Any]:
    "The servicer wired as ``audit_service.server.create_server`` wires it, minus the network."
    db = tmp_path / "audit.db"
    storage = SQLiteStorage(db)
    key = ServerKey.load_or_create(key_path_for(db))
    writer = GroupCommitWriter(storage)
    audit_log = AuditLog(
        storage,
        writer,
        SecretFingerprinter(key.derive("secret-fingerprints")),
        PageTokens(key.derive("page-tokens")),
    )
    servicer = AuditServicer(audit_log, DevAuthenticator())
    try:
        yield grpc_testing.server_from_dictionary(
            {SERVICE: servicer}, grpc_testing.strict_real_time()
        )
    finally:
        writer.close()
        storage.close()


def _unary(server: Any, method: str, request: Any) -> tuple[Any, grpc.StatusCode, str]:
    rpc = server.invoke_unary_unary(SERVICE.methods_by_name[method], (), request, 10)
    response, _, code, details = rpc.termination()
    return response, code, details


def test_record_then_list(testing_server: Any) -> None:
    response, code, _ = _unary(
        testing_server, "Record", pb.RecordRequest(event=event(identifier="checkout"))
    )
    assert code == grpc.StatusCode.OK
    assert response.id
    listed, code, _ = _unary(testing_server, "List", pb.ListRequest())
    assert code == grpc.StatusCode.OK
    assert [(e.id, e.identifier, e.recorded_by) for e in listed.events] == [
        (response.id, "checkout", "dev")
    ]


def test_invalid_event_is_invalid_argument(testing_server: Any) -> None:
    _, code, details = _unary(
        testing_server, "Record", pb.RecordRequest(event=event(origin=pb.ORIGIN_UNSPECIFIED))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("event.origin:")
    listed, _, _ = _unary(testing_server, "List", pb.ListRequest())
    assert list(listed.events) == []


def test_bad_filter_is_invalid_argument(testing_server: Any) -> None:
    request = pb.ListRequest(filters=[pb.Filter(field="nope", op=pb.FILTER_OP_EQUALS)])
    _, code, details = _unary(testing_server, "List", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "valid fields" in details


def test_get_diff_and_not_found(testing_server: Any) -> None:
    recorded, _, _ = _unary(
        testing_server,
        "Record",
        pb.RecordRequest(event=event(before={"replicas": 2}, after={"replicas": 3})),
    )
    diff, code, _ = _unary(testing_server, "GetDiff", pb.GetDiffRequest(id=recorded.id))
    assert code == grpc.StatusCode.OK
    assert diff.available
    assert [(op.op, op.path, op.value.number_value) for op in diff.patch] == [
        ("replace", "/replicas", 3.0)
    ]
    unknown = recorded.id[:-1] + ("0" if recorded.id[-1] != "0" else "1")
    _, code, _ = _unary(testing_server, "GetDiff", pb.GetDiffRequest(id=unknown))
    assert code == grpc.StatusCode.NOT_FOUND


def test_record_stream_reports_each_event(testing_server: Any) -> None:
    rpc = testing_server.invoke_stream_stream(SERVICE.methods_by_name["RecordStream"], (), 10)
    rpc.send_request(
        pb.RecordStreamRequest(batch=4, events=[event(identifier="ok"), event(identifier="")])
    )
    response = rpc.take_response()
    rpc.requests_closed()
    _, code, _ = rpc.termination()
    assert code == grpc.StatusCode.OK
    assert response.batch == 4
    ok, bad = response.results
    assert ok.id
    assert not ok.error
    assert bad.error == "INVALID_ARGUMENT: event.identifier: required"

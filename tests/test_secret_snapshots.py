"""SECRET events never store a secret value: not in the database, not in its WAL."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from clients import pb, pb_grpc
from tests.helpers import TestServer, record

PLANTED = "hunter2-planted-b7e1c94d"


def _scan(paths: list[Path], needle: bytes) -> list[Path]:
    return [p for p in paths if p.exists() and needle in p.read_bytes()]


def _db_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def test_planted_secret_appears_in_no_database_file(server: TestServer) -> None:
    stub: pb_grpc.AuditServiceStub = server.stub
    record(
        stub,
        resource=pb.RESOURCE_TYPE_SECRET,
        identifier="stripe-api-key",
        operation=pb.OPERATION_UPDATE,
        before={"value": "old-" + PLANTED, "meta": {"rotation": [PLANTED, 7]}},
        after={"value": PLANTED, "meta": {"rotation": [PLANTED, 8]}},
    )
    record(
        stub,
        resource=pb.RESOURCE_TYPE_SECRET,
        identifier="db-password",
        operation=pb.OPERATION_CREATE,
        after={"password": PLANTED},
    )
    wal = server.db_path.with_name(server.db_path.name + "-wal")
    assert wal.stat().st_size > 0  # the events are in the WAL right now
    needle = PLANTED.encode()
    assert _scan(_db_files(server.db_path), needle) == []
    server.close()  # checkpoint into the main file, then scan again
    assert _scan(_db_files(server.db_path), needle) == []


def test_control_an_entity_snapshot_value_is_stored(server: TestServer) -> None:
    # Shows the scan above can fail: the same value in a non-SECRET event is found.
    record(server.stub, after={"note": PLANTED})
    server.close()
    assert _scan(_db_files(server.db_path), PLANTED.encode()) != []


def test_secret_diff_shows_that_a_value_changed_never_what(server: TestServer) -> None:
    rec = record(
        server.stub,
        resource=pb.RESOURCE_TYPE_SECRET,
        identifier="token",
        before={"value": "a-" + PLANTED, "same": PLANTED},
        after={"value": "b-" + PLANTED, "same": PLANTED},
    )
    diff = server.stub.GetDiff(pb.GetDiffRequest(id=rec.id))
    assert diff.available
    assert [(op.op, op.path) for op in diff.patch] == [("replace", "/value")]
    before, after = dict(diff.before), dict(diff.after)
    assert before["same"] == after["same"]
    assert before["value"] != after["value"]
    for value in [*before.values(), *after.values()]:
        assert isinstance(value, str)
        assert value.startswith("hmac-sha256:")
        assert PLANTED not in value


def test_server_key_is_kept_beside_the_database_owner_only(server: TestServer) -> None:
    key = server.db_path.with_name(server.db_path.name + ".key")
    assert key.exists()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600

"""``python -m audit_service`` as a real child process: startup, settings, health, SIGTERM."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import pb
from tests.helpers import REPO, ServerProcess, event, record, spawn_server


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    "The child processes see only the AUDITLOG_* variables a test sets itself."
    for name in list(os.environ):
        if name.startswith("AUDITLOG_"):
            monkeypatch.delenv(name)


def stop(server: ServerProcess, timeout: float = 30) -> tuple[int, str]:
    "SIGTERM, wait for the exit; return its code and everything it printed."
    server.process.terminate()
    code = server.process.wait(timeout=timeout)
    assert server.process.stdout is not None
    rest = server.process.stdout.read()
    server.process.stdout.close()
    return code, "".join(server.output) + rest


@pytest.fixture
def running(tmp_path: Path) -> Iterator[ServerProcess]:
    server = spawn_server("--dev", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "audit.db"))
    try:
        yield server
    finally:
        if server.process.poll() is None:
            stop(server)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    "Run ``audit-service ARGS`` expecting it to exit on its own (a refusal)."
    return subprocess.run(
        [sys.executable, "-m", "audit_service", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=30,
    )


def stored_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM events")}


def test_prints_the_real_port_when_given_port_zero(running: ServerProcess) -> None:
    host, port = running.endpoint.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert f"audit-service listening on 127.0.0.1:{port}\n" in running.output
    channel, stub = running.stub()
    with channel:
        assert record(stub).id


def test_health_reports_serving_for_the_server_and_the_service(running: ServerProcess) -> None:
    with grpc.insecure_channel(running.endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "auditlog.v1.AuditService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_sigterm_exits_zero_and_keeps_every_acknowledged_event(
    running: ServerProcess, tmp_path: Path
) -> None:
    channel, stub = running.stub()
    with channel:
        acked = {record(stub, identifier=f"svc-{i}").id for i in range(20)}
        batches = [
            pb.RecordStreamRequest(
                batch=n, events=[event(identifier=f"b{n}-{i}") for i in range(50)]
            )
            for n in range(3)
        ]
        for response in stub.RecordStream(iter(batches)):
            assert not any(r.error for r in response.results)
            acked.update(r.id for r in response.results)
    assert len(acked) == 20 + 3 * 50
    code, output = stop(running)
    assert code == 0, output
    assert "stopping gracefully" in output
    assert stored_ids(tmp_path / "audit.db") == acked


def test_without_tokens_or_dev_it_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli("--listen", "127.0.0.1:0", "--db", str(tmp_path / "audit.db"))
    assert result.returncode != 0
    assert "--tokens" in result.stderr
    assert "--dev" in result.stderr
    assert "listening" not in result.stdout


def test_dev_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    result = run_cli("--dev", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "audit.db"))
    assert result.returncode != 0
    assert "non-loopback" in result.stderr
    assert "listening" not in result.stdout


def test_an_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--dev", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "a.db"))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_environment_variables_are_honoured(tmp_path: Path) -> None:
    db = tmp_path / "from-env" / "audit.db"
    server = spawn_server(
        env={"AUDITLOG_DEV": "true", "AUDITLOG_LISTEN": "127.0.0.1:0", "AUDITLOG_DB": str(db)}
    )
    try:
        assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", server.endpoint)
        channel, stub = server.stub()
        with channel:
            event_id = record(stub).id
    finally:
        code, output = stop(server)
    assert code == 0, output
    assert stored_ids(db) == {event_id}


def test_a_flag_wins_over_the_environment(tmp_path: Path) -> None:
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    server = spawn_server(
        "--db", str(flag_db), env={"AUDITLOG_DEV": "1", "AUDITLOG_LISTEN": "127.0.0.1:0",
                                   "AUDITLOG_DB": str(env_db)}
    )  # fmt: skip
    code, output = stop(server)
    assert code == 0, output
    assert flag_db.exists()
    assert not env_db.exists()


def test_a_config_file_is_honoured(tmp_path: Path) -> None:
    db = tmp_path / "configured.db"
    config = tmp_path / "audit.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\ndb = "{db}"\ndev = true\ndurability = "normal"\n'
        "max-group-events = 100\n\n[retention_overrides]\nSIGN_IN = 7\n"
    )
    server = spawn_server("--config", str(config))
    try:
        assert "(durability NORMAL)" in "".join(server.output)
        channel, stub = server.stub()
        with channel:
            event_id = record(stub).id
    finally:
        code, output = stop(server)
    assert code == 0, output
    assert stored_ids(db) == {event_id}


def test_an_unknown_config_key_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text('dev = true\nlisten = "127.0.0.1:0"\nlisten_adress = "127.0.0.1:0"\n')
    result = run_cli("--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "unknown settings ['listen_adress']" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_exits_zero() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: audit-service")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--workers", "0"], "workers: '0' is below the minimum, 1"),
        (["--retention-interval-minutes", "0"], "retention_interval_minutes"),
        (["--max-group-events", "-5"], "max_group_events"),
        (["--durability", "sometimes"], "invalid choice"),
    ],
)
def test_bad_setting_values_are_clear_errors(tmp_path: Path, args: list[str], problem: str) -> None:
    db = tmp_path / "audit.db"
    result = subprocess.run(
        [sys.executable, "-m", "audit_service", "--dev", "--listen", "127.0.0.1:0",
         "--db", str(db), *args],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert problem in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


def test_lowercase_choices_on_the_command_line(tmp_path: Path) -> None:
    server = spawn_server(
        "--dev", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "a.db"),
        "--durability", "normal", "--log-level", "info",
    )  # fmt: skip
    code, log = server.stop()
    assert code == 0
    assert "durability NORMAL" in log


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("not a database, just some text that is long enough to have a header\n" * 10)
    result = subprocess.run(
        [sys.executable, "-m", "audit_service", "--dev", "--listen", "127.0.0.1:0",
         "--db", str(db)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot open SQLite database" in result.stderr
    assert "Traceback" not in result.stderr


def test_refused_authentication_creates_no_database(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    result = subprocess.run(
        [sys.executable, "-m", "audit_service", "--listen", "127.0.0.1:0", "--db", str(db)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tokens" in result.stderr
    assert not db.exists()

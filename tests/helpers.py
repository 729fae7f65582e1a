"""Shared test helpers: a real server on port 0, a server in a child process, sample events."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from audit_service import RunningService, Settings, create_server
from clients import pb, pb_grpc

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"audit-service listening on (\S+):(\d+)")


@dataclass
class TestServer:
    """A real audit-service, started in this process on a free port, with a stub to it."""

    service: RunningService
    db_path: Path
    channel: grpc.Channel = field(init=False)
    stub: pb_grpc.AuditServiceStub = field(init=False)

    __test__ = False  # not a test class, whatever its name says

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.endpoint)
        self.stub = pb_grpc.AuditServiceStub(self.channel)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    def close(self) -> None:
        self.channel.close()
        self.service.stop(grace=2)


def start_server(db_path: Path, **settings: Any) -> TestServer:
    values: dict[str, Any] = {"dev": True, "db": str(db_path), "listen": "127.0.0.1:0"}
    values.update(settings)
    return TestServer(create_server(Settings(**values)), db_path)


@dataclass
class ServerProcess:
    """``audit-service`` in a child process (for signals, crashes and the CLI)."""

    process: subprocess.Popen[str]
    endpoint: str
    output: list[str]

    def stub(self) -> tuple[grpc.Channel, pb_grpc.AuditServiceStub]:
        channel = grpc.insecure_channel(self.endpoint)
        return channel, pb_grpc.AuditServiceStub(channel)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the process to exit (signal it first, if wanted); close its pipe.

        Returns the exit code and everything it printed."""
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            assert self.process.stdout is not None
            self.output.append(self.process.stdout.read())
            self.process.stdout.close()
        return code, "".join(self.output)

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        "SIGTERM, then ``finish``."
        if self.process.poll() is None:
            self.process.terminate()
        return self.finish(timeout)


def spawn_server(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> ServerProcess:
    "Start ``audit-service ARGS`` and wait for its listening line."
    process = subprocess.Popen(
        [sys.executable, "-m", "audit_service", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        match = _LISTENING.search(line)
        if match:
            return ServerProcess(process, f"{match.group(1)}:{match.group(2)}", output)
    process.kill()
    raise AssertionError("audit-service did not start:\n" + "".join(output))


def event(**overrides: Any) -> pb.AuditEvent:
    """A valid ENTITY UPDATE event; keyword arguments override fields (dicts for messages)."""
    values: dict[str, Any] = {
        "resource": pb.RESOURCE_TYPE_ENTITY,
        "identifier": "payments-api",
        "blueprint": "service",
        "operation": pb.OPERATION_UPDATE,
        "origin": pb.ORIGIN_UI,
        "source": pb.Source(kind=pb.SOURCE_KIND_USER, id="u-1", name="alice@example.com"),
    }
    before = overrides.pop("before", None)
    after = overrides.pop("after", None)
    values.update(overrides)
    message = pb.AuditEvent(**values)
    if before is not None:
        message.before.SetInParent()  # an empty snapshot is still a snapshot
        message.before.update(before)
    if after is not None:
        message.after.SetInParent()
        message.after.update(after)
    return message


def record(stub: pb_grpc.AuditServiceStub, **overrides: Any) -> pb.RecordResponse:
    response: pb.RecordResponse = stub.Record(pb.RecordRequest(event=event(**overrides)))
    return response


def list_all(
    stub: pb_grpc.AuditServiceStub,
    request: pb.ListRequest,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Iterator[pb.AuditEvent]:
    "Every event of a List, following page tokens."
    while True:
        response = stub.List(request, metadata=metadata)
        yield from response.events
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token


# -- contract tests: small shared helpers -----------------------------------------------


def rule(field: str, op: pb.FilterOp.ValueType, *values: str) -> pb.Filter:
    "One filter rule: ``rule('resource', pb.FILTER_OP_EQUALS, 'entity')``."
    return pb.Filter(field=field, op=op, values=list(values))


def list_ids(stub: pb_grpc.AuditServiceStub, request: pb.ListRequest) -> list[str]:
    "The ids of every event of a List, in order, following page tokens."
    return [e.id for e in list_all(stub, request)]


def rfc3339(ns: int) -> str:
    "Integer nanoseconds since the epoch as RFC 3339 UTC with all nine fraction digits."
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def assert_still_serving(stub: pb_grpc.AuditServiceStub) -> None:
    "The server answers a valid Record after whatever the test sent it."
    response = record(stub, identifier="still-serving")
    assert response.id
    assert not response.duplicate


def varint(value: int) -> bytes:
    "A protobuf base-128 varint."
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def nested_struct_bytes(levels: int) -> bytes:
    """A google.protobuf.Struct on the wire, ``{"a": {"a": ... {"a": "x"}}}`` with ``levels``
    objects (the top-level one is level 1), built by hand so any depth can be sent."""
    value = b"\x1a\x01x"  # Value{string_value: "x"}
    struct = b""
    for level in range(levels):
        entry = b"\x0a\x01a\x12" + varint(len(value)) + value  # map entry {"a": value}
        struct = b"\x0a" + varint(len(entry)) + entry  # Struct{fields: [entry]}
        if level < levels - 1:
            value = b"\x2a" + varint(len(struct)) + struct  # Value{struct_value: struct}
    return struct


def event_bytes_with_before(levels: int, **overrides: Any) -> bytes:
    "A serialized AuditEvent whose ``before`` nests ``levels`` objects deep."
    struct = nested_struct_bytes(levels)
    return event(**overrides).SerializeToString() + b"\x7a" + varint(len(struct)) + struct


@dataclass(frozen=True)
class Token:
    principal_id: str
    role: str
    value: str
    origins: tuple[str, ...] = ()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.value}"),)


def write_tokens_file(path: Path, tokens: list[Token]) -> Path:
    "A tokens file (TOML) holding only the SHA-256 digests of ``tokens``."
    import hashlib

    entries = []
    for token in tokens:
        digest = hashlib.sha256(token.value.encode()).hexdigest()
        lines = [
            "[[principal]]",
            f'id = "{token.principal_id}"',
            f'role = "{token.role}"',
            f'token_sha256 = "{digest}"',
        ]
        if token.origins:
            lines.append("origins = [" + ", ".join(f'"{o}"' for o in token.origins) + "]")
        entries.append("\n".join(lines))
    path.write_text("\n\n".join(entries) + "\n")
    return path

"""Helpers for collector tests: ``audit-collector`` in a child process, HTTP calls to it, and
Kubernetes audit events in the exact JSON shape kube-apiserver sends."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from clients import pb, pb_grpc
from tests.helpers import REPO, list_all

T = TypeVar("T")

LISTENING = "listening on "


def free_port() -> int:
    "A port the OS says is free now (for a service that must come back at the same address)."
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.02) -> T:
    "Poll ``check`` until it returns something truthy; that value. Fails after ``timeout``."
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {check}")
        time.sleep(interval)


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CollectorProcess:
    """``audit-collector KIND ...`` in a child process; stderr (its logs) goes to a file."""

    process: subprocess.Popen[str]
    url: str
    log_path: Path
    stdout_lines: list[str] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> HttpAnswer:
        if self.url.startswith("https://"):
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=30, context=context or self.ssl_context
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return HttpAnswer(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()

    def post(
        self, body: bytes, token: str | None = None, path: str = "/audit", **kwargs: Any
    ) -> HttpAnswer:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("POST", path, body, headers, **kwargs)

    def stats(self) -> dict[str, Any]:
        answer = self.request("GET", "/stats")
        assert answer.status == 200, answer
        data: dict[str, Any] = answer.json()
        return data

    def logs(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        "SIGKILL: no flush, no goodbye."
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close()

    def stop(self, timeout: float = 30) -> int:
        "SIGTERM and wait; returns the exit status."
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()


def spawn_collector(
    kind: str,
    *args: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 20,
) -> CollectorProcess:
    "Start ``audit-collector KIND ARGS`` and wait for its listening line."
    log_file = log_path.open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "collectors", kind, *args],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    log_file.close()
    assert process.stdout is not None
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if LISTENING in line:
            url = line.split(LISTENING, 1)[1].strip()
            return CollectorProcess(process, url, log_path, seen)
    if process.poll() is None:
        process.kill()
    process.wait()
    raise AssertionError(
        f"audit-collector {kind} did not start:\n{''.join(seen)}\n{log_path.read_text()}"
    )


def run_collector(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    "``audit-collector ARGS`` to completion (for start-up errors and --help)."
    return subprocess.run(
        [sys.executable, "-m", "collectors", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


# -- reading what the service stored -----------------------------------------------------


def origin_events(
    stub: pb_grpc.AuditServiceStub,
    origins: tuple[str, ...],
    metadata: tuple[tuple[str, str], ...] = (),
    snapshots: bool = True,
) -> list[pb.AuditEvent]:
    "Every event of those origins in the service, in the order they were recorded."
    request = pb.ListRequest(
        filters=[pb.Filter(field="origin", op=pb.FILTER_OP_EQUALS, values=list(origins))],
        order_by="recorded_at asc",
        page_size=1000,
        include_snapshots=snapshots,
    )
    return list(list_all(stub, request, metadata))


def wait_for_origin_events(
    stub: pb_grpc.AuditServiceStub,
    origins: tuple[str, ...],
    count: int,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 20,
) -> list[pb.AuditEvent]:
    "Wait until the service holds ``count`` events of ``origins`` (fails if it holds more)."

    def enough() -> list[pb.AuditEvent] | None:
        events = origin_events(stub, origins, metadata)
        assert len(events) <= count, [
            (e.identifier, pb.Operation.Name(e.operation), dict(e.context)) for e in events
        ]
        return events if len(events) == count else None

    return wait_until(enough, timeout=timeout, interval=0.05)


def k8s_events(
    stub: pb_grpc.AuditServiceStub,
    metadata: tuple[tuple[str, str], ...] = (),
    snapshots: bool = True,
) -> list[pb.AuditEvent]:
    "Every K8S_EXPORTER event in the service, oldest first."
    return origin_events(stub, ("K8S_EXPORTER",), metadata, snapshots)


def wait_for_k8s_events(
    stub: pb_grpc.AuditServiceStub,
    count: int,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 20,
) -> list[pb.AuditEvent]:
    "Wait until the service holds ``count`` K8S_EXPORTER events (fails if it holds more)."
    return wait_for_origin_events(stub, ("K8S_EXPORTER",), count, metadata, timeout)


# -- Kubernetes audit events, as kube-apiserver encodes them -----------------------------

AUDIT_API = "audit.k8s.io/v1"


def now_stamp(offset_ms: float = 0.0) -> str:
    "A MicroTime as the apiserver writes it: UTC, six fraction digits, Z."
    moment = datetime.now(UTC) + timedelta(milliseconds=offset_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def audit_event(
    *,
    verb: str,
    resource: str,
    name: str = "",
    namespace: str = "default",
    stage: str = "ResponseComplete",
    level: str = "RequestResponse",
    code: int = 200,
    username: str = "alice@example.com",
    groups: tuple[str, ...] = ("system:authenticated",),
    api_group: str = "",
    api_version: str = "v1",
    uid: str = "",
    subresource: str = "",
    request_object: dict[str, Any] | None = None,
    response_object: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    impersonated: str = "",
    audit_id: str | None = None,
    received: str | None = None,
    with_type_meta: bool = False,
) -> dict[str, Any]:
    """One ``audit.k8s.io/v1`` Event, its keys in the order of the Go struct (which is the
    order encoding/json writes them in). ``with_type_meta``: as a line of the JSON audit log
    (kind and apiVersion first); items of a webhook EventList carry neither."""
    base = f"/apis/{api_group}/{api_version}" if api_group else f"/api/{api_version}"
    uri = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}"
    if name and verb not in ("create", "list", "deletecollection"):
        uri += f"/{name}"
    if subresource:
        uri += f"/{subresource}"
    event: dict[str, Any] = {}
    if with_type_meta:
        event.update(kind="Event", apiVersion=AUDIT_API)
    event["level"] = level
    event["auditID"] = audit_id or str(uuid.uuid4())
    event["stage"] = stage
    event["requestURI"] = uri
    event["verb"] = verb
    event["user"] = {"username": username, "groups": list(groups)}
    if impersonated:
        event["impersonatedUser"] = {"username": impersonated, "groups": ["system:authenticated"]}
    event["sourceIPs"] = ["10.0.0.7"]
    event["userAgent"] = "kubectl/v1.29.3 (linux/amd64) kubernetes/6813625"
    ref: dict[str, Any] = {"resource": resource}
    if namespace:
        ref["namespace"] = namespace
    if name and verb != "create":
        ref["name"] = name
    if uid:
        ref["uid"] = uid
    if api_group:
        ref["apiGroup"] = api_group
    ref["apiVersion"] = api_version
    if subresource:
        ref["subresource"] = subresource
    event["objectRef"] = ref
    received = received or now_stamp()
    if stage != "RequestReceived":
        event["responseStatus"] = status if status is not None else {"metadata": {}, "code": code}
    if request_object is not None and level in ("Request", "RequestResponse"):
        event["requestObject"] = request_object
    if (
        response_object is not None
        and level == "RequestResponse"
        and stage not in ("RequestReceived",)
    ):
        event["responseObject"] = response_object
    event["requestReceivedTimestamp"] = received
    event["stageTimestamp"] = received if stage == "RequestReceived" else now_stamp(3)
    event["annotations"] = {
        "authorization.k8s.io/decision": "forbid" if code == 403 else "allow",
        "authorization.k8s.io/reason": "",
    }
    return event


def go_json(value: Any) -> bytes:
    "JSON as Go's encoding/json writes it: compact, UTF-8, with <, > and & escaped."
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode()


def event_list(items: list[dict[str, Any]]) -> bytes:
    "The body of one webhook POST: an ``audit.k8s.io/v1`` EventList."
    return go_json({"kind": "EventList", "apiVersion": AUDIT_API, "metadata": {}, "items": items})


def config_map(
    name: str,
    data: dict[str, str],
    *,
    namespace: str = "default",
    uid: str | None = None,
    resource_version: int = 1000,
) -> dict[str, Any]:
    "A ConfigMap as the apiserver returns it, managedFields included."
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid.uuid4()),
            "resourceVersion": str(resource_version),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {".": {}, "f:color": {}}},
                }
            ],
        },
        "data": data,
    }


def create_config_map_events(count: int, prefix: str) -> Iterator[dict[str, Any]]:
    "``count`` ConfigMap creates, each in its own request (ResponseComplete only)."
    for i in range(count):
        name = f"{prefix}-{i:04d}"
        obj = config_map(name, {"index": str(i)})
        yield audit_event(
            verb="create",
            resource="configmaps",
            name=name,
            code=201,
            request_object={"kind": "ConfigMap", "apiVersion": "v1", "data": obj["data"]},
            response_object=obj,
        )

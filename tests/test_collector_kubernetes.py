"""``audit-collector kubernetes`` end to end: real HTTP POSTs of EventList bodies shaped exactly
as kube-apiserver's webhook sends them, a real collector process, a real audit-service (with a
tokens file: the collector records with a recorder token limited to K8S_EXPORTER), and what the
service stored, read back over gRPC."""

from __future__ import annotations

import json
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from clients import pb
from clients._values import struct_to_dict
from collectors import kubernetes
from tests.collector_helpers import (
    CollectorProcess,
    audit_event,
    config_map,
    create_config_map_events,
    event_list,
    free_port,
    go_json,
    k8s_events,
    run_collector,
    spawn_collector,
    wait_for_k8s_events,
    wait_until,
)
from tests.helpers import TestServer, Token, start_server, write_tokens_file

RECORDER = Token(
    "k8s-prod-collector", "recorder", "rec-" + secrets.token_hex(16), ("K8S_EXPORTER",)
)
ADMIN = Token("admin@example.com", "admin", "adm-" + secrets.token_hex(16))
WEBHOOK_TOKEN = "wh-" + secrets.token_hex(16)


@dataclass
class Rig:
    """A service (restartable at the same address) and collectors pointed at it."""

    tmp: Path
    port: int = field(default_factory=free_port)
    server: TestServer | None = None
    collectors: list[CollectorProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = write_tokens_file(self.tmp / "tokens.toml", [RECORDER, ADMIN])
        self.recorder_token = self.tmp / "recorder.token"
        self.recorder_token.write_text(RECORDER.value + "\n")
        self.webhook_token = self.tmp / "webhook.token"
        self.webhook_token.write_text(f"# the apiserver's token\n{WEBHOOK_TOKEN}\n")
        self.spool = self.tmp / "spool" / "k8s.db"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_service(self) -> TestServer:
        assert self.server is None
        self.server = start_server(
            self.tmp / "audit.db", dev=False, tokens=str(self.tokens), listen=self.endpoint
        )
        return self.server

    def stop_service(self) -> None:
        assert self.server is not None
        self.server.close()
        self.server = None

    def start_collector(self, *extra: str, webhook_auth: bool = True) -> CollectorProcess:
        args = [
            "--service",
            self.endpoint,
            "--token-file",
            str(self.recorder_token),
            "--spool",
            str(self.spool),
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "prod-eu-1",
            "--max-backoff",
            "0.5",
            *extra,
        ]
        if webhook_auth:
            args += ["--webhook-token-file", str(self.webhook_token)]
        collector = spawn_collector("kubernetes", *args, log_path=self.tmp / "collector.log")
        self.collectors.append(collector)
        return collector

    def events(self, count: int, timeout: float = 20) -> list[pb.AuditEvent]:
        assert self.server is not None
        return wait_for_k8s_events(self.server.stub, count, ADMIN.metadata, timeout)

    def stored(self) -> list[pb.AuditEvent]:
        assert self.server is not None
        return k8s_events(self.server.stub, ADMIN.metadata)

    def diff(self, event_id: str) -> pb.GetDiffResponse:
        assert self.server is not None
        response: pb.GetDiffResponse = self.server.stub.GetDiff(
            pb.GetDiffRequest(id=event_id), metadata=ADMIN.metadata
        )
        return response

    def close(self) -> None:
        for collector in self.collectors:
            if collector.process.poll() is None:
                collector.kill()
        if self.server is not None:
            self.stop_service()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    setup = Rig(tmp_path)
    try:
        yield setup
    finally:
        setup.close()


def snapshot(struct: Any) -> dict[str, Any]:
    return struct_to_dict(struct)


def apply_patch(diff: pb.GetDiffResponse) -> dict[str, Any]:
    operations = []
    for op in diff.patch:
        item: dict[str, Any] = {"op": op.op, "path": op.path}
        if op.HasField("value"):
            item["value"] = json.loads(json.dumps(_value(op.value)))
        if op.op in ("move", "copy"):
            item["from"] = getattr(op, "from")
        operations.append(item)
    result: dict[str, Any] = jsonpatch.apply_patch(snapshot(diff.before), operations)
    return result


def _value(value: Any) -> Any:
    from clients._values import value_to_python

    return value_to_python(value)


# -- the mapping, over real HTTP -------------------------------------------------------------

# One `kubectl create configmap` as kube-apiserver 1.29's webhook backend sends it: the
# RequestReceived and ResponseComplete events of the same request in one EventList.
PAIR_TEMPLATE = (
    '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"level":'
    '"RequestResponse","auditID":"8e2a34b1-5f0c-4c55-9d8e-1c1a5d0b2f61","stage":"RequestReceived",'
    '"requestURI":"/api/v1/namespaces/payments/configmaps?fieldManager=kubectl-create\\u0026'
    'fieldValidation=Strict","verb":"create","user":{"username":"alice@example.com","groups":'
    '["platform-team","system:authenticated"]},"impersonatedUser":{"username":"deploy-bot",'
    '"groups":["system:authenticated"]},"sourceIPs":["10.0.0.7","192.168.1.20"],"userAgent":'
    '"kubectl/v1.29.3 (linux/amd64) kubernetes/6813625","objectRef":{"resource":"configmaps",'
    '"namespace":"payments","apiVersion":"v1"},"requestObject":{"kind":"ConfigMap","apiVersion":'
    '"v1","metadata":{"name":"checkout-flags","creationTimestamp":null},"data":{"color":"blue"}},'
    '"requestReceivedTimestamp":"@RECEIVED@","stageTimestamp":"@RECEIVED@"},{"level":'
    '"RequestResponse","auditID":"8e2a34b1-5f0c-4c55-9d8e-1c1a5d0b2f61","stage":"ResponseComplete",'
    '"requestURI":"/api/v1/namespaces/payments/configmaps?fieldManager=kubectl-create\\u0026'
    'fieldValidation=Strict","verb":"create","user":{"username":"alice@example.com","groups":'
    '["platform-team","system:authenticated"]},"impersonatedUser":{"username":"deploy-bot",'
    '"groups":["system:authenticated"]},"sourceIPs":["10.0.0.7","192.168.1.20"],"userAgent":'
    '"kubectl/v1.29.3 (linux/amd64) kubernetes/6813625","objectRef":{"resource":"configmaps",'
    '"namespace":"payments","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},'
    '"requestObject":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"checkout-flags",'
    '"creationTimestamp":null},"data":{"color":"blue"}},"responseObject":{"kind":"ConfigMap",'
    '"apiVersion":"v1","metadata":{"name":"checkout-flags","namespace":"payments","uid":'
    '"0b6f7f0e-2f65-4a8e-a7b5-5f0f3c1f8e11","resourceVersion":"52114","creationTimestamp":'
    '"@SECOND@","managedFields":[{"manager":"kubectl-create","operation":"Update","apiVersion":'
    '"v1","time":"@SECOND@","fieldsType":"FieldsV1","fieldsV1":{"f:data":{".":{},"f:color":{}}}}]'
    '},"data":{"color":"blue"}},"requestReceivedTimestamp":"@RECEIVED@","stageTimestamp":'
    '"@COMPLETED@","annotations":{"authorization.k8s.io/decision":"allow",'
    '"authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \\"platform-admins\\" of '
    'ClusterRole \\"cluster-admin\\" to Group \\"platform-team\\""}}]}'
)


def pair_body() -> bytes:
    from tests.collector_helpers import now_stamp

    received = now_stamp()
    return (
        PAIR_TEMPLATE.replace("@RECEIVED@", received)
        .replace("@COMPLETED@", now_stamp(4))
        .replace("@SECOND@", received[:19] + "Z")
        .encode()
    )


def test_request_received_and_response_complete_are_stored_once(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector()
    body = pair_body()
    answer = collector.post(body, WEBHOOK_TOKEN)
    assert answer.status == 200, answer
    assert answer.json() == {"events": 2, "spooled": 1}
    [event] = rig.events(1)
    wait_until(lambda: collector.stats()["delivered"] == 1)
    assert collector.post(body, WEBHOOK_TOKEN).status == 200  # the apiserver sent it again
    assert event.resource == pb.RESOURCE_TYPE_ENTITY
    assert event.operation == pb.OPERATION_CREATE
    assert event.origin == pb.ORIGIN_K8S_EXPORTER
    assert event.status == pb.STATUS_SUCCESS
    assert event.blueprint == "configmaps"
    assert event.identifier == "payments/checkout-flags"
    assert event.source.kind == pb.SOURCE_KIND_USER
    assert event.source.id == event.source.name == "alice@example.com"
    assert event.recorded_by == RECORDER.principal_id
    assert event.idempotency_key.startswith("k8s:8e2a34b1-5f0c-4c55-9d8e-1c1a5d0b2f61:")
    assert dict(event.context) == {
        "cluster": "prod-eu-1",
        "namespace": "payments",
        "audit_id": "8e2a34b1-5f0c-4c55-9d8e-1c1a5d0b2f61",
        "verb": "create",
        "response_code": "201",
        "user_agent": "kubectl/v1.29.3 (linux/amd64) kubernetes/6813625",
        "source_ips": "10.0.0.7,192.168.1.20",
        "impersonated_user": "deploy-bot",
    }
    assert not event.HasField("before")
    after = snapshot(event.after)
    assert after["data"] == {"color": "blue"}
    assert after["metadata"]["uid"] == "0b6f7f0e-2f65-4a8e-a7b5-5f0f3c1f8e11"
    assert "managedFields" not in after["metadata"]
    stats = wait_until(lambda: (s := collector.stats())["delivered"] == 2 and s)
    assert stats["kubernetes"]["ignored_stage"] == 2
    assert set(stats["kubernetes"]) <= set(kubernetes.COUNTERS)
    assert stats["duplicates"] == 1  # the service knew the idempotency key
    assert len(rig.stored()) == 1


def test_a_400_event_batch_arrives_whole(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector()
    items = list(create_config_map_events(400, "batch"))
    answer = collector.post(event_list(items), WEBHOOK_TOKEN)
    assert answer.status == 200, answer
    assert answer.json()["spooled"] == 400
    events = rig.events(400)
    assert len({e.id for e in events}) == 400
    audit_ids = {e.context["audit_id"] for e in events}
    assert audit_ids == {item["auditID"] for item in items}
    assert {e.identifier for e in events} == {f"default/batch-{i:04d}" for i in range(400)}


def test_secret_values_are_redacted_before_they_leave_the_node(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector()
    password = "hunter2-" + secrets.token_hex(8)
    encoded = "aHVudGVyMi1zZWNyZXQtdmFsdWU="
    last_applied = json.dumps({"stringData": {"password": password}})
    secret = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": "db-credentials",
            "namespace": "payments",
            "uid": "6c1d0d8e-21a4-4c0e-9d7e-55f7e2b9a001",
            "resourceVersion": "7001",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
        },
        "type": "Opaque",
        "data": {"username": encoded, "password": encoded},
    }
    create = audit_event(
        verb="create",
        resource="secrets",
        name="db-credentials",
        namespace="payments",
        code=201,
        request_object={"kind": "Secret", "stringData": {"password": password}},
        response_object=secret,
    )
    assert collector.post(event_list([create]), WEBHOOK_TOKEN).status == 200
    [event] = rig.events(1)
    after = snapshot(event.after)
    assert event.blueprint == "secrets"
    assert set(after["data"]) == {"username", "password"}
    for value in after["data"].values():
        assert value.startswith("hmac-sha256:")
    annotation = after["metadata"]["annotations"][
        "kubectl.kubernetes.io/last-applied-configuration"
    ]
    assert annotation.startswith("hmac-sha256:")
    wait_until(lambda: collector.stats()["spooled"] == 0)
    assert collector.stop() == 0
    for path in [*rig.tmp.glob("audit.db*"), *rig.spool.parent.glob("k8s.db*")]:
        content = path.read_bytes()
        assert password.encode() not in content, path
        assert encoded.encode() not in content, path


def test_a_forbidden_update_is_a_failure(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector()
    message = (
        'configmaps "checkout-flags" is forbidden: User "bob@example.com" cannot update'
        ' resource "configmaps" in API group "" in the namespace "payments"'
    )
    denied = audit_event(
        verb="update",
        resource="configmaps",
        name="checkout-flags",
        namespace="payments",
        username="bob@example.com",
        code=403,
        status={
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "Forbidden",
            "details": {"name": "checkout-flags", "kind": "configmaps"},
            "code": 403,
        },
        request_object=config_map("checkout-flags", {"color": "red"}, namespace="payments"),
        response_object={"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403},
    )
    assert collector.post(event_list([denied]), WEBHOOK_TOKEN).status == 200
    [event] = rig.events(1)
    assert event.status == pb.STATUS_FAILURE
    assert event.error == message
    assert event.operation == pb.OPERATION_UPDATE
    assert event.source.id == "bob@example.com"
    assert event.context["response_code"] == "403"
    assert not event.HasField("after")
    assert not event.HasField("before")


def test_a_patch_gets_a_working_diff_from_the_previous_event_for_its_uid(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector("--blueprint", "apps/deployments=service")
    uid = "f3f1d6a2-9a51-4d9c-8f7e-2a1b3c4d5e6f"

    def deployment(replicas: int, image: str, version: int) -> dict[str, Any]:
        return {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": "checkout",
                "namespace": "payments",
                "uid": uid,
                "resourceVersion": str(version),
                "generation": version - 100,
                "labels": {"app": "checkout"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            },
            "spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": [{"name": "app", "image": image}]}},
            },
        }

    create = audit_event(
        verb="create",
        resource="deployments",
        api_group="apps",
        name="checkout",
        namespace="payments",
        code=201,
        response_object=deployment(2, "checkout:1.0", 101),
    )
    patch = audit_event(
        verb="patch",
        resource="deployments",
        api_group="apps",
        name="checkout",
        namespace="payments",
        request_object={"spec": {"replicas": 5}},
        response_object=deployment(5, "checkout:1.1", 102),
    )
    delete = audit_event(
        verb="delete",
        resource="deployments",
        api_group="apps",
        name="checkout",
        namespace="payments",
        response_object={"kind": "Status", "apiVersion": "v1", "status": "Success"},
    )
    for item in (create, patch, delete):  # each in its own POST, as separate batches
        assert collector.post(event_list([item]), WEBHOOK_TOKEN).status == 200
    created, patched, deleted = rig.events(3)
    assert [e.operation for e in (created, patched, deleted)] == [
        pb.OPERATION_CREATE,
        pb.OPERATION_UPDATE,
        pb.OPERATION_DELETE,
    ]
    assert patched.blueprint == "service"  # remapped from apps/deployments
    assert patched.context["verb"] == "patch"
    assert patched.diff_available
    diff = rig.diff(patched.id)
    assert diff.available
    before, after = snapshot(diff.before), snapshot(diff.after)
    assert before["spec"]["replicas"] == 2
    assert after["spec"]["replicas"] == 5
    assert "managedFields" not in before["metadata"]
    assert apply_patch(diff) == after
    changed = {(op.op, op.path) for op in diff.patch}
    assert ("replace", "/spec/replicas") in changed
    assert ("replace", "/spec/template/spec/containers/0/image") in changed
    gone = rig.diff(deleted.id)
    assert snapshot(gone.before) == after  # the last object seen for the uid
    assert snapshot(gone.after) == {}
    assert apply_patch(gone) == {}


# -- what is refused, and stores nothing -----------------------------------------------------


def test_malformed_and_oversized_bodies_are_refused_and_store_nothing(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector("--max-body-bytes", "20000")
    valid_items = list(create_config_map_events(1, "refused"))
    refused = {
        b"{not json": 400,
        b"\xff\xfe garbage": 400,
        b"[]": 400,
        b'{"kind":"Pod","apiVersion":"v1"}': 400,
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1beta1","items":[]}': 400,
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":{}}': 400,
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[1]}': 400,
        event_list(valid_items)[:-2]: 400,  # cut short: not JSON
        event_list(list(create_config_map_events(40, "big"))): 413,
    }
    for body, status in refused.items():
        answer = collector.post(body, WEBHOOK_TOKEN)
        assert answer.status == status, (body[:60], answer)
        assert "error" in answer.json()
    stats = collector.stats()
    assert stats["received"] == 0
    assert stats["spooled"] == 0
    assert collector.post(event_list(valid_items), WEBHOOK_TOKEN).status == 200
    [event] = rig.events(1)  # only the valid one, once
    assert event.context["audit_id"] == valid_items[0]["auditID"]


def test_a_wrong_or_missing_bearer_token_gets_401(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector()
    body = event_list(list(create_config_map_events(1, "auth")))
    for token in (None, "wrong", WEBHOOK_TOKEN + "x", WEBHOOK_TOKEN[:-1]):
        answer = collector.post(body, token)
        assert answer.status == 401, token
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert collector.stats()["received"] == 0
    assert collector.post(body, WEBHOOK_TOKEN).status == 200
    rig.events(1)
    assert "request refused: not authenticated" in collector.logs()


def test_a_client_certificate_authenticates_the_apiserver(rig: Rig) -> None:
    from tests.tls_certs import make_pki

    (rig.tmp / "pki").mkdir()
    pki = make_pki(rig.tmp / "pki")
    rig.start_service()
    collector = rig.start_collector(
        "--listen-cert-file",
        str(pki.server_cert),
        "--listen-key-file",
        str(pki.server_key),
        "--listen-client-ca-file",
        str(pki.ca_cert),
        webhook_auth=False,
    )
    assert collector.url.startswith("https://127.0.0.1:")
    anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))
    with_cert = ssl.create_default_context(cafile=str(pki.ca_cert))
    with_cert.load_cert_chain(pki.client_cert, pki.client_key)
    body = event_list(list(create_config_map_events(1, "mtls")))
    assert collector.post(body, context=anonymous).status == 401
    assert collector.request("GET", "/healthz", context=anonymous).status == 200  # probes
    assert collector.post(body, context=with_cert).status == 200
    rig.events(1)


# -- delivery guarantees -------------------------------------------------------------------


def test_sigkill_after_the_200_loses_nothing(rig: Rig) -> None:
    collector = rig.start_collector()  # the service is down: nothing can be delivered
    batches = [list(create_config_map_events(400, f"kill{b}")) for b in range(3)]
    for batch in batches:
        assert collector.post(event_list(batch), WEBHOOK_TOKEN).status == 200
    assert collector.stats()["spooled"] == 1200
    collector.kill()
    rig.start_service()
    restarted = rig.start_collector()
    events = rig.events(1200)
    assert len({e.id for e in events}) == 1200
    expected = {item["auditID"] for batch in batches for item in batch}
    assert {e.context["audit_id"] for e in events} == expected
    wait_until(lambda: restarted.stats()["spooled"] == 0)
    assert restarted.stats()["delivered"] == 1200
    assert len(rig.stored()) == 1200


def test_the_service_down_for_a_while_then_up_gets_everything_once(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector()
    first = list(create_config_map_events(300, "before-outage"))
    assert collector.post(event_list(first), WEBHOOK_TOKEN).status == 200
    rig.events(300)
    rig.stop_service()
    during = [list(create_config_map_events(200, f"outage{b}")) for b in range(3)]
    for batch in during:
        assert collector.post(event_list(batch), WEBHOOK_TOKEN).status == 200
    wait_until(lambda: collector.stats()["retried"] >= 600)  # tried, failed, kept
    stats = collector.stats()
    assert stats["spooled"] == 600
    assert stats["service"]["reachable"] is False
    rig.start_service()
    events = rig.events(900)
    assert len({e.id for e in events}) == 900
    expected = {item["auditID"] for batch in [first, *during] for item in batch}
    assert {e.context["audit_id"] for e in events} == expected
    stats = wait_until(lambda: (s := collector.stats())["spooled"] == 0 and s)
    assert stats["service"]["reachable"] is True
    assert "delivery resumed" in collector.logs()


def test_a_full_spool_answers_503_and_recovers(rig: Rig) -> None:
    collector = rig.start_collector("--spool-max-events", "500")  # the service is down
    first = list(create_config_map_events(400, "fits"))
    second = list(create_config_map_events(400, "overflows"))
    assert collector.post(event_list(first), WEBHOOK_TOKEN).status == 200
    answer = collector.post(event_list(second), WEBHOOK_TOKEN)
    assert answer.status == 503
    assert int(answer.headers["Retry-After"]) > 0
    stats = collector.stats()
    assert stats["spooled"] == 400
    assert stats["rejected_full"] == 400
    rig.start_service()
    rig.events(400)
    wait_until(lambda: collector.stats()["spooled"] == 0)
    assert collector.post(event_list(second), WEBHOOK_TOKEN).status == 200  # the retry
    events = rig.events(800)
    assert {e.context["audit_id"] for e in events} == {i["auditID"] for i in first + second}


def test_sigterm_flushes_the_spool_without_waiting_for_linger(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector("--linger-ms", "60000")
    items = list(create_config_map_events(10, "flush"))
    assert collector.post(event_list(items), WEBHOOK_TOKEN).status == 200
    assert collector.stop() == 0
    assert len(rig.stored()) == 10
    assert "left_in_spool=0" in collector.logs()


def test_events_the_service_refuses_are_dead_lettered_not_retried(rig: Rig) -> None:
    rig.start_service()
    collector = rig.start_collector()
    stale = audit_event(
        verb="create",
        resource="configmaps",
        name="ancient",
        code=201,
        received="2001-01-01T00:00:00.000000Z",
        response_object=config_map("ancient", {"a": "1"}),
    )
    stale["stageTimestamp"] = stale["requestReceivedTimestamp"]
    fresh = next(create_config_map_events(1, "fresh"))
    assert collector.post(event_list([stale, fresh]), WEBHOOK_TOKEN).status == 200
    [event] = rig.events(1)
    assert event.identifier == "default/fresh-0000"
    stats = wait_until(lambda: (s := collector.stats())["dead_lettered"] == 1 and s)
    assert stats["dead_letter_table"] == 1
    assert stats["spooled"] == 0
    logs = collector.logs()
    assert "event dead-lettered" in logs
    assert "older than the retention period" in logs


# -- start-up rules ------------------------------------------------------------------------


def test_without_sender_authentication_it_listens_on_loopback_only(rig: Rig) -> None:
    refused = run_collector(
        "kubernetes", "--listen", "0.0.0.0:0", "--spool", str(rig.spool), "--service", rig.endpoint
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in refused.stderr
    assert "/audit" in refused.stderr
    collector = rig.start_collector(webhook_auth=False)
    assert "no sender authentication configured: listening on loopback only" in collector.logs()
    body = event_list(list(create_config_map_events(1, "open")))
    assert collector.post(body).status == 200


def test_healthz_and_stats(rig: Rig) -> None:
    collector = rig.start_collector()
    health = collector.request("GET", "/healthz")
    assert health.status == 200
    assert health.json() == {"status": "ok"}
    stats = collector.stats()
    for key in ("spooled", "received", "delivered", "duplicates", "retried", "dead_lettered"):
        assert stats[key] == 0
    assert stats["kind"] == "kubernetes"
    assert collector.request("GET", "/nope").status == 404
    assert collector.request("GET", "/audit").status == 405


# -- the audit log follower ----------------------------------------------------------------


class AuditLogWriter:
    "Writes JSON audit log lines as kube-apiserver does, and rotates like its lumberjack log."

    def __init__(self, path: Path) -> None:
        self.path = path
        self.audit_ids: list[str] = []
        self.rotations = 0

    def write(self, count: int, *, split_last: bool = False) -> None:
        lines = []
        for item in create_config_map_events(count, f"log{len(self.audit_ids)}"):
            self.audit_ids.append(item["auditID"])
            line = go_json({"kind": "Event", "apiVersion": "audit.k8s.io/v1", **item})
            lines.append(line + b"\n")
        with self.path.open("ab") as out:
            if split_last:  # the last line in two writes, the follower looking in between
                *whole, last = lines
                out.write(b"".join(whole) + last[:40])
                out.flush()
                time.sleep(0.3)
                out.write(last[40:])
            else:
                out.write(b"".join(lines))

    def rotate(self) -> Path:
        self.rotations += 1
        renamed = self.path.with_name(f"audit-2026-01-10T12-00-{self.rotations:02d}.000.log")
        self.path.rename(renamed)
        self.path.touch()
        return renamed


def test_log_rotation_while_following_loses_no_line_and_duplicates_none(rig: Rig) -> None:
    rig.start_service()
    log_dir = rig.tmp / "apiserver"
    log_dir.mkdir()
    writer = AuditLogWriter(log_dir / "audit.log")
    writer.write(120)  # before the collector starts
    args = ("--no-webhook", "--audit-log", str(writer.path))
    collector = rig.start_collector(*args, webhook_auth=False)
    writer.write(80, split_last=True)
    rig.events(200)
    writer.write(150)
    writer.rotate()  # (most of) those 150 still unread in the renamed file
    writer.write(100)
    writer.rotate()
    writer.rotate()  # an empty file rotated away
    with writer.path.open("ab") as out:
        out.write(b"this is not JSON\n\n")
    writer.write(50)
    rig.events(500)
    assert collector.stop() == 0
    # While the collector is down: more lines, and a rotation it did not see happen.
    writer.write(70)
    writer.rotate()
    writer.write(30)
    restarted = rig.start_collector(*args, webhook_auth=False)
    events = rig.events(600)
    assert len({e.id for e in events}) == 600
    assert sorted(e.context["audit_id"] for e in events) == sorted(writer.audit_ids)
    stats = restarted.stats()
    assert stats["kubernetes"]["audit_log_lines"] == 100
    assert set(stats["kubernetes"]) <= set(kubernetes.COUNTERS)
    assert "finishing a rotated file first" in restarted.logs()
    assert "audit log line is not JSON; skipped" in restarted.logs()


def test_a_full_spool_pauses_the_follower_and_it_resumes_without_loss(rig: Rig) -> None:
    log_dir = rig.tmp / "apiserver"
    log_dir.mkdir()
    writer = AuditLogWriter(log_dir / "audit.log")
    writer.write(300)
    collector = rig.start_collector(  # the service is down
        "--no-webhook",
        "--audit-log",
        str(writer.path),
        "--spool-max-events",
        "100",
        webhook_auth=False,
    )
    wait_until(lambda: collector.stats()["spooled"] == 300)  # an empty spool takes a batch
    writer.write(100)
    stats = wait_until(lambda: (s := collector.stats())["kubernetes"].get("audit_log_paused") and s)
    assert stats["spooled"] == 300
    assert stats["rejected_full"] >= 100
    rig.start_service()
    events = rig.events(400)
    assert sorted(e.context["audit_id"] for e in events) == sorted(writer.audit_ids)


def test_the_service_over_tls(rig: Rig) -> None:
    from tests.tls_certs import make_pki

    (rig.tmp / "pki").mkdir()
    pki = make_pki(rig.tmp / "pki")
    rig.server = start_server(
        rig.tmp / "audit.db",
        dev=False,
        tokens=str(rig.tokens),
        listen=rig.endpoint,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
    )
    rig.server.channel.close()
    collector = rig.start_collector("--ca-file", str(pki.ca_cert))
    body = event_list(list(create_config_map_events(3, "tls")))
    assert collector.post(body, WEBHOOK_TOKEN).status == 200
    stats = wait_until(lambda: (s := collector.stats())["delivered"] == 3 and s)
    assert stats["service"]["reachable"] is True
    assert "plaintext" not in collector.logs()

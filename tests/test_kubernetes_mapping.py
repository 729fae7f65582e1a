"""The Kubernetes mapping rule by rule: audit events in, AuditEvents out (no processes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import pb
from clients._values import struct_to_dict
from collectors.kubernetes import history
from collectors.kubernetes.mapping import (
    CONTEXT_KEYS,
    Mapped,
    Mapper,
    MappingConfig,
    Redactor,
)
from collectors.runtime import Spool
from tests.collector_helpers import audit_event, config_map

KEY = b"k" * 32


def mapper(**config: Any) -> Mapper:
    return Mapper(MappingConfig(**config), Redactor(KEY))


def mapped(raw: dict[str, Any], **config: Any) -> Mapped:
    result = mapper(**config).map(raw)
    assert isinstance(result, Mapped), result
    return result


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "s.db") as opened:
        yield opened


def resolve(spool: Spool, raw: dict[str, Any], **config: Any) -> pb.AuditEvent:
    with spool.transaction() as tx:
        [event] = history.resolve_all(tx, [mapped(raw, **config)])
        return event


@pytest.mark.parametrize(
    ("verb", "operation"),
    [
        ("create", pb.OPERATION_CREATE),
        ("update", pb.OPERATION_UPDATE),
        ("patch", pb.OPERATION_UPDATE),
        ("delete", pb.OPERATION_DELETE),
        ("deletecollection", pb.OPERATION_DELETE),
    ],
)
def test_write_verbs(verb: str, operation: int) -> None:
    assert mapped(audit_event(verb=verb, resource="pods", name="web-1")).event.operation == (
        operation
    )


@pytest.mark.parametrize("verb", ["get", "list", "watch"])
def test_reads_only_with_include_reads(verb: str) -> None:
    raw = audit_event(verb=verb, resource="pods", name="web-1", level="Metadata")
    assert mapper().map(raw) == "verb"
    result = mapped(raw, include_reads=True)
    assert result.event.operation == pb.OPERATION_READ
    assert result.after is None


def test_unknown_verbs_are_ignored() -> None:
    assert mapper(include_reads=True).map(audit_event(verb="proxy", resource="pods")) == "verb"


@pytest.mark.parametrize("stage", ["RequestReceived", "ResponseStarted"])
def test_only_response_complete_and_panic_count(stage: str) -> None:
    assert mapper().map(audit_event(verb="create", resource="pods", stage=stage)) == "stage"


def test_a_panic_is_a_failure() -> None:
    raw = audit_event(verb="update", resource="pods", name="web-1", stage="Panic", code=500)
    raw["responseStatus"] = {"metadata": {}, "code": 500}
    event = mapped(raw).event
    assert event.status == pb.STATUS_FAILURE
    assert event.error == "HTTP 500"
    del raw["responseStatus"]
    assert mapped(raw).event.error == "the apiserver panicked while serving the request"


def test_malformed_and_non_resource_events_are_ignored() -> None:
    assert mapper().map("text") == "malformed"
    raw = audit_event(verb="create", resource="pods")
    del raw["auditID"]
    assert mapper().map(raw) == "malformed"
    non_resource = audit_event(verb="create", resource="pods")
    del non_resource["objectRef"]
    assert mapper().map(non_resource) == "no_object"


def test_blueprints_and_identifiers() -> None:
    core = mapped(audit_event(verb="update", resource="configmaps", name="flags"))
    assert (core.event.blueprint, core.event.identifier) == ("configmaps", "default/flags")
    apps = audit_event(verb="update", resource="deployments", api_group="apps", name="web")
    assert mapped(apps).event.blueprint == "apps/deployments"
    assert mapped(apps, blueprints={"apps/deployments": "service"}).event.blueprint == "service"
    node = mapped(audit_event(verb="patch", resource="nodes", name="node-1", namespace=""))
    assert node.event.identifier == "node-1"
    assert "namespace" not in node.event.context
    collection = mapped(audit_event(verb="deletecollection", resource="pods"))
    assert collection.event.identifier == "default/*"
    assert collection.object_key is None


def test_a_create_is_named_from_its_object() -> None:
    raw = audit_event(
        verb="create",
        resource="configmaps",
        code=201,
        request_object={"metadata": {"generateName": "cm-"}},
        response_object=config_map("cm-x7k2p", {"a": "1"}),
    )
    assert mapped(raw).event.identifier == "default/cm-x7k2p"


@pytest.mark.parametrize(
    ("username", "kind"),
    [
        ("alice@example.com", pb.SOURCE_KIND_USER),
        ("system:serviceaccount:argocd:argocd-application-controller", pb.SOURCE_KIND_INTEGRATION),
        ("system:kube-controller-manager", pb.SOURCE_KIND_SYSTEM),
        ("system:node:worker-1", pb.SOURCE_KIND_SYSTEM),
    ],
)
def test_source_kinds(username: str, kind: int) -> None:
    event = mapped(audit_event(verb="update", resource="pods", name="p", username=username)).event
    assert event.source.kind == kind
    assert event.source.id == event.source.name == username


def test_impersonation_and_context() -> None:
    raw = audit_event(verb="update", resource="pods", name="p", impersonated="deploy-bot")
    event = mapped(raw, cluster="prod").event
    assert event.source.id == "alice@example.com"  # who authenticated
    assert event.context["impersonated_user"] == "deploy-bot"
    assert event.context["cluster"] == "prod"
    assert event.context["audit_id"] == raw["auditID"]
    assert event.context["source_ips"] == "10.0.0.7"
    assert event.occurred_at.seconds > 0
    assert set(event.context) <= set(CONTEXT_KEYS)


def test_idempotency_key_is_stable_and_cannot_be_borrowed() -> None:
    raw = audit_event(verb="update", resource="pods", name="p")
    key = mapped(raw).event.idempotency_key
    assert key.startswith(f"k8s:{raw['auditID']}:")
    assert mapped(json.loads(json.dumps(raw))).event.idempotency_key == key
    forged = audit_event(verb="delete", resource="pods", name="q", audit_id=raw["auditID"])
    assert mapped(forged).event.idempotency_key != key


def test_secret_values_become_keyed_fingerprints() -> None:
    def secret_create() -> dict[str, Any]:
        secret = {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {"name": "s", "namespace": "default", "uid": "u"},
            "data": {"a": "c2VjcmV0", "b": "c2VjcmV0"},
            "stringData": {"c": "plain"},
        }
        return audit_event(verb="create", resource="secrets", code=201, response_object=secret)

    after = mapped(secret_create()).after
    assert after is not None
    assert after["data"]["a"] == after["data"]["b"]  # same value, same fingerprint
    assert after["data"]["a"] != after["stringData"]["c"]
    assert all(v.startswith("hmac-sha256:") for v in [*after["data"].values()])
    assert "c2VjcmV0" not in json.dumps(after)
    other = Mapper(MappingConfig(), Redactor(b"x" * 32)).map(secret_create())
    assert isinstance(other, Mapped)
    assert other.after is not None
    assert other.after["data"]["a"] != after["data"]["a"]  # keyed: no guessing without it


def test_status_subresource_has_snapshots_other_subresources_do_not(spool: Spool) -> None:
    obj = config_map("web", {"a": "1"})
    status = audit_event(
        verb="update", resource="pods", name="web", subresource="status", response_object=obj
    )
    assert mapped(status).after is not None
    assert mapped(status).event.context["subresource"] == "status"
    scale = audit_event(
        verb="update",
        resource="deployments",
        api_group="apps",
        name="web",
        subresource="scale",
        response_object={"kind": "Scale", "metadata": {"name": "web"}},
    )
    assert mapped(scale).after is None


def test_history_gives_updates_the_last_object_of_the_same_uid(spool: Spool) -> None:
    v1 = config_map("cm", {"a": "1"}, uid="uid-1", resource_version=10)
    v2 = config_map("cm", {"a": "2"}, uid="uid-1", resource_version=11)
    created = resolve(
        spool, audit_event(verb="create", resource="configmaps", code=201, response_object=v1)
    )
    assert not created.HasField("before")
    updated = resolve(
        spool, audit_event(verb="update", resource="configmaps", name="cm", response_object=v2)
    )
    assert struct_to_dict(updated.before)["data"] == {"a": "1"}
    assert struct_to_dict(updated.after)["data"] == {"a": "2"}
    # An older event arriving late neither becomes the object nor gets a wrong before.
    late = resolve(
        spool,
        audit_event(
            verb="update",
            resource="configmaps",
            name="cm",
            response_object=config_map("cm", {"a": "1.5"}, uid="uid-1", resource_version=10),
        ),
    )
    assert not late.HasField("before")
    assert not late.HasField("after")
    assert "newer change" in late.context["snapshots_omitted"]
    # The same name, a new uid: a new object, no before from the old one.
    recreated = config_map("cm", {"a": "new"}, uid="uid-2", resource_version=20)
    again = resolve(
        spool,
        audit_event(verb="update", resource="configmaps", name="cm", response_object=recreated),
    )
    assert not again.HasField("before")
    deleted = resolve(
        spool,
        audit_event(
            verb="delete",
            resource="configmaps",
            name="cm",
            response_object={"kind": "Status", "status": "Success"},
        ),
    )
    assert struct_to_dict(deleted.before)["data"] == {"a": "new"}
    assert not deleted.HasField("after")


def test_failed_changes_do_not_move_history(spool: Spool) -> None:
    v1 = config_map("cm", {"a": "1"}, uid="uid-1", resource_version=10)
    resolve(spool, audit_event(verb="create", resource="configmaps", code=201, response_object=v1))
    denied = resolve(
        spool,
        audit_event(
            verb="update",
            resource="configmaps",
            name="cm",
            code=403,
            response_object=config_map("cm", {"a": "X"}),
        ),
    )
    assert denied.status == pb.STATUS_FAILURE
    assert not denied.HasField("after")
    v2 = config_map("cm", {"a": "2"}, uid="uid-1", resource_version=11)
    updated = resolve(
        spool, audit_event(verb="update", resource="configmaps", name="cm", response_object=v2)
    )
    assert struct_to_dict(updated.before)["data"] == {"a": "1"}


def test_objects_nesting_too_deep_are_not_snapshots() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"x": deep}
    obj = config_map("cm", {"a": "1"})
    obj["spec"] = deep
    raw = audit_event(verb="create", resource="configmaps", code=201, response_object=obj)
    assert mapped(raw).after is None


def test_reviews_never_become_snapshots() -> None:
    review = {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.secret-bearer-token"},
        "status": {"authenticated": True, "user": {"username": "system:serviceaccount:a:b"}},
    }
    raw = audit_event(
        verb="create",
        resource="tokenreviews",
        api_group="authentication.k8s.io",
        namespace="",
        code=201,
        response_object=review,
    )
    result = mapped(raw)
    assert result.after is None
    assert "secret-bearer-token" not in str(result.event)

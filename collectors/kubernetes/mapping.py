"""Kubernetes audit events (``audit.k8s.io/v1`` ``Event``) -> auditlog events.

``Mapper.map`` turns one audit event into a ``Mapped`` (the AuditEvent without its ``before``
snapshot, which ``history`` fills in from the spool), or a short reason why it is ignored.
docs/kubernetes-collector.md has the table; in short:

- stages ResponseComplete and Panic only (RequestReceived and ResponseStarted are the same
  request again); verbs create -> CREATE, update and patch -> UPDATE, delete and
  deletecollection -> DELETE; get, list and watch -> READ only with ``include_reads``;
- resource ENTITY, blueprint ``<apiGroup>/<resource>`` (``<resource>`` for the core group),
  remappable; identifier ``<namespace>/<name>`` (``<name>`` when cluster-scoped);
- source the authenticated user (impersonation in context), origin K8S_EXPORTER;
- FAILURE when ``responseStatus.code >= 400`` (or the Panic stage), its message as the error;
- after = ``responseObject`` (an object, not a Status), ``metadata.managedFields`` stripped,
  Secret ``data``/``stringData`` values (and the last-applied annotation) replaced by keyed
  fingerprints before anything is spooled;
- idempotency key from ``auditID``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from clients import pb
from collectors.runtime.snapshots import NotASnapshot, encode_struct

STAGES = frozenset({"ResponseComplete", "Panic"})
WRITE_VERBS: dict[str, Literal["CREATE", "UPDATE", "DELETE"]] = {
    "create": "CREATE",
    "update": "UPDATE",
    "patch": "UPDATE",
    "delete": "DELETE",
    "deletecollection": "DELETE",
}
READ_VERBS = frozenset({"get", "list", "watch"})
OPERATIONS = {
    "CREATE": pb.OPERATION_CREATE,
    "UPDATE": pb.OPERATION_UPDATE,
    "DELETE": pb.OPERATION_DELETE,
    "READ": pb.OPERATION_READ,
}
SNAPSHOT_SUBRESOURCES = frozenset({"", "status"})  # their responseObject is the object itself
# Reviews (TokenReview, SubjectAccessReview, ...) are requests, not stored objects, and a
# TokenReview's body holds the bearer token under review: never a snapshot.
NO_SNAPSHOT_GROUPS = frozenset({"authentication.k8s.io", "authorization.k8s.io"})
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
FINGERPRINT_PREFIX = "hmac-sha256:"  # the same shape as the service's SECRET fingerprints
FINGERPRINT_HEX_CHARS = 16
PANIC_ERROR = "the apiserver panicked while serving the request"

# Every context key an event may carry (docs/kubernetes-collector.md has the table).
CONTEXT_KEYS = (
    "cluster",
    "namespace",
    "audit_id",
    "verb",
    "subresource",
    "response_code",
    "user_agent",
    "source_ips",
    "impersonated_user",
    "snapshots_omitted",
)

Operation = Literal["CREATE", "UPDATE", "DELETE", "READ"]


@dataclass(frozen=True)
class MappingConfig:
    cluster: str = ""
    include_reads: bool = False
    blueprints: Mapping[str, str] = field(default_factory=dict)  # default blueprint -> new


@dataclass
class Mapped:
    "One audit event as an AuditEvent, and what ``history`` needs to give it a ``before``."

    event: pb.AuditEvent  # without snapshots yet
    operation: Operation
    failed: bool
    object_key: str | None  # where the last object seen is kept; None: not one object
    uid: str
    resource_version: int | None
    after: dict[str, Any] | None  # the object after the change, cleaned and redacted
    after_struct: bytes | None  # the same as a serialized google.protobuf.Struct


class Redactor:
    "Replaces Secret values with keyed fingerprints (HMAC-SHA256 with this collector's key)."

    def __init__(self, key: bytes) -> None:
        self._key = key

    def fingerprint(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
        return FINGERPRINT_PREFIX + digest[:FINGERPRINT_HEX_CHARS]

    def redact_secret(self, obj: dict[str, Any]) -> None:
        "In place: every value of ``data`` and ``stringData``, and the last-applied annotation."
        for name in ("data", "stringData"):
            values = obj.get(name)
            if isinstance(values, dict):
                obj[name] = {k: self.fingerprint(v) for k, v in values.items()}
            elif values is not None:
                obj[name] = self.fingerprint(values)
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            annotations = metadata.get("annotations")
            if isinstance(annotations, dict) and LAST_APPLIED in annotations:
                annotations[LAST_APPLIED] = self.fingerprint(annotations[LAST_APPLIED])


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def is_secret(object_ref: Mapping[str, Any], obj: Mapping[str, Any] | None) -> bool:
    if object_ref.get("resource") == "secrets" and not object_ref.get("apiGroup"):
        return True
    return obj is not None and obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1"


def is_object(value: Any) -> bool:
    "A Kubernetes object (not a Status, not a List) that can serve as a snapshot."
    if not isinstance(value, dict) or not isinstance(value.get("metadata"), dict):
        return False
    kind = _text(value.get("kind"))
    return kind != "Status" and not kind.endswith("List")


def parse_time(text: str) -> tuple[int, int] | None:
    "RFC 3339 (``2024-01-10T12:00:00.123456Z``) as (seconds, nanos); None when malformed."
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return calendar.timegm(moment.utctimetuple()), moment.microsecond * 1000


def source_kind(username: str) -> pb.SourceKind.ValueType:
    if username.startswith("system:serviceaccount:"):
        return pb.SOURCE_KIND_INTEGRATION
    if username.startswith("system:"):
        return pb.SOURCE_KIND_SYSTEM
    return pb.SOURCE_KIND_USER


def idempotency_key(raw: Mapping[str, Any]) -> str:
    """From ``auditID``, with a short digest of the request beside it: a client may set its
    own ``Audit-ID`` header, and must not be able to hide its request behind an earlier one's
    id. The same event delivered again gets the same key."""
    user = _dict(raw.get("user"))
    parts = (
        _text(raw.get("verb")),
        _text(raw.get("requestURI")),
        _text(raw.get("requestReceivedTimestamp")),
        _text(user.get("username")),
    )
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]
    return f"k8s:{raw['auditID']}:{digest}"


def strip_managed_fields(obj: dict[str, Any]) -> None:
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)


def resource_version(obj: Mapping[str, Any] | None) -> int | None:
    if obj is None:
        return None
    text = _text(_dict(obj.get("metadata")).get("resourceVersion"))
    return int(text) if text.isdigit() else None


class Mapper:
    def __init__(self, config: MappingConfig, redactor: Redactor) -> None:
        self.config = config
        self.redactor = redactor

    def blueprint(self, object_ref: Mapping[str, Any]) -> str:
        group = _text(object_ref.get("apiGroup"))
        resource = _text(object_ref.get("resource"))
        default = f"{group}/{resource}" if group else resource
        return self.config.blueprints.get(default, default)

    def map(self, raw: Any) -> Mapped | str:
        """``raw`` (one parsed audit event) as a ``Mapped``, or why it is ignored: ``stage``,
        ``verb``, ``no_object`` (a non-resource request), ``malformed``."""
        if not isinstance(raw, dict):
            return "malformed"
        audit_id = raw.get("auditID")
        stage = raw.get("stage")
        if not isinstance(audit_id, str) or not audit_id or not isinstance(stage, str):
            return "malformed"
        if stage not in STAGES:
            return "stage"
        verb = _text(raw.get("verb"))
        operation: Operation
        if verb in WRITE_VERBS:
            operation = WRITE_VERBS[verb]
        elif verb in READ_VERBS and self.config.include_reads:
            operation = "READ"
        else:
            return "verb"
        object_ref = raw.get("objectRef")
        if not isinstance(object_ref, dict) or not _text(object_ref.get("resource")):
            return "no_object"
        return self._map(raw, audit_id, stage, verb, operation, object_ref)

    def _map(
        self,
        raw: dict[str, Any],
        audit_id: str,
        stage: str,
        verb: str,
        operation: Operation,
        object_ref: dict[str, Any],
    ) -> Mapped:
        status = _dict(raw.get("responseStatus"))
        raw_code = status.get("code")
        code = raw_code if isinstance(raw_code, int) else 0
        failed = stage == "Panic" or code >= 400
        response = _dict(raw.get("responseObject"))
        subresource = _text(object_ref.get("subresource"))
        after: dict[str, Any] | None = None
        after_struct: bytes | None = None
        if (
            not failed
            and operation != "READ"
            and verb != "deletecollection"
            and subresource in SNAPSHOT_SUBRESOURCES
            and object_ref.get("apiGroup") not in NO_SNAPSHOT_GROUPS
            and is_object(response)
        ):
            after = response
            strip_managed_fields(after)
            if is_secret(object_ref, after):
                self.redactor.redact_secret(after)
            try:
                after_struct = encode_struct(after)
            except NotASnapshot:
                after = after_struct = None
        namespace = _text(object_ref.get("namespace"))
        name = _text(object_ref.get("name")) or self._name_from_objects(raw)
        identifier = f"{namespace}/{name or '*'}" if namespace else (name or "*")
        user = _dict(raw.get("user"))
        username = _text(user.get("username")) or "unknown"
        event = pb.AuditEvent(
            idempotency_key=idempotency_key(raw),
            resource=pb.RESOURCE_TYPE_ENTITY,
            identifier=identifier,
            blueprint=self.blueprint(object_ref),
            operation=OPERATIONS[operation],
            origin=pb.ORIGIN_K8S_EXPORTER,
            source=pb.Source(kind=source_kind(username), id=username, name=username),
            status=pb.STATUS_FAILURE if failed else pb.STATUS_SUCCESS,
        )
        if failed:
            event.error = (
                _text(status.get("message"))
                or _text(status.get("reason"))
                or (f"HTTP {code}" if code >= 400 else PANIC_ERROR)
            )
        moment = parse_time(_text(raw.get("stageTimestamp"))) or parse_time(
            _text(raw.get("requestReceivedTimestamp"))
        )
        if moment is not None:
            event.occurred_at.seconds, event.occurred_at.nanos = moment
        self._context(event, raw, audit_id, verb, namespace, subresource, code)
        uid = _text(object_ref.get("uid"))
        if not uid and after is not None:
            uid = _text(_dict(after.get("metadata")).get("uid"))
        has_one_object = bool(name) and verb != "deletecollection" and operation != "READ"
        object_key = None
        if has_one_object:
            group = _text(object_ref.get("apiGroup"))
            object_key = f"{group}/{object_ref['resource']}/{namespace}/{name}"
        return Mapped(
            event=event,
            operation=operation,
            failed=failed,
            object_key=object_key,
            uid=uid,
            resource_version=resource_version(after),
            after=after,
            after_struct=after_struct,
        )

    @staticmethod
    def _name_from_objects(raw: Mapping[str, Any]) -> str:
        "A create's name is in its body, not its URL (objectRef has none)."
        for key in ("responseObject", "requestObject"):
            metadata = _dict(_dict(raw.get(key)).get("metadata"))
            name = _text(metadata.get("name"))
            if name:
                return name
        return ""

    def _context(
        self,
        event: pb.AuditEvent,
        raw: Mapping[str, Any],
        audit_id: str,
        verb: str,
        namespace: str,
        subresource: str,
        code: int,
    ) -> None:
        context = event.context
        if self.config.cluster:
            context["cluster"] = self.config.cluster
        if namespace:
            context["namespace"] = namespace
        context["audit_id"] = audit_id
        context["verb"] = verb
        if subresource:
            context["subresource"] = subresource
        if code:
            context["response_code"] = str(code)
        user_agent = _text(raw.get("userAgent"))
        if user_agent:
            context["user_agent"] = user_agent
        ips = raw.get("sourceIPs")
        if isinstance(ips, list) and ips:
            context["source_ips"] = ",".join(str(ip) for ip in ips)
        impersonated = _dict(raw.get("impersonatedUser"))
        if _text(impersonated.get("username")):
            context["impersonated_user"] = impersonated["username"]

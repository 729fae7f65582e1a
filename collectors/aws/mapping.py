"""CloudTrail records -> auditlog events.

``Mapper.map`` turns one CloudTrail record (the object CloudTrail writes in a log file's
``Records`` array, and EventBridge puts in ``detail``) into a ``Mapped`` (the AuditEvent
without its ``before``, which ``history`` fills in from the spool), or a short reason why it
is ignored. docs/aws-collector.md has the tables; in short:

- management events only; ``readOnly: true`` ones only with ``include_reads`` (as READ);
- the verb of ``eventName`` picks the operation (``VERBS``, the one table of them);
- ENTITY with blueprint ``aws.<service>`` from ``eventSource`` (remappable), identifier from
  ``resources[].ARN``, else the request's resource name, else the ``eventID``;
- console sign-ins are SIGN_IN / READ events of the user who signed in;
- source from ``userIdentity``; origin AWS_EXPORTER; FAILURE with ``errorCode``;
- after = ``requestParameters`` and ``responseElements``, secret-looking values replaced by
  keyed fingerprints before anything is spooled;
- idempotency key ``cloudtrail:<eventID>``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from clients import pb
from collectors.runtime.snapshots import NotASnapshot, encode_struct

Operation = Literal["CREATE", "UPDATE", "DELETE", "READ"]

# The verb (the first word of eventName: Create|Bucket, Run|Instances) -> the operation. A
# write event whose verb is not here is an UPDATE; a read-only one (``readOnly: true``) is a
# READ whatever its verb. docs/aws-collector.md shows this table; a test keeps them equal.
VERBS: dict[str, Operation] = {
    **dict.fromkeys(
        (
            "Create",
            "Run",
            "Register",
            "Add",
            "Allocate",
            "Import",
            "Issue",
            "Launch",
            "Request",
            "Publish",
            "Upload",
            "Provision",
            "Subscribe",
            "Copy",
            "Invite",
            "Purchase",
        ),
        "CREATE",
    ),
    **dict.fromkeys(
        (
            "Update",
            "Modify",
            "Put",
            "Set",
            "Attach",
            "Associate",
            "Enable",
            "Disable",
            "Start",
            "Stop",
            "Reboot",
            "Tag",
            "Untag",
            "Change",
            "Replace",
            "Reset",
            "Restore",
            "Authorize",
            "Revoke",
            "Apply",
            "Rotate",
            "Upgrade",
            "Assign",
            "Unassign",
            "Accept",
            "Reject",
            "Cancel",
            "Resume",
            "Suspend",
            "Activate",
            "Deactivate",
        ),
        "UPDATE",
    ),
    **dict.fromkeys(
        (
            "Delete",
            "Terminate",
            "Remove",
            "Deregister",
            "Detach",
            "Disassociate",
            "Release",
            "Unsubscribe",
            "Purge",
            "Deprovision",
            "Retire",
        ),
        "DELETE",
    ),
}
DEFAULT_WRITE: Operation = "UPDATE"
VERB_PREFIXES = ("Batch",)  # BatchDeleteImage: the verb is the word after it
_FIRST_WORD = re.compile(r"[A-Z][a-z]+")

# Where the request names the resource it acts on, in the order they are tried (after
# resources[].ARN). Keys of requestParameters; then the same in responseElements.
RESOURCE_NAME_KEYS = (
    "bucketName",
    "instanceId",
    "functionName",
    "roleName",
    "userName",
    "groupName",
    "policyArn",
    "dBInstanceIdentifier",
    "dBClusterIdentifier",
    "tableName",
    "queueUrl",
    "topicArn",
    "keyId",
    "secretId",
    "stackName",
    "clusterName",
    "repositoryName",
    "trailName",
    "groupId",
    "vpcId",
    "subnetId",
    "volumeId",
    "imageId",
    "snapshotId",
    "loadBalancerName",
    "loadBalancerArn",
    "hostedZoneId",
    "certificateArn",
    "ruleName",
    "logGroupName",
    "name",
)
# RunInstances, TerminateInstances, ...: {"instancesSet": {"items": [{"instanceId": ...}]}}
ITEM_SETS = (("instancesSet", "instanceId"),)

SIGN_IN_EVENT_TYPE = "awsconsolesignin"  # compared lower-case: records spell it both ways
SIGN_IN_SOURCE = "signin.amazonaws.com"
NOT_MANAGEMENT_CATEGORIES = frozenset({"Data", "Insight", "NetworkActivity"})

# Request parameters and response elements whose names say they hold a secret: every value
# under them becomes a keyed fingerprint. Compared lower-case, without '_' or '-'.
SECRET_NAME = re.compile(
    r"password|passwd|passphrase|secret|token|credential|privatekey|apikey|authorization"
    r"|sessionkey|signature|keymaterial|plaintext|connectionstring|userdata"
    r"|accesskey(?!id)"
)
FINGERPRINT_PREFIX = "hmac-sha256:"  # the same shape as the service's SECRET fingerprints
FINGERPRINT_HEX_CHARS = 16

# Every context key an event may carry (docs/aws-collector.md has the table).
CONTEXT_KEYS = (
    "account",
    "region",
    "event_source",
    "event_name",
    "event_id",
    "event_type",
    "request_id",
    "source_ip",
    "user_agent",
    "error_code",
    "invoked_by",
    "session_issuer",
    "mfa_used",
    "snapshots_omitted",
)

MAX_KEY_CHARS = 512  # the service refuses longer idempotency keys

OPERATIONS = {
    "CREATE": pb.OPERATION_CREATE,
    "UPDATE": pb.OPERATION_UPDATE,
    "DELETE": pb.OPERATION_DELETE,
    "READ": pb.OPERATION_READ,
}


@dataclass(frozen=True)
class MappingConfig:
    include_reads: bool = False
    blueprints: Mapping[str, str] = field(default_factory=dict)  # aws.s3 or s3.amazonaws.com


@dataclass
class Mapped:
    "One CloudTrail record as an AuditEvent, and what ``history`` needs to give it a ``before``."

    event: pb.AuditEvent  # without snapshots yet
    operation: Operation
    failed: bool
    resource_key: str | None  # where the last state recorded is kept; None: no resource name
    moment: int  # eventTime in nanoseconds since the epoch (0 when unknown)
    after_struct: bytes | None  # a serialized google.protobuf.Struct


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def record_problem(record: Any) -> str:
    "What keeps ``record`` from being a CloudTrail record ('' if nothing)."
    if not isinstance(record, dict):
        return f"a CloudTrail record is an object, not JSON {type(record).__name__}"
    missing = [k for k in ("eventID", "eventName", "eventSource") if not _text(record.get(k))]
    if missing:
        return f"not a CloudTrail record: no {', '.join(missing)}"
    return ""


def idempotency_key(event_id: str) -> str:
    """``cloudtrail:<eventID>``: the same for the EventBridge event and the log file's record.
    An id too long for the service's keys (not one CloudTrail makes) is hashed."""
    key = f"cloudtrail:{event_id}"
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "cloudtrail:sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def verb(event_name: str) -> str:
    "The first word of ``event_name`` (``Put`` of ``PutBucketPolicy``), after a Batch prefix."
    match = _FIRST_WORD.match(event_name)
    if match is None:
        return ""
    word = match.group()
    if word in VERB_PREFIXES:
        rest = _FIRST_WORD.match(event_name, match.end())
        return rest.group() if rest else word
    return word


def write_operation(event_name: str) -> Operation:
    return VERBS.get(verb(event_name), DEFAULT_WRITE)


def parse_time(text: str) -> tuple[int, int] | None:
    "``2026-01-15T10:00:00Z`` (RFC 3339) as (seconds, nanos); None when malformed."
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return calendar.timegm(moment.utctimetuple()), moment.microsecond * 1000


def is_sign_in(record: Mapping[str, Any]) -> bool:
    event_type = _text(record.get("eventType")).lower()
    if event_type == SIGN_IN_EVENT_TYPE:
        return True
    return record.get("eventSource") == SIGN_IN_SOURCE and record.get("eventName") == "ConsoleLogin"


def is_management(record: Mapping[str, Any]) -> bool:
    "Management events only: ``managementEvent: false`` and data/insight categories are not."
    if record.get("managementEvent") is False:
        return False
    return _text(record.get("eventCategory")) not in NOT_MANAGEMENT_CATEGORIES


def source(identity: Mapping[str, Any], event_type: str = "") -> pb.Source:
    """Who made the request, from ``userIdentity``: IAM users, assumed-role sessions, the root
    user and federated users are USER (id: their ARN); AWS services (and sessions of
    service-linked roles) are SYSTEM (id: the service, ``invokedBy``)."""
    kind = _text(identity.get("type"))
    arn = _text(identity.get("arn"))
    invoked_by = _text(identity.get("invokedBy"))
    principal = _text(identity.get("principalId"))
    user_name = _text(identity.get("userName"))
    account = _text(identity.get("accountId"))
    if kind == "AWSService" or (
        not kind and not arn and (invoked_by or event_type == "AwsServiceEvent")
    ):
        service = invoked_by or "aws"
        return pb.Source(kind=pb.SOURCE_KIND_SYSTEM, id=service, name=service)
    issuer = _text(_dict(_dict(identity.get("sessionContext")).get("sessionIssuer")).get("arn"))
    if kind == "AssumedRole" and ":role/aws-service-role/" in issuer:
        return pb.Source(kind=pb.SOURCE_KIND_SYSTEM, id=arn or issuer, name=_arn_tail(arn))
    if kind == "AssumedRole":
        return pb.Source(kind=pb.SOURCE_KIND_USER, id=arn or principal, name=_arn_tail(arn))
    if kind == "Root":
        return pb.Source(kind=pb.SOURCE_KIND_USER, id=arn or f"account:{account}", name="root")
    ident = arn or principal or user_name or (f"account:{account}" if account else "unknown")
    name = user_name or _arn_tail(arn) or ident
    return pb.Source(kind=pb.SOURCE_KIND_USER, id=ident, name=name)


def _arn_tail(arn: str) -> str:
    """The readable end of an ARN: ``alice`` of ``...:user/alice``, ``Role/session`` of
    ``...:assumed-role/Role/session``."""
    resource = arn.split(":", 5)[5] if arn.count(":") >= 5 else arn
    kind, slash, rest = resource.partition("/")
    return (
        rest if slash and kind in ("user", "assumed-role", "federated-user", "role") else resource
    )


class Redactor:
    "Replaces secret-looking values with keyed fingerprints (HMAC-SHA256, this collector's key)."

    def __init__(self, key: bytes) -> None:
        self._key = key

    def fingerprint(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
        return FINGERPRINT_PREFIX + digest[:FINGERPRINT_HEX_CHARS]

    def redact(self, value: Any, secret: bool = False) -> Any:
        """``value`` with every leaf under a secret-looking name fingerprinted (a new object;
        ``value`` is not changed)."""
        if isinstance(value, dict):
            return {
                key: self.redact(item, secret or is_secret_name(key)) for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.redact(item, secret) for item in value]
        if secret and value is not None:
            return self.fingerprint(value)
        return value


def is_secret_name(name: Any) -> bool:
    text = str(name).lower().replace("_", "").replace("-", "")
    return SECRET_NAME.search(text) is not None


def blueprint_default(event_source: str) -> str:
    "``s3.amazonaws.com`` -> ``aws.s3``."
    service = event_source.removesuffix(".amazonaws.com")
    return f"aws.{service}"


def resource_identifier(record: Mapping[str, Any]) -> str:
    """The changed resource: the first ``resources[].ARN``, else the request's (or response's)
    resource name, else '' (the caller falls back to the eventID)."""
    resources = record.get("resources")
    if isinstance(resources, list):
        for item in resources:
            arn = _text(_dict(item).get("ARN"))
            if arn:
                return arn
    for where in ("requestParameters", "responseElements"):
        found = _name_in(_dict(record.get(where)))
        if found:
            return found
    return ""


def _name_in(values: Mapping[str, Any]) -> str:
    for key in RESOURCE_NAME_KEYS:
        value = values.get(key)
        if isinstance(value, str) and value:
            return value
    for set_name, key in ITEM_SETS:
        items = _dict(values.get(set_name)).get("items")
        if isinstance(items, list):
            for item in items:
                value = _dict(item).get(key)
                if isinstance(value, str) and value:
                    return value
    return ""


class Mapper:
    def __init__(self, config: MappingConfig, redactor: Redactor) -> None:
        self.config = config
        self.redactor = redactor

    def blueprint(self, event_source: str) -> str:
        default = blueprint_default(event_source)
        blueprints = self.config.blueprints
        return blueprints.get(default) or blueprints.get(event_source) or default

    def map(self, record: Any) -> Mapped | str:
        """``record`` as a ``Mapped``, or why it is ignored: ``malformed`` (not a CloudTrail
        record), ``not_management`` (data, Insights and network activity events),
        ``read_only`` (``readOnly: true`` without ``include_reads``)."""
        if record_problem(record):
            return "malformed"
        if not is_management(record):
            return "not_management"
        if is_sign_in(record):
            return self._sign_in(record)
        if record.get("readOnly") is True:
            if not self.config.include_reads:
                return "read_only"
            operation: Operation = "READ"
        else:
            operation = write_operation(record["eventName"])
        return self._api_call(record, operation)

    def _api_call(self, record: dict[str, Any], operation: Operation) -> Mapped:
        identifier = resource_identifier(record)
        blueprint = self.blueprint(record["eventSource"])
        error_code = _text(record.get("errorCode"))
        failed = bool(error_code)
        event = self._event(record, pb.RESOURCE_TYPE_ENTITY, identifier or record["eventID"])
        event.blueprint = blueprint
        event.operation = OPERATIONS[operation]
        if failed:
            event.status = pb.STATUS_FAILURE
            message = _text(record.get("errorMessage"))
            event.error = f"{error_code}: {message}" if message else error_code
        after_struct = None if operation == "READ" else self._after(record)
        return Mapped(
            event=event,
            operation=operation,
            failed=failed,
            resource_key=f"{blueprint}|{identifier}" if identifier else None,
            moment=_nanos(event),
            after_struct=after_struct,
        )

    def _sign_in(self, record: dict[str, Any]) -> Mapped:
        identity = _dict(record.get("userIdentity"))
        who = (
            _text(identity.get("arn"))
            or _text(identity.get("userName"))
            or _text(identity.get("principalId"))
            or "unknown"
        )
        event = self._event(record, pb.RESOURCE_TYPE_SIGN_IN, who)
        event.operation = pb.OPERATION_READ
        outcome = _text(_dict(record.get("responseElements")).get(record["eventName"]))
        message = _text(record.get("errorMessage"))
        error_code = _text(record.get("errorCode"))
        failed = bool(error_code or message or outcome == "Failure")
        if failed:
            event.status = pb.STATUS_FAILURE
            event.error = ": ".join(p for p in (error_code, message) if p) or "Failure"
        mfa = _text(_dict(record.get("additionalEventData")).get("MFAUsed"))
        if mfa:
            event.context["mfa_used"] = mfa
        return Mapped(event, "READ", failed, None, _nanos(event), None)

    def _event(
        self, record: dict[str, Any], resource: pb.ResourceType.ValueType, identifier: str
    ) -> pb.AuditEvent:
        identity = _dict(record.get("userIdentity"))
        event = pb.AuditEvent(
            idempotency_key=idempotency_key(record["eventID"]),
            resource=resource,
            identifier=identifier,
            origin=pb.ORIGIN_AWS_EXPORTER,
            source=source(identity, _text(record.get("eventType"))),
            status=pb.STATUS_SUCCESS,
        )
        moment = parse_time(_text(record.get("eventTime")))
        if moment is not None:
            event.occurred_at.seconds, event.occurred_at.nanos = moment
        self._context(event, record, identity)
        return event

    @staticmethod
    def _context(
        event: pb.AuditEvent, record: Mapping[str, Any], identity: Mapping[str, Any]
    ) -> None:
        context = event.context
        account = _text(record.get("recipientAccountId")) or _text(identity.get("accountId"))
        pairs = (
            ("account", account),
            ("region", _text(record.get("awsRegion"))),
            ("event_source", _text(record.get("eventSource"))),
            ("event_name", _text(record.get("eventName"))),
            ("event_id", _text(record.get("eventID"))),
            ("event_type", _text(record.get("eventType"))),
            ("request_id", _text(record.get("requestID"))),
            ("source_ip", _text(record.get("sourceIPAddress"))),
            ("user_agent", _text(record.get("userAgent"))),
            ("error_code", _text(record.get("errorCode"))),
            ("invoked_by", _text(identity.get("invokedBy"))),
            (
                "session_issuer",
                _text(_dict(_dict(identity.get("sessionContext")).get("sessionIssuer")).get("arn")),
            ),
        )
        for key, value in pairs:
            if value:
                context[key] = value

    def _after(self, record: Mapping[str, Any]) -> bytes | None:
        "requestParameters and responseElements, redacted, as a Struct (None when both null)."
        after: dict[str, Any] = {}
        for key in ("requestParameters", "responseElements"):
            value = record.get(key)
            if value is not None:
                after[key] = self.redactor.redact(value)
        if not after:
            return None
        try:
            return encode_struct(after)
        except NotASnapshot:
            return None


def _nanos(event: pb.AuditEvent) -> int:
    return event.occurred_at.seconds * 1_000_000_000 + event.occurred_at.nanos

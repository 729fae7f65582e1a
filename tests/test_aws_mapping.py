"""The AWS collector's parts that need no AWS: the CloudTrail mapping, the queue messages and
log files it reads, the listing checkpoint, and the before-state kept in a real spool."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

from clients import pb
from clients._values import struct_to_dict
from collectors import aws
from collectors.aws import history, logfiles, mapping
from collectors.aws.listing import Checkpoint, Listed, Walk
from collectors.aws.mapping import Mapped, Mapper, MappingConfig, Redactor
from collectors.aws.messages import BadMessage, LogFile, cloudtrail_records, log_files
from collectors.runtime.options import Option
from collectors.runtime.spool import Spool
from tests import aws_helpers as ct
from tests.helpers import REPO
from tests.test_collector_cli import option_row

KEY = b"k" * 32


def mapper(**config: Any) -> Mapper:
    return Mapper(MappingConfig(**config), Redactor(KEY))


def mapped(record: dict[str, Any], **config: Any) -> Mapped:
    result = mapper(**config).map(record)
    assert isinstance(result, Mapped), result
    return result


# -- operations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_name", "operation"),
    [
        ("CreateBucket", "CREATE"),
        ("RunInstances", "CREATE"),
        ("RegisterTaskDefinition", "CREATE"),
        ("AddUserToGroup", "CREATE"),
        ("CreateFunction20150331", "CREATE"),
        ("PutBucketPolicy", "UPDATE"),
        ("UpdateFunctionConfiguration20150331v2", "UPDATE"),
        ("ModifyDBInstance", "UPDATE"),
        ("SetQueueAttributes", "UPDATE"),
        ("AttachRolePolicy", "UPDATE"),
        ("StopInstances", "UPDATE"),
        ("DeleteBucket", "DELETE"),
        ("TerminateInstances", "DELETE"),
        ("RemoveUserFromGroup", "DELETE"),
        ("DeregisterTaskDefinition", "DELETE"),
        ("DetachRolePolicy", "DELETE"),
        ("BatchDeleteImage", "DELETE"),
        ("AssumeRole", "UPDATE"),  # not in the table: a write is an UPDATE
        ("ConsoleLogin", "UPDATE"),
        ("lowercaseName", "UPDATE"),
    ],
)
def test_the_verb_picks_the_operation(event_name: str, operation: str) -> None:
    assert mapping.write_operation(event_name) == operation


def test_verbs_are_single_capitalized_words() -> None:
    for word in mapping.VERBS:
        assert mapping.verb(word + "Thing") == word


# -- sources -----------------------------------------------------------------------------------


def test_sources_from_user_identity() -> None:
    user = mapping.source(ct.iam_user("alice"))
    assert (user.kind, user.id, user.name) == (
        pb.SOURCE_KIND_USER,
        f"arn:aws:iam::{ct.ACCOUNT}:user/alice",
        "alice",
    )
    role = mapping.source(ct.assumed_role("Deployer", "ci-run-42"))
    assert (role.kind, role.id, role.name) == (
        pb.SOURCE_KIND_USER,
        f"arn:aws:sts::{ct.ACCOUNT}:assumed-role/Deployer/ci-run-42",
        "Deployer/ci-run-42",
    )
    service = mapping.source({"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"})
    assert (service.kind, service.id) == (pb.SOURCE_KIND_SYSTEM, "cloudtrail.amazonaws.com")
    linked = ct.assumed_role("AWSServiceRoleForAutoScaling", "AutoScaling")
    linked["sessionContext"]["sessionIssuer"]["arn"] = (
        f"arn:aws:iam::{ct.ACCOUNT}:role/aws-service-role/autoscaling.amazonaws.com/"
        "AWSServiceRoleForAutoScaling"
    )
    assert mapping.source(linked).kind == pb.SOURCE_KIND_SYSTEM
    root = mapping.source(
        {"type": "Root", "principalId": ct.ACCOUNT, "arn": f"arn:aws:iam::{ct.ACCOUNT}:root"}
    )
    assert (root.kind, root.name) == (pb.SOURCE_KIND_USER, "root")
    other = mapping.source(
        {"type": "AWSAccount", "principalId": "AIDAQRSTUVWXYZEXAMPLE", "accountId": "777788889999"}
    )
    assert (other.kind, other.id) == (pb.SOURCE_KIND_USER, "AIDAQRSTUVWXYZEXAMPLE")
    saml = mapping.source(
        {"type": "SAMLUser", "principalId": "Sample+Ex=:SamlExample", "userName": "SamlExample"}
    )
    assert (saml.id, saml.name) == ("Sample+Ex=:SamlExample", "SamlExample")
    assert mapping.source({}).id == "unknown"


# -- identifiers, blueprints, failures ------------------------------------------------------


def test_the_identifier_is_the_resource_arn_else_a_name_else_the_event_id() -> None:
    assert mapped(ct.rotate_key()).event.identifier.startswith("arn:aws:kms:")
    assert mapped(ct.create_bucket("b-1")).event.identifier == "b-1"
    assert mapped(ct.run_instances("i-1")).event.identifier == "i-1"
    nameless = ct.record(
        event_source="ec2.amazonaws.com",
        event_name="CreateDefaultVpc",
        identity=ct.iam_user(),
        request={},
        response={"vpc": {"state": "pending"}},
    )
    result = mapped(nameless)
    assert result.event.identifier == nameless["eventID"]
    assert result.resource_key is None


def test_idempotency_keys_are_the_event_id() -> None:
    record = ct.create_bucket("b")
    assert mapped(record).event.idempotency_key == f"cloudtrail:{record['eventID']}"
    record["eventID"] = "x" * 600
    key = mapped(record).event.idempotency_key
    assert key.startswith("cloudtrail:sha256:")
    assert len(key) <= 512


def test_blueprints_come_from_the_event_source_and_can_be_renamed() -> None:
    assert mapped(ct.create_bucket("b")).event.blueprint == "aws.s3"
    assert mapped(ct.run_instances()).event.blueprint == "aws.ec2"
    renamed = {"aws.s3": "storage", "ec2.amazonaws.com": "compute"}
    assert mapped(ct.create_bucket("b"), blueprints=renamed).event.blueprint == "storage"
    assert mapped(ct.run_instances(), blueprints=renamed).event.blueprint == "compute"


def test_an_error_code_is_a_failure_with_its_message() -> None:
    result = mapped(ct.denied_create_user())
    assert result.failed
    assert result.event.status == pb.STATUS_FAILURE
    assert result.event.error.startswith("AccessDenied: User: arn:aws:iam::")
    throttled = ct.create_bucket("b", error=("Throttling", ""))
    assert mapped(throttled).event.error == "Throttling"


def test_ignored_records_say_why() -> None:
    m = mapper()
    assert m.map(ct.describe_instances()) == "read_only"
    assert m.map(ct.get_object("b")) == "not_management"
    insight = ct.create_bucket("b", category="Insight")
    assert m.map(insight) == "not_management"
    assert m.map({"eventName": "CreateBucket"}) == "malformed"
    assert m.map(["not", "a", "record"]) == "malformed"
    assert isinstance(mapper(include_reads=True).map(ct.describe_instances()), Mapped)


def test_console_sign_ins_are_sign_in_reads() -> None:
    success = mapped(ct.console_login(True))
    assert success.event.resource == pb.RESOURCE_TYPE_SIGN_IN
    assert success.event.operation == pb.OPERATION_READ
    assert success.event.status == pb.STATUS_SUCCESS
    assert success.after_struct is None
    failure = mapped(ct.console_login(False))
    assert failure.event.status == pb.STATUS_FAILURE
    assert failure.event.error == "Failed authentication"
    # An older record (eventVersion 1.05, "AwsConsoleSignin"): no readOnly, no category.
    old = {
        "eventVersion": "1.05",
        "userIdentity": {"type": "IAMUser", "accountId": ct.ACCOUNT, "userName": "anaya"},
        "eventTime": ct.stamp(),
        "eventSource": "signin.amazonaws.com",
        "eventName": "ConsoleLogin",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "192.0.2.0",
        "userAgent": "Mozilla/5.0",
        "requestParameters": None,
        "responseElements": {"ConsoleLogin": "Failure"},
        "eventID": "a7654656-0417-45c6-9386-ea8231385051",
        "eventType": "AwsConsoleSignin",
    }
    result = mapped(old)
    assert result.event.identifier == "anaya"
    assert result.event.error == "Failure"


# -- redaction -------------------------------------------------------------------------------


def test_secret_looking_values_are_fingerprinted() -> None:
    redactor = Redactor(KEY)
    value = {
        "userName": "carol",
        "password": "hunter2",
        "MasterUserPassword": "p@ss",
        "credentials": {"accessKeyId": "ASIA1", "sessionToken": "tok", "expiration": None},
        "accessKeyId": "AKIA1",
        "accessKey": {"accessKeyId": "AKIA2", "secretAccessKey": "s3cr3t"},
        "tags": [{"key": "api_key", "value": "v"}],
        "nested": [{"client_secret": ["a", 1, True]}],
    }
    out = redactor.redact(value)
    assert out["userName"] == "carol"
    assert out["accessKeyId"] == "AKIA1"
    for secret in (
        out["password"],
        out["MasterUserPassword"],
        out["credentials"]["accessKeyId"],
        out["credentials"]["sessionToken"],
        out["accessKey"]["secretAccessKey"],
        *out["nested"][0]["client_secret"],
    ):
        assert isinstance(secret, str)
        assert secret.startswith("hmac-sha256:")
    assert out["credentials"]["expiration"] is None
    assert out["tags"] == [{"key": "api_key", "value": "v"}]  # the name is the value of "key"
    assert redactor.fingerprint("hunter2") == out["password"]  # stable: a diff shows a change
    assert Redactor(b"x" * 32).fingerprint("hunter2") != out["password"]
    assert value["password"] == "hunter2"  # the input is left alone


def test_the_documented_assume_role_record_keeps_no_session_token() -> None:
    result = mapped(ct.assume_role_1_05())
    assert result.after_struct is not None
    after = struct_to_dict(
        pb.AuditEvent(after=json_struct(result.after_struct)).after  # via the wire format
    )
    assert after["responseElements"]["credentials"]["sessionToken"].startswith("hmac-sha256:")
    assert ct.SESSION_TOKEN.encode() not in result.after_struct


def json_struct(data: bytes) -> Any:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    struct.MergeFromString(data)
    return struct


# -- queue messages ----------------------------------------------------------------------------


def test_eventbridge_messages_plain_bare_and_through_sns() -> None:
    record = ct.create_bucket("b")
    body = ct.envelope(record)
    assert cloudtrail_records(body) == [record]
    assert cloudtrail_records(json.dumps(record)) == [record]  # an input transformer's $.detail
    sns = json.dumps({"Type": "Notification", "MessageId": "m-1", "Message": body})
    assert cloudtrail_records(sns) == [record]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "the message body is not JSON"),
        ("null", "the message body is JSON NoneType, not an object"),
        ('{"Type": "Notification", "Message": "{"}', "the SNS notification's Message is not JSON"),
        ('{"detail-type": "EC2 Instance State-change Notification", "detail": {}}', "not an event"),
        ('{"detail-type": "AWS API Call via CloudTrail", "detail": []}', "detail is not an object"),
        ('{"detail-type": "AWS API Call via CloudTrail", "detail": {}}', "no eventID, eventName"),
        ('{"eventID": "e-1"}', "no eventName, eventSource"),
    ],
)
def test_unreadable_eventbridge_messages_say_why(body: str, reason: str) -> None:
    with pytest.raises(BadMessage, match=None) as caught:
        cloudtrail_records(body)
    assert reason in str(caught.value)


def test_notifications_name_their_log_files() -> None:
    s3_event = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-01-15T10:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "cloudtrail",
                    "bucket": {"name": "trail-bucket", "arn": "arn:aws:s3:::trail-bucket"},
                    "object": {"key": "AWSLogs/a+b%3Ac.json.gz", "size": 100, "eTag": "e"},
                },
            },
            {"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {}},
        ]
    }
    assert log_files(json.dumps(s3_event)) == [LogFile("trail-bucket", "AWSLogs/a b:c.json.gz")]
    trail = {"s3Bucket": "trail-bucket", "s3ObjectKey": ["AWSLogs/1.json.gz", "AWSLogs/2.json.gz"]}
    sns = json.dumps({"Type": "Notification", "Message": json.dumps(trail)})
    assert log_files(sns) == [
        LogFile("trail-bucket", "AWSLogs/1.json.gz"),
        LogFile("trail-bucket", "AWSLogs/2.json.gz"),
    ]
    created = {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": "trail-bucket"}, "object": {"key": "AWSLogs/3.json.gz"}},
    }
    assert log_files(json.dumps(created)) == [LogFile("trail-bucket", "AWSLogs/3.json.gz")]
    assert log_files('{"Service": "Amazon S3", "Event": "s3:TestEvent"}') == []
    for bad in (
        '{"Records": "x"}',
        '{"Records": [{"eventSource": "aws:sqs"}]}',
        '{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": 1}]}',
        '{"s3Bucket": 1, "s3ObjectKey": []}',
        '{"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": "x"}}',
        '{"anything": "else"}',
    ):
        with pytest.raises(BadMessage):
            log_files(bad)


# -- log files ---------------------------------------------------------------------------------


def test_log_files_parse_and_refuse_what_is_not_one() -> None:
    records = [ct.create_bucket("b")]
    assert logfiles.parse(ct.log_file(records)) == records
    assert logfiles.parse(json.dumps({"Records": records}).encode()) == records
    two_members = gzip.compress(b'{"Records": ') + gzip.compress(b"[]}")
    assert logfiles.parse(two_members) == []
    whole = ct.log_file(records)
    for data, reason in (
        (whole[: len(whole) // 2], "it ends before the compressed data does"),
        (b"\x1f\x8b" + b"\x00" * 20, "not a valid gzip file"),
        (gzip.compress(b"not json"), "the file is not JSON"),
        (gzip.compress(b'{"records": []}'), 'no "Records" list'),
        (gzip.compress(b"[]"), 'no "Records" list'),
        (b"plain text", "neither gzip nor a JSON object"),
    ):
        with pytest.raises(logfiles.BadLogFile) as caught:
            logfiles.parse(data)
        assert reason in str(caught.value)


def test_decompression_stops_at_its_cap() -> None:
    bomb = gzip.compress(b"0" * 2_000_000)
    with pytest.raises(logfiles.BadLogFile, match="decompresses to more than 1000000 bytes"):
        logfiles.decompress(bomb, limit=1_000_000)


def test_which_objects_are_log_files() -> None:
    assert logfiles.skip_reason(ct.log_key()) == ""
    assert logfiles.skip_reason(ct.digest_key()) == "digest"
    assert logfiles.skip_reason("AWSLogs/1/CloudTrail-Insight/us-east-1/x.json.gz") == "insight"
    assert logfiles.skip_reason("AWSLogs/1/CloudTrail/us-east-1/README.txt") == "not_a_log_file"


# -- the listing checkpoint ----------------------------------------------------------------


def test_the_checkpoint_passes_a_file_only_once_it_is_settled_and_all_before_it_are_read() -> None:
    listed = [Listed("a", 100.0), Listed("b", 100.0), Listed("c", 500.0), Listed("d", 100.0)]
    walk = Walk(Checkpoint(), listed, settled_before=200.0)
    checkpoint, frontier = walk.after("b")  # read out of order: a is not read yet
    assert checkpoint == Checkpoint("", frozenset({"b"}))
    walk.adopt(checkpoint, frontier)
    checkpoint, frontier = walk.after("a")
    assert checkpoint == Checkpoint("b", frozenset())
    walk.adopt(checkpoint, frontier)
    checkpoint, frontier = walk.after("c")  # c is too recent to pass: it stays in done
    assert checkpoint == Checkpoint("b", frozenset({"c"}))
    walk.adopt(checkpoint, frontier)
    checkpoint, frontier = walk.after("d")
    assert checkpoint == Checkpoint("b", frozenset({"c", "d"}))
    walk.adopt(checkpoint, frontier)
    later = Walk(checkpoint, listed[2:], settled_before=1000.0)
    assert later.after(None)[0] == Checkpoint("d", frozenset())
    assert Checkpoint.loads(checkpoint.dumps()) == checkpoint
    assert Checkpoint.loads(None) == Checkpoint()


# -- the last state recorded, in a real spool --------------------------------------------------


def test_history_in_the_spool(tmp_path: Path) -> None:
    m = mapper()
    with Spool(tmp_path / "spool.db") as spool:

        def resolve(*records: dict[str, Any]) -> list[pb.AuditEvent]:
            batch = [m.map(r) for r in records]
            with spool.transaction() as tx:
                events = history.resolve_all(tx, [b for b in batch if isinstance(b, Mapped)])
                for event in events:
                    tx.add(event)
            return events

        [create] = resolve(ct.create_bucket("h", event_time=ct.stamp(-30)))
        [deny, failed] = resolve(
            ct.put_bucket_policy("h", "Deny", event_time=ct.stamp(-20)),
            ct.put_bucket_policy("h", "Allow", event_time=ct.stamp(-15), error=("Denied", "no")),
        )
        assert struct_to_dict(deny.before) == struct_to_dict(create.after)
        assert not failed.HasField("before")
        [older] = resolve(ct.put_bucket_policy("h", "Allow", event_time=ct.stamp(-25)))
        assert not older.HasField("before")
        [delete] = resolve(ct.delete_bucket("h", event_time=ct.stamp(-10)))
        assert struct_to_dict(delete.before) == struct_to_dict(deny.after)
        assert spool.get_state(history.SCOPE, "aws.s3|h") is None
        [again] = resolve(ct.put_bucket_policy("h", "Deny", event_time=ct.stamp(-5)))
        assert not again.HasField("before")


# -- the docs, kept honest against the code ------------------------------------------------

AWS_DOC = (REPO / "docs" / "aws-collector.md").read_text()


@pytest.mark.parametrize("option", aws.OPTIONS, ids=lambda o: o.name)
def test_the_doc_has_a_row_for_every_option(option: Option) -> None:
    row = option_row(option)
    assert row in AWS_DOC, f"docs/aws-collector.md needs this row:\n{row}"


def test_the_option_table_has_no_stale_rows() -> None:
    flags = set(re.findall(r"^\| `(--[a-z-]+)` \| `AUDIT_COLLECTOR_", AWS_DOC, re.MULTILINE))
    assert flags == {o.flag for o in aws.OPTIONS}


@pytest.mark.parametrize("name", aws.COUNTERS)
def test_the_doc_explains_every_counter(name: str) -> None:
    assert f"| `{name}` |" in AWS_DOC


@pytest.mark.parametrize("key", mapping.CONTEXT_KEYS)
def test_the_doc_explains_every_context_key(key: str) -> None:
    assert f"| `{key}` |" in AWS_DOC


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE", "DELETE"])
def test_the_doc_shows_the_verb_table_as_the_code_has_it(operation: str) -> None:
    verbs = [verb for verb, op in mapping.VERBS.items() if op == operation]
    row = f"| {operation} | " + ", ".join(f"`{verb}`" for verb in verbs) + " |"
    assert row in AWS_DOC, f"docs/aws-collector.md needs this row:\n{row}"


def test_the_collectors_doc_links_the_aws_doc() -> None:
    collectors_doc = (REPO / "docs" / "collectors.md").read_text()
    assert "| `aws` |" in collectors_doc
    assert "(aws-collector.md)" in collectors_doc

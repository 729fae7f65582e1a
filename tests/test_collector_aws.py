"""``audit-collector aws`` end to end: a real ``moto_server`` on loopback (S3 and SQS over HTTP,
spoken to with boto3 by the tests and by the collector), CloudTrail records shaped as the
CloudTrail User Guide documents them, carried the two ways AWS carries them (EventBridge
events on SQS; gzip log files in S3, found by S3 event notifications or by listing), a real
collector process and a real audit-service (with a tokens file: the collector records with a
recorder token limited to AWS_EXPORTER), and what the service stored, read back over gRPC."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clients import pb
from clients._values import struct_to_dict
from collectors import aws
from tests import aws_helpers as ct
from tests.aws_helpers import AWS_ENV, MotoServer, start_moto, unique
from tests.collector_helpers import CollectorProcess, free_port, spawn_collector, wait_until
from tests.helpers import REPO, TestServer, Token, start_server, write_tokens_file

RECORDER = Token(
    "aws-prod-collector", "recorder", "rec-" + secrets.token_hex(16), ("AWS_EXPORTER",)
)
ADMIN = Token("admin@example.com", "admin", "adm-" + secrets.token_hex(16))


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Rig:
    """moto_server, a service (restartable at the same address) and collectors pointed at them."""

    tmp: Path
    moto: MotoServer
    port: int = field(default_factory=free_port)
    server: TestServer | None = None
    collectors: list[CollectorProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = write_tokens_file(self.tmp / "tokens.toml", [RECORDER, ADMIN])
        self.recorder_token = self.tmp / "recorder.token"
        self.recorder_token.write_text(RECORDER.value + "\n")
        self.spool = self.tmp / "spool" / "aws.db"
        self.sqs = self.moto.client("sqs")
        self.s3 = self.moto.client("s3")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_service(self) -> TestServer:
        assert self.server is None
        self.server = start_server(
            self.tmp / "audit.db", dev=False, tokens=str(self.tokens), listen=self.endpoint
        )
        return self.server

    def start_collector(self, *extra: str, poll: str = "1") -> CollectorProcess:
        args = [
            "--service",
            self.endpoint,
            "--token-file",
            str(self.recorder_token),
            "--spool",
            str(self.spool),
            "--listen",
            "127.0.0.1:0",
            "--endpoint-url",
            self.moto.endpoint,
            "--region",
            ct.REGION,
            "--poll-interval",
            poll,
            "--max-backoff",
            "0.5",
            *extra,
        ]
        collector = spawn_collector("aws", *args, log_path=self.tmp / "collector.log", env=AWS_ENV)
        self.collectors.append(collector)
        return collector

    def queue(self, name: str = "cloudtrail-events", **attributes: str) -> str:
        url: str = self.sqs.create_queue(QueueName=unique(name), Attributes=attributes)["QueueUrl"]
        return url

    def send(self, url: str, *bodies: str) -> None:
        for body in bodies:
            self.sqs.send_message(QueueUrl=url, MessageBody=body)

    def in_queue(self, url: str) -> int:
        "Messages still in the queue, visible or in flight."
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def bucket(self, name: str = "cloudtrail-logs") -> str:
        bucket = unique(name)
        self.s3.create_bucket(Bucket=bucket)
        return bucket

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    def events(self, count: int, timeout: float = 20) -> list[pb.AuditEvent]:
        assert self.server is not None
        return ct.wait_for_aws_events(self.server.stub, count, ADMIN.metadata, timeout)

    def stored(self) -> list[pb.AuditEvent]:
        assert self.server is not None
        return ct.aws_events(self.server.stub, ADMIN.metadata)

    def diff(self, event_id: str) -> pb.GetDiffResponse:
        assert self.server is not None
        response: pb.GetDiffResponse = self.server.stub.GetDiff(
            pb.GetDiffRequest(id=event_id), metadata=ADMIN.metadata
        )
        return response

    def spool_state(self, scope: str) -> dict[str, bytes]:
        with sqlite3.connect(self.spool) as conn:
            rows = conn.execute("SELECT key, value FROM state WHERE scope = ?", (scope,))
            return {key: bytes(value) for key, value in rows}

    def close(self) -> None:
        for collector in self.collectors:
            if collector.process.poll() is None:
                collector.kill()
        if self.server is not None:
            self.server.close()
            self.server = None


@pytest.fixture
def rig(tmp_path: Path, moto: MotoServer) -> Iterator[Rig]:
    setup = Rig(tmp_path, moto)
    try:
        yield setup
    finally:
        setup.close()


def snapshot(struct: Any) -> dict[str, Any]:
    return struct_to_dict(struct)


def by_name(events: list[pb.AuditEvent]) -> dict[str, pb.AuditEvent]:
    return {
        e.context["event_name"] + ("!" if e.status == pb.STATUS_FAILURE else ""): e for e in events
    }


def settled(collector: CollectorProcess, **counts: int) -> dict[str, Any]:
    "Wait until the collector's own counters reach ``counts`` and its spool is empty."

    def check() -> dict[str, Any] | None:
        stats = collector.stats()
        own = stats["aws"]
        reached = all(own.get(name, 0) >= value for name, value in counts.items())
        return stats if reached and stats["spooled"] == 0 else None

    return wait_until(check)


# -- EventBridge on SQS ------------------------------------------------------------------------


def test_eventbridge_events_map_to_audit_events(rig: Rig) -> None:
    rig.start_service()
    url = rig.queue()
    records = [
        ct.create_bucket("payments-invoices"),
        ct.run_instances("i-0f3e4a2b1c0d9e8f7"),
        ct.rotate_key(),
        ct.console_login(success=True),
        ct.console_login(success=False, identity=ct.iam_user("mallory")),
        ct.denied_create_user(),
        ct.describe_instances(),  # read-only: not recorded by default
        ct.get_object("payments-invoices"),  # a data event: never recorded
    ]
    rig.send(url, *(ct.envelope(r) for r in records))
    collector = rig.start_collector("--queue-url", url)
    events = rig.events(6)
    stats = settled(collector, messages_deleted=8)
    assert stats["aws"]["ignored_read_only"] == 1
    assert stats["aws"]["ignored_not_management"] == 1
    assert set(stats["aws"]) <= {*aws.COUNTERS, "sources"}
    assert stats["aws"]["sources"]["eventbridge"]["reads"] == url
    assert rig.in_queue(url) == 0
    named = by_name(events)

    bucket = named["CreateBucket"]
    assert bucket.resource == pb.RESOURCE_TYPE_ENTITY
    assert bucket.operation == pb.OPERATION_CREATE
    assert bucket.origin == pb.ORIGIN_AWS_EXPORTER
    assert bucket.status == pb.STATUS_SUCCESS
    assert bucket.blueprint == "aws.s3"
    assert bucket.identifier == "payments-invoices"
    assert bucket.source.kind == pb.SOURCE_KIND_USER
    assert bucket.source.id == f"arn:aws:iam::{ct.ACCOUNT}:user/alice"
    assert bucket.source.name == "alice"
    assert bucket.recorded_by == RECORDER.principal_id
    assert bucket.idempotency_key == f"cloudtrail:{records[0]['eventID']}"
    assert (
        bucket.occurred_at.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") == records[0]["eventTime"]
    )
    assert dict(bucket.context) == {
        "account": ct.ACCOUNT,
        "region": "us-east-1",
        "event_source": "s3.amazonaws.com",
        "event_name": "CreateBucket",
        "event_id": records[0]["eventID"],
        "event_type": "AwsApiCall",
        "request_id": records[0]["requestID"],
        "source_ip": "198.51.100.23",
        "user_agent": records[0]["userAgent"],
    }
    assert snapshot(bucket.after) == {
        "requestParameters": {
            "bucketName": "payments-invoices",
            "Host": "payments-invoices.s3.amazonaws.com",
        }
    }
    assert not bucket.HasField("before")

    launch = named["RunInstances"]
    assert launch.operation == pb.OPERATION_CREATE
    assert launch.blueprint == "aws.ec2"
    assert launch.identifier == "i-0f3e4a2b1c0d9e8f7"  # from responseElements.instancesSet
    assert launch.source.kind == pb.SOURCE_KIND_USER
    assert launch.source.id.startswith(f"arn:aws:sts::{ct.ACCOUNT}:assumed-role/AWSReservedSSO_")
    assert launch.source.name.endswith("/bob@example.com")
    assert launch.context["session_issuer"].startswith(f"arn:aws:iam::{ct.ACCOUNT}:role/")
    after = snapshot(launch.after)
    assert after["responseElements"]["reservationId"] == "r-0123456789abcdef0"
    assert after["requestParameters"]["userData"].startswith("hmac-sha256:")

    rotation = named["RotateKey"]
    assert rotation.source.kind == pb.SOURCE_KIND_SYSTEM
    assert rotation.source.id == rotation.source.name == "kms.amazonaws.com"
    assert rotation.identifier.startswith(f"arn:aws:kms:us-east-1:{ct.ACCOUNT}:key/")
    assert rotation.operation == pb.OPERATION_UPDATE
    assert rotation.context["event_type"] == "AwsServiceEvent"
    assert rotation.context["invoked_by"] == "kms.amazonaws.com"

    signed_in = named["ConsoleLogin"]
    assert signed_in.resource == pb.RESOURCE_TYPE_SIGN_IN
    assert signed_in.operation == pb.OPERATION_READ
    assert signed_in.identifier == f"arn:aws:iam::{ct.ACCOUNT}:user/anaya"
    assert signed_in.status == pb.STATUS_SUCCESS
    assert signed_in.context["mfa_used"] == "Yes"
    assert not signed_in.HasField("after")
    refused = named["ConsoleLogin!"]
    assert refused.status == pb.STATUS_FAILURE
    assert refused.error == "Failed authentication"
    assert refused.source.name == "mallory"

    denied = named["CreateUser!"]
    assert denied.operation == pb.OPERATION_CREATE
    assert denied.blueprint == "aws.iam"
    assert denied.identifier == "mallory"
    assert denied.error.startswith("AccessDenied: User: arn:aws:iam::")
    assert denied.context["error_code"] == "AccessDenied"


def test_each_change_gets_the_last_recorded_state_as_before(rig: Rig) -> None:
    rig.start_service()
    url = rig.queue()
    bucket = "payments-audit"
    records = [
        ct.create_bucket(bucket, event_time=ct.stamp(-40)),
        ct.put_bucket_policy(bucket, "Deny", event_time=ct.stamp(-30)),
        ct.put_bucket_policy(bucket, "Allow", event_time=ct.stamp(-20)),
        ct.delete_bucket(bucket, event_time=ct.stamp(-10)),
        # SQS does not keep order: a change older than what was recorded neither gets the
        # newer state as its before nor replaces it.
        ct.put_bucket_policy("payments-late", "Deny", event_time=ct.stamp(-5)),
        ct.put_bucket_policy("payments-late", "Allow", event_time=ct.stamp(-50)),
    ]
    rig.send(url, *(ct.envelope(r) for r in records))
    collector = rig.start_collector("--queue-url", url)
    events = {e.idempotency_key: e for e in rig.events(6)}
    settled(collector, messages_deleted=6)
    create, deny, allow, delete, late_deny, late_allow = (
        events[f"cloudtrail:{r['eventID']}"] for r in records
    )
    assert [e.operation for e in (create, deny, allow, delete)] == [
        pb.OPERATION_CREATE,
        pb.OPERATION_UPDATE,
        pb.OPERATION_UPDATE,
        pb.OPERATION_DELETE,
    ]
    assert not create.HasField("before")
    assert snapshot(deny.before) == snapshot(create.after)
    assert snapshot(allow.before) == snapshot(deny.after)
    assert snapshot(delete.before) == snapshot(allow.after)
    diff = rig.diff(allow.id)
    assert diff.available
    changed = {(op.op, op.path) for op in diff.patch}
    assert ("replace", "/requestParameters/bucketPolicy/Statement/0/Effect") in changed
    assert not late_deny.HasField("before")  # the first change seen to that bucket
    assert not late_allow.HasField("before")
    assert late_allow.context["snapshots_omitted"].startswith("before: arrived after")


def test_read_only_events_are_reads_with_include_reads(rig: Rig) -> None:
    rig.start_service()
    url = rig.queue()
    records = [ct.describe_instances(), ct.get_object("reports")]
    rig.send(url, *(ct.envelope(r) for r in records))
    collector = rig.start_collector("--queue-url", url, "--include-reads")
    [event] = rig.events(1)
    assert event.operation == pb.OPERATION_READ
    assert event.context["event_name"] == "DescribeInstances"
    assert event.identifier == records[0]["eventID"]  # no resource named: the eventID
    assert not event.HasField("after")
    assert not event.diff_available
    stats = settled(collector, messages_deleted=2)
    assert stats["aws"]["ignored_not_management"] == 1


def test_unreadable_messages_are_dead_lettered_and_deleted(rig: Rig) -> None:
    rig.start_service()
    url = rig.queue()
    token = "IQoJb3JpZ2luX2VjE" + secrets.token_hex(20)
    truncated = '{"detail": {"responseElements": {"credentials": {"sessionToken": "' + token
    s3_event = json.loads(ct.envelope(ct.create_bucket("x")))
    s3_event["detail-type"] = "Object Created"
    no_event_id = json.loads(ct.envelope(ct.create_bucket("y")))
    del no_event_id["detail"]["eventID"]
    bad = [
        "this is not JSON",
        truncated,
        "[1, 2, 3]",
        json.dumps(s3_event),
        json.dumps(no_event_id),
        json.dumps({"hello": "world"}),
    ]
    good = ct.create_bucket("payments-after-the-bad-ones")
    rig.send(url, *bad, ct.envelope(good))
    collector = rig.start_collector("--queue-url", url)
    [event] = rig.events(1)
    assert event.identifier == "payments-after-the-bad-ones"
    stats = settled(collector, messages_deleted=7, messages_dead_lettered=6)
    assert stats["aws"]["messages_dead_lettered"] == 6
    assert rig.in_queue(url) == 0
    assert collector.request("GET", "/healthz").json() == {"status": "ok"}
    letters = {k: json.loads(v) for k, v in rig.spool_state("aws.dead-letter").items()}
    assert len(letters) == 6
    assert all(k.startswith(f"sqs:{url}:") for k in letters)
    reasons = sorted(letter["reason"] for letter in letters.values())
    assert any(r.startswith("the message body is not JSON") for r in reasons)
    assert "the message body is JSON list, not an object" in reasons
    assert "not an event from CloudTrail: detail-type 'Object Created'" in reasons
    assert "not a CloudTrail record: no eventID" in reasons
    assert any(r.startswith("neither an EventBridge event") for r in reasons)
    assert collector.stop() == 0
    for path in rig.spool.parent.glob("aws.db*"):
        assert token.encode() not in path.read_bytes(), path
    assert "dead-lettered" in collector.logs()


def test_a_message_is_deleted_only_after_its_events_are_spooled(rig: Rig) -> None:
    # No service yet, and room for one event: the first message is spooled and deleted; the
    # second waits for room, held by the collector and then left to SQS, never deleted.
    url = rig.queue(VisibilityTimeout="1")
    first, second = ct.create_bucket("first-bucket"), ct.create_bucket("second-bucket")
    rig.send(url, ct.envelope(first))
    collector = rig.start_collector("--queue-url", url, "--spool-max-events", "1")
    wait_until(lambda: collector.stats()["aws"].get("messages_deleted") == 1)
    assert rig.in_queue(url) == 0
    rig.send(url, ct.envelope(second))
    wait_until(lambda: collector.stats()["aws"].get("spool_full_pauses", 0) >= 2)
    assert rig.in_queue(url) == 1  # received, not deleted (its visibility timeout runs out)
    assert collector.stats()["spooled"] == 1
    collector.kill()  # a crash while holding it: SQS delivers it again
    rig.start_service()
    collector = rig.start_collector("--queue-url", url)
    events = rig.events(2)
    assert {e.identifier for e in events} == {"first-bucket", "second-bucket"}
    settled(collector, messages_deleted=1)
    assert rig.in_queue(url) == 0


def test_the_same_event_from_both_sources_is_stored_once(rig: Rig) -> None:
    rig.start_service()
    url = rig.queue()
    bucket = rig.bucket()
    change = ct.put_bucket_policy("payments-shared")
    rig.send(url, ct.envelope(change), ct.envelope(change))  # EventBridge delivers at least once
    rig.put(bucket, ct.log_key(), ct.log_file([change]))  # and CloudTrail's log file has it too
    collector = rig.start_collector("--queue-url", url, "--bucket", bucket, poll="0.5")
    [event] = rig.events(1)
    assert event.idempotency_key == f"cloudtrail:{change['eventID']}"
    stats = settled(collector, messages_deleted=2, log_files_read=1)
    assert stats["aws"]["mapped"] == 3
    assert len(rig.stored()) == 1


# -- log files in S3 ------------------------------------------------------------------------


def corrupt_gzip() -> bytes:
    whole = ct.log_file([ct.create_bucket("never-read")])
    return whole[: len(whole) // 2]


def test_log_files_are_listed_from_a_checkpoint_and_a_restart_resumes_there(rig: Rig) -> None:
    rig.start_service()
    bucket = rig.bucket()
    now = datetime.now(UTC)
    east_1, east_2 = ct.log_key("us-east-1", now), ct.log_key("us-east-1", now)
    rig.put(bucket, east_1, ct.log_file([ct.create_bucket("east-a"), ct.create_bucket("east-b")]))
    rig.put(bucket, east_2, ct.log_file([ct.run_instances("i-east")]))
    rig.put(bucket, ct.log_key("eu-west-1", now), ct.log_file([ct.create_bucket("west-a")]))
    rig.put(bucket, ct.digest_key(), ct.digest_file())
    rig.put(bucket, ct.log_key("us-east-1", now - timedelta(minutes=5)), corrupt_gzip())
    collector = rig.start_collector("--bucket", bucket, "--prefix", "AWSLogs/", poll="0.5")
    events = rig.events(4)
    assert {e.identifier for e in events} == {"east-a", "east-b", "i-east", "west-a"}
    settled(collector, log_files_read=3, log_files_dead_lettered=1)
    letters = rig.spool_state("aws.dead-letter")
    [(key, value)] = letters.items()
    assert key.startswith(f"s3://{bucket}/AWSLogs/{ct.ACCOUNT}/CloudTrail/us-east-1/")
    assert json.loads(value)["reason"].startswith("not a valid gzip file")
    checkpoints = rig.spool_state("aws.s3-listing")
    assert set(checkpoints) == {
        f"s3://{bucket}/AWSLogs/{ct.ACCOUNT}/CloudTrail/{region}/"
        for region in ("us-east-1", "eu-west-1")
    }

    # Files that sort before ones already read: a region that sorts earlier, and a file of
    # the same minute whose unique part sorts first. A single StartAfter would skip both.
    late_west = ct.log_key("eu-west-1", now)
    late_east = east_1.rsplit("_", 1)[0] + "_0000000000000000.json.gz"
    rig.put(bucket, late_west, ct.log_file([ct.create_bucket("west-late")]))
    rig.put(bucket, late_east, ct.log_file([ct.create_bucket("east-late")]))
    rig.events(6)
    settled(collector, log_files_read=5)
    assert collector.stop() == 0

    newer = ct.log_key("us-east-1")
    rig.put(bucket, newer, ct.log_file([ct.create_bucket("after-restart")]))
    collector = rig.start_collector("--bucket", bucket, "--prefix", "AWSLogs/", poll="0.5")
    events = rig.events(7)
    assert "after-restart" in {e.identifier for e in events}
    stats = settled(collector, log_files_read=1)
    wait_until(lambda: collector.stats()["aws"].get("objects_listed", 0) >= 6)
    stats = collector.stats()
    assert stats["aws"]["log_files_read"] == 1  # only the new file: the rest was done
    assert stats["aws"].get("log_files_dead_lettered", 0) == 0
    assert stats["duplicates"] == 0
    assert stats["aws"]["sources"]["s3-listing"]["partitions"] == 2


def test_a_restart_resumes_inside_a_big_log_file(rig: Rig) -> None:
    # No service, and room for one chunk of 1,000 records: the second chunk waits; a SIGKILL
    # then, and the restart goes on from record 1,000 of the same file.
    bucket = rig.bucket()
    records = [ct.create_bucket(f"bulk-{i:04d}") for i in range(2500)]
    key = ct.log_key()
    rig.put(bucket, key, ct.log_file(records))
    collector = rig.start_collector("--bucket", bucket, "--spool-max-events", "1000", poll="0.5")
    wait_until(lambda: collector.stats()["aws"].get("spool_full_pauses", 0) >= 1)
    assert rig.spool_state("aws.s3-files") == {f"s3://{bucket}/{key}": b"1000"}
    assert collector.stats()["spooled"] == 1000
    collector.kill()
    rig.start_service()
    collector = rig.start_collector("--bucket", bucket, poll="0.5")
    events = rig.events(2500, timeout=60)
    assert {e.identifier for e in events} == {f"bulk-{i:04d}" for i in range(2500)}
    stats = settled(collector, log_files_read=1)
    assert stats["aws"]["log_file_records"] == 2500
    assert stats["aws"]["mapped"] == 1500  # the rest was in the spool already
    assert rig.spool_state("aws.s3-files") == {}
    assert "resuming a log file" in collector.logs()


def test_secret_looking_values_never_reach_the_spool_or_the_service(rig: Rig) -> None:
    rig.start_service()
    bucket = rig.bucket()
    rig.put(bucket, ct.log_key("us-east-2"), ct.log_file([ct.assume_role_1_05()]))
    collector = rig.start_collector("--bucket", bucket, poll="0.5")
    [event] = rig.events(1)
    assert event.context["event_name"] == "AssumeRole"
    assert event.identifier == f"arn:aws:iam::{ct.ACCOUNT}:role/EC2-dev"
    credentials = snapshot(event.after)["responseElements"]["credentials"]
    assert set(credentials) == {"sessionToken", "accessKeyId", "expiration"}
    assert all(value.startswith("hmac-sha256:") for value in credentials.values())
    assert snapshot(event.after)["requestParameters"]["roleSessionName"] == "JohnDoe-EC2-dev"
    settled(collector, log_files_read=1)
    assert collector.stop() == 0
    token = ct.SESSION_TOKEN.encode()
    for path in [*rig.tmp.glob("audit.db*"), *rig.spool.parent.glob("aws.db*")]:
        assert token not in path.read_bytes(), path


def test_s3_event_notifications_announce_the_log_files(rig: Rig) -> None:
    rig.start_service()
    bucket = rig.bucket()
    url = rig.queue("cloudtrail-notifications")
    arn = rig.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rig.s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "AWSLogs/"}]}},
                }
            ]
        },
    )
    # S3 sends an s3:TestEvent to the queue when the configuration is put, as AWS does.
    collector = rig.start_collector("--notifications-queue-url", url, "--bucket", bucket)
    rig.put(bucket, ct.log_key(), ct.log_file([ct.create_bucket("n-1"), ct.run_instances("i-n")]))
    rig.put(bucket, ct.log_key("eu-central-1"), ct.log_file([ct.create_bucket("n-2")]))
    rig.put(bucket, ct.digest_key(), ct.digest_file())
    rig.put(bucket, ct.log_key(), corrupt_gzip())
    events = rig.events(3)
    assert {e.identifier for e in events} == {"n-1", "i-n", "n-2"}
    stats = settled(collector, messages_deleted=5, log_files_read=2, log_files_dead_lettered=1)
    assert stats["aws"]["log_files_skipped"] == 1  # the digest file
    assert stats["aws"]["notifications_without_log_files"] == 1  # the s3:TestEvent
    assert rig.in_queue(url) == 0
    assert stats["aws"]["sources"]["s3-notifications"]["failing"] is False


def test_a_queue_that_does_not_exist_is_reported_and_retried(rig: Rig) -> None:
    missing = f"{rig.moto.endpoint}/123456789012/{unique('no-such-queue')}"
    collector = rig.start_collector("--queue-url", missing, poll="0.5")

    def failing() -> dict[str, Any] | None:
        source = collector.stats()["aws"]["sources"]["eventbridge"]
        return source if source["failing"] else None

    source = wait_until(failing)
    assert "NonExistentQueue" in source["last_error"] or "QueueDoesNotExist" in source["last_error"]
    assert collector.request("GET", "/healthz").json() == {"status": "ok"}
    assert collector.stop() == 0
    assert "reading failed; will retry" in collector.logs()


# -- the command ------------------------------------------------------------------------------


def run_aws(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collectors", "aws", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
        env={**os.environ, **(env if env is not None else AWS_ENV)},
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], None, "nothing to collect: give --queue-url, --bucket, or --notifications-queue-url"),
        (
            ["--queue-url", "http://127.0.0.1:9/q", "--prefix", "AWSLogs/"],
            None,
            "--prefix needs --bucket",
        ),
        (
            [
                "--queue-url",
                "http://127.0.0.1:9/q",
                "--notifications-queue-url",
                "http://127.0.0.1:9/q",
            ],
            None,
            "name the same queue",
        ),
        (["--bucket", "b", "--poll-interval", "0"], None, "--poll-interval must be above 0"),
        (["--bucket", "b", "--endpoint-url", "not a url"], None, "--endpoint-url"),
        (["--bucket", "b", "--profile", "nobody"], None, "--profile"),
        (
            ["--bucket", "b"],
            {k: v for k, v in AWS_ENV.items() if k != "AWS_DEFAULT_REGION"},
            "no AWS region",
        ),
        (
            ["--bucket", "b", "--region", "us-east-1"],
            {k: v for k, v in AWS_ENV.items() if not k.endswith(("_KEY_ID", "_ACCESS_KEY"))},
            "no AWS credentials found",
        ),
    ],
)
def test_start_up_errors_say_what_to_change(
    args: list[str], env: dict[str, str] | None, message: str, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full_env = {**base, **(env if env is not None else AWS_ENV)}
    result = subprocess.run(
        [sys.executable, "-m", "collectors", "aws", "--spool", f"{tmp_path}/s.db", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
        env=full_env,
    )
    assert result.returncode == 2, result
    assert message in result.stderr


def test_help_lists_every_option() -> None:
    result = run_aws("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in aws.OPTIONS:
        assert option.flag in text
        assert option.env in text

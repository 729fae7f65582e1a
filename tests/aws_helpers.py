"""Helpers for the AWS collector's tests: ``moto_server`` in a child process on a free loopback
port (moto's server mode, spoken to over HTTP with boto3), CloudTrail records in the shape the
CloudTrail User Guide documents, the EventBridge envelope around them, and log files as
CloudTrail writes them to S3.

Nothing here reaches AWS: every client has ``endpoint_url`` on 127.0.0.1, the credentials are
dummies, and the instance-metadata lookup of boto3's credential chain is turned off."""

from __future__ import annotations

import gzip
import json
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from clients import pb, pb_grpc
from tests.collector_helpers import origin_events, wait_for_origin_events

REGION = "us-east-1"
ACCOUNT = "111122223333"
# The environment of every boto3 user here (the collector child process included).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "NO_PROXY": "127.0.0.1,localhost",
}
_RUNNING_ON = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")


@dataclass
class MotoServer:
    "``moto_server`` (moto's stand-alone server: S3, SQS, ... over real HTTP) on loopback."

    process: subprocess.Popen[str]
    endpoint: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_moto(timeout: float = 30) -> MotoServer:
    "Start ``moto_server -H 127.0.0.1 -p 0`` and wait until it says where it listens."
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **AWS_ENV},
    )
    assert process.stdout is not None
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    stdout = process.stdout

    def pump() -> None:  # keep reading, so its request log never fills the pipe
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
        match = _RUNNING_ON.search(line)
        if match:
            return MotoServer(process, match.group(1))
    process.kill()
    process.wait()
    raise AssertionError("moto_server did not start:\n" + "".join(seen))


def unique(name: str) -> str:
    "A bucket or queue name no other test uses (one moto_server serves the whole module)."
    return f"{name}-{secrets.token_hex(4)}"


# -- what the service stored ---------------------------------------------------------------


def aws_events(
    stub: pb_grpc.AuditServiceStub, metadata: tuple[tuple[str, str], ...] = ()
) -> list[pb.AuditEvent]:
    "Every AWS_EXPORTER event, oldest first, with snapshots."
    return origin_events(stub, ("AWS_EXPORTER",), metadata)


def wait_for_aws_events(
    stub: pb_grpc.AuditServiceStub,
    count: int,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 20,
) -> list[pb.AuditEvent]:
    "Wait until the service holds ``count`` AWS_EXPORTER events (fails if it holds more)."
    return wait_for_origin_events(stub, ("AWS_EXPORTER",), count, metadata, timeout)


# -- CloudTrail records, as the CloudTrail User Guide documents them -------------------------


def stamp(offset_seconds: float = 0.0) -> str:
    "An eventTime as CloudTrail writes it: UTC, whole seconds, Z."
    moment = datetime.now(UTC) + timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _tls() -> dict[str, Any]:
    return {
        "tlsVersion": "TLSv1.3",
        "cipherSuite": "TLS_AES_128_GCM_SHA256",
        "clientProvidedHostHeader": "",
    }


def iam_user(name: str = "alice") -> dict[str, Any]:
    return {
        "type": "IAMUser",
        "principalId": "AIDACKCEVSQ6C2EXAMPLE",
        "arn": f"arn:aws:iam::{ACCOUNT}:user/{name}",
        "accountId": ACCOUNT,
        "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
        "userName": name,
    }


def assumed_role(
    role: str = "AWSReservedSSO_AdministratorAccess_0123456789abcdef",
    session: str = "bob@example.com",
) -> dict[str, Any]:
    return {
        "type": "AssumedRole",
        "principalId": f"AROAIDPPEZS35WEXAMPLE:{session}",
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}",
        "accountId": ACCOUNT,
        "accessKeyId": "ASIAQRSTUVWXYZEXAMPLE",
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": "AROAIDPPEZS35WEXAMPLE",
                "arn": f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/{role}",
                "accountId": ACCOUNT,
                "userName": role,
            },
            "webIdFederationData": {},
            "attributes": {"creationDate": stamp(-600), "mfaAuthenticated": "false"},
        },
    }


def record(
    *,
    event_source: str,
    event_name: str,
    identity: dict[str, Any],
    request: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    read_only: bool | None = False,
    error: tuple[str, str] | None = None,
    resources: list[dict[str, Any]] | None = None,
    event_type: str = "AwsApiCall",
    event_id: str | None = None,
    event_time: str | None = None,
    user_agent: str = "aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0 exe/x86_64.ubuntu.22",
    category: str = "Management",
    region: str = REGION,
) -> dict[str, Any]:
    "One CloudTrail record, its fields in the order CloudTrail writes them (eventVersion 1.09)."
    data: dict[str, Any] = {
        "eventVersion": "1.09",
        "userIdentity": identity,
        "eventTime": event_time or stamp(),
        "eventSource": event_source,
        "eventName": event_name,
        "awsRegion": region,
        "sourceIPAddress": "198.51.100.23",
        "userAgent": user_agent,
    }
    if error is not None:
        data["errorCode"], data["errorMessage"] = error
    data["requestParameters"] = request
    data["responseElements"] = response
    data["requestID"] = str(uuid.uuid4())
    data["eventID"] = event_id or str(uuid.uuid4())
    if read_only is not None:
        data["readOnly"] = read_only
    if resources is not None:
        data["resources"] = resources
    data["eventType"] = event_type
    data["managementEvent"] = category == "Management"
    data["recipientAccountId"] = ACCOUNT
    data["eventCategory"] = category
    data["tlsDetails"] = _tls()
    return data


def create_bucket(bucket: str, **kwargs: Any) -> dict[str, Any]:
    "An IAM user creates an S3 bucket."
    kwargs.setdefault("identity", iam_user())
    return record(
        event_source="s3.amazonaws.com",
        event_name="CreateBucket",
        request={"bucketName": bucket, "Host": f"{bucket}.s3.amazonaws.com"},
        **kwargs,
    )


def put_bucket_policy(bucket: str, effect: str = "Deny", **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("identity", iam_user())
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": effect,
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }
    return record(
        event_source="s3.amazonaws.com",
        event_name="PutBucketPolicy",
        request={
            "bucketName": bucket,
            "Host": f"{bucket}.s3.amazonaws.com",
            "policy": "",
            "bucketPolicy": policy,
        },
        **kwargs,
    )


def delete_bucket(bucket: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("identity", iam_user())
    return record(
        event_source="s3.amazonaws.com",
        event_name="DeleteBucket",
        request={"bucketName": bucket, "Host": f"{bucket}.s3.amazonaws.com"},
        **kwargs,
    )


def run_instances(instance_id: str = "i-0f3e4a2b1c0d9e8f7", **kwargs: Any) -> dict[str, Any]:
    "An SSO user (an assumed-role session) launches an EC2 instance."
    kwargs.setdefault("identity", assumed_role())
    return record(
        event_source="ec2.amazonaws.com",
        event_name="RunInstances",
        request={
            "instancesSet": {
                "items": [{"imageId": "ami-0abcdef1234567890", "minCount": 1, "maxCount": 1}]
            },
            "instanceType": "t3.micro",
            "blockDeviceMapping": {},
            "monitoring": {"enabled": False},
            "disableApiTermination": False,
            "disableApiStop": False,
            "clientToken": str(uuid.uuid4()),
            "userData": "<sensitiveDataRemoved>",
        },
        response={
            "requestId": str(uuid.uuid4()),
            "reservationId": "r-0123456789abcdef0",
            "ownerId": ACCOUNT,
            "groupSet": {},
            "instancesSet": {
                "items": [
                    {
                        "instanceId": instance_id,
                        "imageId": "ami-0abcdef1234567890",
                        "instanceState": {"code": 0, "name": "pending"},
                        "instanceType": "t3.micro",
                        "placement": {"availabilityZone": "us-east-1a", "tenancy": "default"},
                    }
                ]
            },
        },
        user_agent="AWS Internal",
        **kwargs,
    )


def rotate_key(**kwargs: Any) -> dict[str, Any]:
    "KMS rotates a key by itself: an AWS service event (no user behind it)."
    key_id = "1234abcd-12ab-34cd-56ef-1234567890ab"
    data = record(
        event_source="kms.amazonaws.com",
        event_name="RotateKey",
        identity={"accountId": ACCOUNT, "invokedBy": "kms.amazonaws.com"},
        resources=[
            {
                "accountId": ACCOUNT,
                "type": "AWS::KMS::Key",
                "ARN": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}",
            }
        ],
        event_type="AwsServiceEvent",
        user_agent="kms.amazonaws.com",
        **kwargs,
    )
    data["sourceIPAddress"] = "kms.amazonaws.com"
    data["serviceEventDetails"] = {"keyId": key_id}
    del data["tlsDetails"]
    return data


def console_login(success: bool = True, **kwargs: Any) -> dict[str, Any]:
    "An IAM user signs in to the AWS Management Console."
    kwargs.setdefault("identity", iam_user("anaya"))
    data = record(
        event_source="signin.amazonaws.com",
        event_name="ConsoleLogin",
        response={"ConsoleLogin": "Success" if success else "Failure"},
        event_type="AwsConsoleSignIn",
        user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        **kwargs,
    )
    if not success:
        data = {**data, "errorMessage": "Failed authentication"}
    data["additionalEventData"] = {
        "LoginTo": "https://console.aws.amazon.com/console/home?state=hashArgs%23&isauthcode=true",
        "MobileVersion": "No",
        "MFAUsed": "Yes",
    }
    return data


def denied_create_user(**kwargs: Any) -> dict[str, Any]:
    "An IAM user tries to create another user and is refused."
    kwargs.setdefault("identity", iam_user("bob"))
    return record(
        event_source="iam.amazonaws.com",
        event_name="CreateUser",
        request={"userName": "mallory"},
        error=(
            "AccessDenied",
            f"User: arn:aws:iam::{ACCOUNT}:user/bob is not authorized to perform:"
            f" iam:CreateUser on resource: arn:aws:iam::{ACCOUNT}:user/mallory because no"
            " identity-based policy allows the iam:CreateUser action",
        ),
        **kwargs,
    )


def describe_instances(**kwargs: Any) -> dict[str, Any]:
    "A read-only call."
    kwargs.setdefault("identity", assumed_role())
    return record(
        event_source="ec2.amazonaws.com",
        event_name="DescribeInstances",
        request={"instancesSet": {}, "filterSet": {}},
        read_only=True,
        **kwargs,
    )


def get_object(bucket: str, **kwargs: Any) -> dict[str, Any]:
    "An S3 data event (not a management event)."
    kwargs.setdefault("identity", iam_user())
    return record(
        event_source="s3.amazonaws.com",
        event_name="GetObject",
        request={"bucketName": bucket, "key": "report.csv", "Host": f"{bucket}.s3.amazonaws.com"},
        read_only=True,
        category="Data",
        resources=[
            {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/report.csv"},
            {"accountId": ACCOUNT, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"},
        ],
        **kwargs,
    )


SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLETOKEN" + secrets.token_hex(24)


def assume_role_1_05() -> dict[str, Any]:
    """The cross-account AssumeRole record of the IAM User Guide (eventVersion 1.05: no
    readOnly field), whose responseElements hold the new session's token."""
    return {
        "eventVersion": "1.05",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAQRSTUVWXYZEXAMPLE",
            "arn": "arn:aws:iam::777788889999:user/JohnDoe",
            "accountId": "777788889999",
            "accessKeyId": "AKIAQRSTUVWXYZEXAMPLE",
            "userName": "JohnDoe",
        },
        "eventTime": stamp(),
        "eventSource": "sts.amazonaws.com",
        "eventName": "AssumeRole",
        "awsRegion": "us-east-2",
        "sourceIPAddress": "192.0.2.101",
        "userAgent": "aws-cli/1.11.10 Python/2.7.8 Linux/3.2.45 botocore/1.4.67",
        "requestParameters": {
            "roleArn": f"arn:aws:iam::{ACCOUNT}:role/EC2-dev",
            "roleSessionName": "JohnDoe-EC2-dev",
            "sourceIdentity": "JohnDoe",
            "serialNumber": "arn:aws:iam::777788889999:mfa",
        },
        "responseElements": {
            "credentials": {
                "sessionToken": SESSION_TOKEN,
                "accessKeyId": "ASIAQRSTUVWXYZEXAMPLE",
                "expiration": "Jul 18, 2014 4:07:39 PM",
            },
            "assumedRoleUser": {
                "assumedRoleId": "AIDAQRSTUVWXYZEXAMPLE:JohnDoe-EC2-dev",
                "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/EC2-dev/JohnDoe-EC2-dev",
            },
            "sourceIdentity": "JohnDoe",
        },
        "resources": [
            {
                "ARN": f"arn:aws:iam::{ACCOUNT}:role/EC2-dev",
                "accountId": ACCOUNT,
                "type": "AWS::IAM::Role",
            }
        ],
        "requestID": str(uuid.uuid4()),
        "sharedEventID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "eventType": "AwsApiCall",
        "recipientAccountId": ACCOUNT,
    }


# -- how the records travel --------------------------------------------------------------

DETAIL_TYPES = {
    "AwsApiCall": "AWS API Call via CloudTrail",
    "AwsConsoleSignIn": "AWS Console Signin via CloudTrail",
    "AwsServiceEvent": "AWS Service Event via CloudTrail",
}


def envelope(detail: dict[str, Any]) -> str:
    "The body of the SQS message an EventBridge rule delivers for ``detail``."
    service = detail["eventSource"].removesuffix(".amazonaws.com")
    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPES[detail.get("eventType", "AwsApiCall")],
        "source": f"aws.{service}",
        "account": ACCOUNT,
        "time": detail["eventTime"],
        "region": detail["awsRegion"],
        "resources": [],
        "detail": detail,
    }
    return json.dumps(event, separators=(",", ":"))


def log_key(region: str = REGION, when: datetime | None = None, account: str = ACCOUNT) -> str:
    "Where CloudTrail puts a log file: ``AWSLogs/<account>/CloudTrail/<region>/Y/M/D/...``."
    moment = when or datetime.now(UTC)
    unique_part = secrets.token_hex(8)
    return (
        f"AWSLogs/{account}/CloudTrail/{region}/{moment:%Y/%m/%d}/"
        f"{account}_CloudTrail_{region}_{moment:%Y%m%dT%H%MZ}_{unique_part}.json.gz"
    )


def digest_key(region: str = REGION, account: str = ACCOUNT) -> str:
    moment = datetime.now(UTC)
    return (
        f"AWSLogs/{account}/CloudTrail-Digest/{region}/{moment:%Y/%m/%d}/"
        f"{account}_CloudTrail-Digest_{region}_management-trail_{region}_{moment:%Y%m%dT%H%M%SZ}"
        ".json.gz"
    )


def log_file(records: list[dict[str, Any]]) -> bytes:
    'A log file as CloudTrail delivers it: gzip of ``{"Records": [...]}``.'
    return gzip.compress(json.dumps({"Records": records}, separators=(",", ":")).encode())


def digest_file() -> bytes:
    "A digest file: hashes of log files, no events."
    return gzip.compress(
        json.dumps(
            {
                "awsAccountId": ACCOUNT,
                "digestStartTime": stamp(-3600),
                "digestEndTime": stamp(),
                "digestS3Bucket": "trail-bucket",
                "digestSignatureAlgorithm": "SHA256withRSA",
                "logFiles": [],
            }
        ).encode()
    )

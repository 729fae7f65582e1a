"""What arrives on the SQS queues, parsed: CloudTrail records from EventBridge, and the log
files S3 (or CloudTrail itself) announces.

``cloudtrail_records(body)`` reads a message of ``--queue-url``:

- the EventBridge envelope an EventBridge rule delivers to an SQS target::

    {"version": "0", "id": "...", "detail-type": "AWS API Call via CloudTrail",
     "source": "aws.s3", "account": "111122223333", "time": "...", "region": "us-east-1",
     "resources": [], "detail": {<the CloudTrail record>}}

  (any ``detail-type`` CloudTrail sends: ``AWS API Call via CloudTrail``, ``AWS Console Signin
  via CloudTrail``, ``AWS Console Action via CloudTrail``, ``AWS Service Event via
  CloudTrail``);
- a bare CloudTrail record (a rule whose input transformer sends ``$.detail``);
- either inside an SNS notification (``{"Type": "Notification", "Message": "..."}``), for a
  rule that targets an SNS topic the queue subscribes to without raw delivery.

``log_files(body)`` reads a message of ``--notifications-queue-url``:

- an S3 event notification (``{"Records": [{"eventSource": "aws:s3", "eventName":
  "ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}``, keys
  URL-encoded as S3 sends them); ``s3:TestEvent`` and events other than ObjectCreated are
  nothing to read;
- CloudTrail's own SNS notification of a delivery (``{"s3Bucket": ..., "s3ObjectKey": [...]}``);
- EventBridge's ``Object Created`` event from S3;
- any of them inside an SNS notification.

Either raises ``BadMessage`` with the reason for anything else; the message is then
dead-lettered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from collectors.aws.mapping import record_problem

CLOUDTRAIL_DETAIL_SUFFIX = "via CloudTrail"


class BadMessage(Exception):
    "A queue message that cannot be read: dead-lettered with this reason, never retried."


@dataclass(frozen=True)
class LogFile:
    bucket: str
    key: str


def _at(value: Any, *path: str) -> Any:
    "``value[path[0]][path[1]]...``, or None where an object or key is missing."
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _json(body: str) -> Any:
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise BadMessage(f"the message body is not JSON: {exc}") from None
    if isinstance(value, dict) and value.get("Type") == "Notification" and "Message" in value:
        message = value["Message"]
        if not isinstance(message, str):
            raise BadMessage("an SNS notification whose Message is not text")
        try:
            value = json.loads(message)
        except ValueError as exc:
            raise BadMessage(f"the SNS notification's Message is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadMessage(f"the message body is JSON {type(value).__name__}, not an object")
    return value


def cloudtrail_records(body: str) -> list[dict[str, Any]]:
    "The CloudTrail record(s) of one EventBridge message. :raises BadMessage:"
    value = _json(body)
    if "detail-type" in value or "detail" in value:
        detail_type = value.get("detail-type")
        if not isinstance(detail_type, str) or not detail_type.endswith(CLOUDTRAIL_DETAIL_SUFFIX):
            raise BadMessage(f"not an event from CloudTrail: detail-type {detail_type!r}")
        record = value.get("detail")
        if not isinstance(record, dict):
            raise BadMessage("the EventBridge event's detail is not an object")
    elif "eventID" in value or "eventVersion" in value:
        record = value
    else:
        raise BadMessage(
            "neither an EventBridge event (no detail-type) nor a CloudTrail record (no eventID)"
        )
    problem = record_problem(record)
    if problem:
        raise BadMessage(problem)
    return [record]


def log_files(body: str) -> list[LogFile]:
    "The objects a notification announces ([] for a test event). :raises BadMessage:"
    value = _json(body)
    if value.get("Event") == "s3:TestEvent":
        return []
    if "Records" in value:
        return _s3_notification(value["Records"])
    if "s3Bucket" in value and "s3ObjectKey" in value:
        bucket, keys = value["s3Bucket"], value["s3ObjectKey"]
        if not isinstance(bucket, str) or not isinstance(keys, list):
            raise BadMessage("a CloudTrail notification without s3Bucket text and s3ObjectKey list")
        return [LogFile(bucket, key) for key in keys if isinstance(key, str) and key]
    if value.get("source") == "aws.s3" and "detail" in value:
        if value.get("detail-type") != "Object Created":
            return []
        bucket = _at(value, "detail", "bucket", "name")
        key = _at(value, "detail", "object", "key")
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise BadMessage("an S3 Object Created event without bucket.name and object.key")
        return [LogFile(bucket, key)]
    raise BadMessage(
        "not an S3 event notification (no Records), a CloudTrail notification (no s3Bucket)"
        " or an EventBridge S3 event"
    )


def _s3_notification(records: Any) -> list[LogFile]:
    if not isinstance(records, list):
        raise BadMessage("an S3 event notification whose Records is not a list")
    found: list[LogFile] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
            raise BadMessage(f"Records[{index}] is not an S3 event (eventSource aws:s3)")
        name = record.get("eventName")
        if not isinstance(name, str) or not name.startswith("ObjectCreated:"):
            continue  # removals, restores, ...: nothing to read
        bucket = _at(record, "s3", "bucket", "name")
        key = _at(record, "s3", "object", "key")
        if not isinstance(bucket, str) or not isinstance(key, str) or not key:
            raise BadMessage(f"Records[{index}] has no s3.bucket.name and s3.object.key")
        found.append(LogFile(bucket, unquote_plus(key)))
    return found

"""``audit-collector aws``: CloudTrail management events, as audit events with origin
AWS_EXPORTER, read the two ways CloudTrail is wired up:

1. ``--queue-url``: an SQS queue an EventBridge rule sends ``AWS API Call via CloudTrail``
   events to (``queues.EventBridgeHandler``);
2. ``--bucket`` (and ``--prefix``): CloudTrail's gzip log files in S3, announced by S3 event
   notifications on ``--notifications-queue-url`` (``queues.NotificationsHandler``), or found
   by listing the prefix from a saved checkpoint (``listing.PrefixPoller``).

docs/aws-collector.md describes the mapping (``mapping``), the options and the AWS set-up.
"""

from __future__ import annotations

import secrets
from typing import Any

from collectors.aws.connect import Aws, AwsSettings
from collectors.aws.deadletters import DeadLetters
from collectors.aws.ingest import Ingest
from collectors.aws.listing import PrefixPoller
from collectors.aws.mapping import Mapper, MappingConfig, Redactor
from collectors.aws.queues import EventBridgeHandler, NotificationsHandler, QueueReader
from collectors.aws.s3files import LogFileReader
from collectors.aws.status import SourceStatus
from collectors.runtime import Option, Plugin, Runtime, StartupError

# This collector's counters in /stats (docs/aws-collector.md explains each).
COUNTERS = (
    "mapped",
    "ignored_read_only",
    "ignored_not_management",
    "ignored_malformed",
    "messages_received",
    "messages_deleted",
    "messages_dead_lettered",
    "delete_failures",
    "notifications_without_log_files",
    "log_files_read",
    "log_file_records",
    "log_files_skipped",
    "log_files_dead_lettered",
    "log_files_outside_prefix",
    "objects_listed",
    "spool_full_pauses",
)

KEY_SCOPE = "aws"
REDACTION_KEY = "redaction-key"
DEFAULT_POLL_INTERVAL = 10.0

OPTIONS: tuple[Option, ...] = (
    Option(
        "queue_url",
        "",
        "SQS queue that an EventBridge rule sends CloudTrail events to (AWS API Call via"
        " CloudTrail)",
        metavar="URL",
    ),
    Option("bucket", "", "S3 bucket CloudTrail delivers its log files to", metavar="NAME"),
    Option(
        "prefix",
        "",
        "read only log files whose keys start with P (e.g. AWSLogs/111122223333/CloudTrail/)",
        metavar="P",
    ),
    Option(
        "notifications_queue_url",
        "",
        "SQS queue receiving the bucket's S3 event notifications of new log files (without"
        " it, --bucket is listed every --poll-interval)",
        metavar="URL",
    ),
    Option(
        "region",
        "",
        "AWS region of the queues and the bucket (default: boto3's, e.g. AWS_REGION)",
        metavar="REGION",
    ),
    Option(
        "endpoint_url",
        "",
        "send S3 and SQS requests to this S3/SQS-compatible endpoint instead of AWS's",
        metavar="URL",
    ),
    Option(
        "profile",
        "",
        "AWS profile of the shared config files (default: boto3's, e.g. AWS_PROFILE)",
        metavar="NAME",
    ),
    Option(
        "include_reads",
        False,
        "record read-only events (readOnly: true) too, as READ events",
        "bool",
    ),
    Option(
        "poll_interval",
        DEFAULT_POLL_INTERVAL,
        "seconds an SQS receive waits for messages (long poll, at most 20), and between"
        " listings of --bucket",
        "float",
        metavar="SECONDS",
    ),
    Option(
        "blueprint",
        {},
        "use BLUEPRINT for events of SERVICE (aws.s3, or its eventSource s3.amazonaws.com)"
        " instead of aws.<service>, e.g. aws.s3=storage",
        "mapping",
        metavar="SERVICE=BLUEPRINT",
    ),
)


def redaction_key(runtime: Runtime) -> bytes:
    "This collector's key for secret fingerprints: made once, kept in the spool."
    key = runtime.spool.get_state(KEY_SCOPE, REDACTION_KEY)
    if key is None:
        key = secrets.token_bytes(32)
        runtime.spool.set_state(KEY_SCOPE, REDACTION_KEY, key)
    return key


def setup(runtime: Runtime) -> None:
    options = runtime.options
    queue_url = options.text("queue_url")
    bucket = options.text("bucket")
    prefix = options.text("prefix")
    notifications = options.text("notifications_queue_url")
    poll_interval = options.number("poll_interval")
    if not (queue_url or bucket or notifications):
        raise StartupError(
            "nothing to collect: give --queue-url, --bucket, or --notifications-queue-url"
        )
    if prefix and not (bucket or notifications):
        raise StartupError("--prefix needs --bucket (or --notifications-queue-url)")
    if queue_url and queue_url == notifications:
        raise StartupError(
            "--queue-url and --notifications-queue-url name the same queue; EventBridge events"
            " and S3 notifications need a queue each"
        )
    if not 0 < poll_interval <= 3600:
        raise StartupError(f"--poll-interval must be above 0 and at most 3600, not {poll_interval}")
    aws = Aws(
        AwsSettings(
            region=options.text("region"),
            endpoint_url=options.text("endpoint_url"),
            profile=options.text("profile"),
        ),
        queue_urls=tuple(url for url in (queue_url, notifications) if url),
    )
    redactor = Redactor(redaction_key(runtime))
    config = MappingConfig(
        include_reads=options.flag("include_reads"), blueprints=options.mapping("blueprint")
    )
    ingest = Ingest(runtime, Mapper(config, redactor))
    dead_letters = DeadLetters(redactor, runtime.logger("dead-letters"))
    sections: dict[str, Any] = {}

    if queue_url:
        reader = QueueReader(
            runtime,
            aws,
            queue_url,
            "eventbridge",
            poll_interval,
            lambda: EventBridgeHandler(runtime, ingest, dead_letters, queue_url),
        )
        runtime.add_worker("eventbridge", reader.run)
        sections["eventbridge"] = reader.status.document

    if notifications:
        status = SourceStatus("s3-files", f"s3://{bucket or '*'}/{prefix}", runtime.logger("s3"))

        def notifications_handler() -> NotificationsHandler:
            files = LogFileReader(runtime, ingest, dead_letters, aws.client("s3"), status)
            return NotificationsHandler(runtime, files, dead_letters, notifications, bucket, prefix)

        reader = QueueReader(
            runtime, aws, notifications, "s3-notifications", poll_interval, notifications_handler
        )
        runtime.add_worker("s3-notifications", reader.run)
        sections["s3-notifications"] = reader.status.document
        sections["s3-files"] = status.document
    elif bucket:
        status = SourceStatus("s3-listing", f"s3://{bucket}/{prefix}", runtime.logger("s3"))

        def listing_reader() -> tuple[Any, LogFileReader]:
            s3 = aws.client("s3")
            return s3, LogFileReader(runtime, ingest, dead_letters, s3, status)

        poller = PrefixPoller(runtime, bucket, prefix, poll_interval, listing_reader, status)
        runtime.add_worker("s3-listing", poller.run)
        sections["s3-listing"] = lambda: {**status.document(), **poller.document()}

    runtime.add_stats("sources", lambda: {name: fn() for name, fn in sections.items()})


PLUGIN = Plugin(
    kind="aws",
    description="Collect CloudTrail management events from an EventBridge-fed SQS queue and/or"
    " CloudTrail's log files in S3.",
    options=OPTIONS,
    setup=setup,
)

"""The SQS readers: ``--queue-url`` (CloudTrail events from an EventBridge rule) and
``--notifications-queue-url`` (S3 event notifications of new log files).

Each long-polls its queue (``WaitTimeSeconds`` up to ``--poll-interval``, at most 20), takes up
to 10 messages at a time, and deletes a message only once what it says is in the spool:

- an EventBridge message, once its events are committed (all the batch's messages in one
  transaction); a crash before that, and SQS delivers the message again after its visibility
  timeout, and the idempotency key stores its event once;
- a notification, once every log file it names is read into the spool (or dead-lettered);
- a message that cannot be read, once it is dead-lettered (``deadletters``).

While the spool is full the reader waits, holding its messages; if the collector stops
meanwhile it leaves them to SQS, which delivers them again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from collectors.aws.connect import Aws
from collectors.aws.deadletters import DeadLetter, DeadLetters
from collectors.aws.ingest import Ingest
from collectors.aws.messages import BadMessage, cloudtrail_records, log_files
from collectors.aws.s3files import LogFileReader
from collectors.aws.status import Backoff, SourceStatus, spool_when_room
from collectors.runtime import Runtime, SpoolTransaction

MAX_MESSAGES = 10  # SQS's own maximum per ReceiveMessage
MAX_WAIT_SECONDS = 20  # SQS's longest long poll


@dataclass(frozen=True)
class Message:
    id: str
    receipt_handle: str
    body: str


Handler = Callable[[Sequence[Message], threading.Event], Sequence[Message]]


class QueueReader:
    "Long-polls one queue and hands each batch to ``handler``, which returns what may be deleted."

    def __init__(
        self,
        runtime: Runtime,
        aws: Aws,
        queue_url: str,
        name: str,
        poll_interval: float,
        make_handler: Callable[[], Handler],
    ) -> None:
        self.runtime = runtime
        self.aws = aws
        self.queue_url = queue_url
        self.poll_interval = poll_interval
        self.make_handler = make_handler
        self.log = runtime.logger(name)
        self.status = SourceStatus(name, queue_url, self.log)

    def run(self, stop: threading.Event) -> None:
        sqs = self.aws.client("sqs")
        handler = self.make_handler()
        wait = min(MAX_WAIT_SECONDS, int(self.poll_interval))
        backoff = Backoff(self.poll_interval)
        self.log.info("reading the queue", queue_url=self.queue_url)
        while not stop.is_set():
            try:
                answer = sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=MAX_MESSAGES,
                    WaitTimeSeconds=wait,
                )
            except (BotoCoreError, ClientError) as exc:
                self.status.failed("receiving from the queue", exc)
                stop.wait(backoff.next())
                continue
            self.status.ok()
            backoff.reset()
            messages = [_message(m) for m in answer.get("Messages") or []]
            if not messages:
                if wait < self.poll_interval:
                    stop.wait(self.poll_interval - wait)
                continue
            self.runtime.count("messages_received", len(messages))
            if stop.is_set():
                return  # not read: SQS delivers them again after their visibility timeout
            self._delete(sqs, handler(messages, stop))

    def _delete(self, sqs: Any, messages: Sequence[Message]) -> None:
        for start in range(0, len(messages), MAX_MESSAGES):
            chunk = messages[start : start + MAX_MESSAGES]
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)
            ]
            try:
                answer = sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as exc:
                # They come back after their visibility timeout; their events are spooled
                # (or dead-lettered) already, and are stored once.
                self.status.failed("deleting messages", exc)
                self.runtime.count("delete_failures", len(chunk))
                continue
            failed = answer.get("Failed") or []
            if failed:
                self.runtime.count("delete_failures", len(failed))
                self.log.warning(
                    "some messages were not deleted; they will be delivered again",
                    errors=sorted({str(f.get("Code")) for f in failed}),
                )
            self.runtime.count("messages_deleted", len(chunk) - len(failed))


def _message(raw: dict[str, Any]) -> Message:
    return Message(
        str(raw.get("MessageId", "")), str(raw["ReceiptHandle"]), str(raw.get("Body", ""))
    )


class EventBridgeHandler:
    """Messages of ``--queue-url``: EventBridge events holding CloudTrail records. All the
    batch's events, and the dead letters of the messages that cannot be read, are spooled in
    one transaction; then every message of the batch may be deleted."""

    def __init__(
        self, runtime: Runtime, ingest: Ingest, dead_letters: DeadLetters, queue_url: str
    ) -> None:
        self.runtime = runtime
        self.ingest = ingest
        self.dead_letters = dead_letters
        self.queue_url = queue_url

    def __call__(self, messages: Sequence[Message], stop: threading.Event) -> Sequence[Message]:
        records: list[dict[str, Any]] = []
        letters: list[DeadLetter] = []
        for message in messages:
            try:
                records.extend(cloudtrail_records(message.body))
            except BadMessage as exc:
                letters.append(
                    self.dead_letters.message(self.queue_url, message.id, message.body, str(exc))
                )

        def also(tx: SpoolTransaction) -> None:
            self.dead_letters.write(tx, letters)

        if not spool_when_room(
            self.runtime, stop, lambda: self.ingest(records, also), len(records)
        ):
            return []
        self.dead_letters.logged(letters)
        self.runtime.count("messages_dead_lettered", len(letters))
        return messages


class NotificationsHandler:
    """Messages of ``--notifications-queue-url``: each announces log files; a message may be
    deleted once every file it names is read (or dead-lettered, or skipped)."""

    def __init__(
        self,
        runtime: Runtime,
        reader: LogFileReader,
        dead_letters: DeadLetters,
        queue_url: str,
        bucket: str,
        prefix: str,
    ) -> None:
        self.runtime = runtime
        self.reader = reader
        self.dead_letters = dead_letters
        self.queue_url = queue_url
        self.bucket = bucket
        self.prefix = prefix

    def __call__(self, messages: Sequence[Message], stop: threading.Event) -> Sequence[Message]:
        done: list[Message] = []
        for message in messages:
            if stop.is_set():
                break
            try:
                files = log_files(message.body)
            except BadMessage as exc:
                letter = self.dead_letters.message(
                    self.queue_url, message.id, message.body, str(exc)
                )
                with self.runtime.spool.transaction() as tx:  # no events: never SpoolFull
                    self.dead_letters.write(tx, [letter])
                self.dead_letters.logged([letter])
                self.runtime.count("messages_dead_lettered")
                done.append(message)
                continue
            if not files:
                self.runtime.count("notifications_without_log_files")
            complete = True
            for file in files:
                if (self.bucket and file.bucket != self.bucket) or not file.key.startswith(
                    self.prefix
                ):
                    self.runtime.count("log_files_outside_prefix")
                    continue
                if not self.reader.read(file.bucket, file.key, stop):
                    complete = False
            if complete:
                done.append(message)
        return done

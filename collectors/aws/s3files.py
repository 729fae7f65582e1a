"""Reading one CloudTrail log file from S3 into the spool.

``LogFileReader.read(bucket, key, stop, when_done)`` downloads the object, parses it
(``logfiles``) and spools its records in chunks of ``CHUNK_RECORDS``, each chunk in one
transaction with the file's progress (``aws.s3-files`` state: the next record to read), so a
restart resumes inside a big file; the last chunk's transaction also runs ``when_done(tx)``
(the listing checkpoint). It returns True once the file is done with: read, dead-lettered
(corrupt, gone, too big) or skipped (a digest file, not a log file); False when it should be
tried again later (S3 unreachable, access denied, the collector stopping), with nothing
marked done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from collectors.aws import logfiles
from collectors.aws.deadletters import DeadLetter, DeadLetters
from collectors.aws.ingest import Ingest
from collectors.aws.status import SourceStatus, error_code, spool_when_room
from collectors.runtime import Runtime, SpoolTransaction

PROGRESS_SCOPE = "aws.s3-files"
CHUNK_RECORDS = 1000
MAX_OBJECT_BYTES = 128 * 1024 * 1024  # compressed; CloudTrail's files are far smaller
GONE = frozenset({"NoSuchKey", "404"})

WhenDone = Callable[[SpoolTransaction], None]


class LogFileReader:
    def __init__(
        self,
        runtime: Runtime,
        ingest: Ingest,
        dead_letters: DeadLetters,
        s3: Any,
        status: SourceStatus,
    ) -> None:
        self.runtime = runtime
        self.ingest = ingest
        self.dead_letters = dead_letters
        self.s3 = s3
        self.status = status
        self.log = runtime.logger("log-files")

    def read(
        self, bucket: str, key: str, stop: threading.Event, when_done: WhenDone | None = None
    ) -> bool:
        skip = logfiles.skip_reason(key)
        if skip:
            self.runtime.count("log_files_skipped")
            self._finish(when_done)
            return True
        try:
            answer = self.s3.get_object(Bucket=bucket, Key=key)
            etag = str(answer.get("ETag", "")).strip('"')
            data: bytes = answer["Body"].read(MAX_OBJECT_BYTES + 1)
        except ClientError as exc:
            if error_code(exc) in GONE:
                letter = self.dead_letters.log_file(bucket, key, "the object does not exist")
                return self._dead(letter, when_done)
            self.status.failed(f"reading s3://{bucket}/{key}", exc)
            return False
        except BotoCoreError as exc:
            self.status.failed(f"reading s3://{bucket}/{key}", exc)
            return False
        if len(data) > MAX_OBJECT_BYTES:
            letter = self.dead_letters.log_file(
                bucket, key, f"larger than {MAX_OBJECT_BYTES} bytes", etag
            )
            return self._dead(letter, when_done)
        try:
            records = logfiles.parse(data)
        except logfiles.BadLogFile as exc:
            letter = self.dead_letters.log_file(bucket, key, str(exc), etag, len(data))
            return self._dead(letter, when_done)
        if not self._spool(f"s3://{bucket}/{key}", records, stop, when_done):
            return False
        self.status.ok()
        self.runtime.count("log_files_read")
        self.runtime.count("log_file_records", len(records))
        return True

    def _spool(
        self, name: str, records: list[Any], stop: threading.Event, when_done: WhenDone | None
    ) -> bool:
        raw = self.runtime.spool.get_state(PROGRESS_SCOPE, name)
        start = int(raw) if raw else 0
        bounds = [
            (begin, min(begin + CHUNK_RECORDS, len(records)))
            for begin in range(start, len(records), CHUNK_RECORDS)
        ] or [(len(records), len(records))]
        if start:
            self.log.info("resuming a log file", file=name, record=start)
        for begin, end in bounds:
            last = end >= len(records)

            def also(tx: SpoolTransaction, end: int = end, last: bool = last) -> None:
                if last:
                    tx.delete_state(PROGRESS_SCOPE, name)
                    if when_done is not None:
                        when_done(tx)
                else:
                    tx.set_state(PROGRESS_SCOPE, name, str(end))

            chunk = records[begin:end]

            def write(chunk: list[Any] = chunk, also: WhenDone = also) -> None:
                self.ingest(chunk, also)

            if not spool_when_room(self.runtime, stop, write, len(chunk)):
                return False
        return True

    def _finish(self, when_done: WhenDone | None) -> None:
        if when_done is not None:
            with self.runtime.spool.transaction() as tx:  # no events: never SpoolFull
                when_done(tx)

    def _dead(self, letter: DeadLetter, when_done: WhenDone | None) -> bool:
        with self.runtime.spool.transaction() as tx:
            self.dead_letters.write(tx, [letter])
            if when_done is not None:
                when_done(tx)
        self.dead_letters.logged([letter])
        self.runtime.count("log_files_dead_lettered")
        return True

"""Queue messages and log files this collector could not read, kept with their reasons.

A message that does not parse, or a log file that is not one (a corrupt gzip, not JSON, no
``Records``), is never retried: it is written here, in the spool's ``state`` table (scope
``aws.dead-letter``), in the same transaction that lets it go (before its SQS message is
deleted, or with the listing checkpoint that passes the file), and logged. The service's own
dead letters (events it refused) stay in the spool's ``dead_letter`` table as for every
collector; these are the source's.

Each entry's key names what failed (``sqs:<queue url>:<message id>`` or
``s3://<bucket>/<key>``); its value is a JSON object with ``reason``, ``at`` (seconds since
the epoch), ``size``, ``sha256`` and, for a queue message (which is deleted), its ``body``:
redacted like snapshots when it is JSON, else its first ``EXCERPT_CHARS`` characters. A log
file stays in its bucket, so only its ETag is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from collectors.aws.mapping import Redactor
from collectors.runtime import FieldLogger, SpoolTransaction

SCOPE = "aws.dead-letter"
EXCERPT_CHARS = 2048
MAX_BODY_CHARS = 256 * 1024
# In a body that is not JSON: "<secret-looking name>": "<value>" pairs still get their value
# hidden (a truncated CloudTrail record is still a CloudTrail record).
_SECRET_PAIR = re.compile(
    r'("[^"]*(?:password|secret|token|credential|privatekey|accesskey)[^"]*"\s*:\s*)"[^"]*"?',
    re.IGNORECASE,
)


@dataclass(frozen=True)
class DeadLetter:
    key: str
    reason: str
    details: dict[str, Any]

    def value(self) -> bytes:
        data = {"reason": self.reason, "at": round(time.time(), 3), **self.details}
        return json.dumps(data, sort_keys=True).encode()


class DeadLetters:
    def __init__(self, redactor: Redactor, log: FieldLogger) -> None:
        self._redactor = redactor
        self._log = log

    def message(self, queue_url: str, message_id: str, body: str, reason: str) -> DeadLetter:
        raw = body.encode("utf-8", "replace")
        details: dict[str, Any] = {
            "queue_url": queue_url,
            "message_id": message_id,
            "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "body": self._body(body),
        }
        return DeadLetter(f"sqs:{queue_url}:{message_id}", reason, details)

    def log_file(
        self, bucket: str, key: str, reason: str, etag: str = "", size: int = 0
    ) -> DeadLetter:
        details: dict[str, Any] = {"bucket": bucket, "object_key": key, "etag": etag, "size": size}
        return DeadLetter(f"s3://{bucket}/{key}", reason, details)

    def _body(self, body: str) -> Any:
        try:
            value = json.loads(body)
        except ValueError:
            return _SECRET_PAIR.sub(r'\1"(hidden)"', body[:EXCERPT_CHARS])
        redacted = self._redactor.redact(value)
        text = json.dumps(redacted)
        return redacted if len(text) <= MAX_BODY_CHARS else text[:EXCERPT_CHARS]

    def write(self, tx: SpoolTransaction, letters: list[DeadLetter]) -> None:
        "Keep ``letters`` (inside the transaction that lets them go)."
        if letters:
            tx.set_states(SCOPE, [(letter.key, letter.value()) for letter in letters])

    def logged(self, letters: list[DeadLetter]) -> None:
        "Say so, once the transaction is committed."
        for letter in letters:
            self._log.warning("dead-lettered", what=letter.key, reason=letter.reason)

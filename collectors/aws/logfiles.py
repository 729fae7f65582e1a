"""CloudTrail's log files in S3: which objects are log files, and what one holds.

CloudTrail delivers to ``AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/
<account>_CloudTrail_<region>_<YYYYMMDDTHHmmZ>_<unique>.json.gz`` (with an organization id
before the account for organization trails), each a gzip-compressed JSON object
``{"Records": [...]}``. Digest files (``CloudTrail-Digest``, integrity hashes, no events) and
Insights files (``CloudTrail-Insight``) are not read.

``parse(data)`` decompresses with a cap (``MAX_LOG_BYTES``), so a hostile object cannot take
the collector's memory, and raises ``BadLogFile`` with the reason for anything that is not a
log file; the file is then dead-lettered.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

MAX_LOG_BYTES = 256 * 1024 * 1024  # decompressed; CloudTrail's files are far smaller
SKIPPED_DIRECTORIES = ("CloudTrail-Digest", "CloudTrail-Insight")
GZIP_MAGIC = b"\x1f\x8b"


class BadLogFile(Exception):
    "An object that is not a CloudTrail log file: dead-lettered with this reason."


def skip_reason(key: str) -> str:
    "Why the object ``key`` is not read ('' when it is a log file to read)."
    parts = key.split("/")
    name = parts[-1]
    if any(part in SKIPPED_DIRECTORIES for part in parts[:-1]) or "_CloudTrail-Digest_" in name:
        return "digest" if "Digest" in key else "insight"
    if not name.endswith((".json.gz", ".json")):
        return "not_a_log_file"
    return ""


def decompress(data: bytes, limit: int = MAX_LOG_BYTES) -> bytes:
    "gzip (one member or several) -> bytes, at most ``limit``. :raises BadLogFile:"
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise BadLogFile(f"not a valid gzip file: {exc}") from None
        if len(out) > limit:
            raise BadLogFile(f"decompresses to more than {limit} bytes")
        if not inflater.eof:
            raise BadLogFile("not a valid gzip file: it ends before the compressed data does")
        rest = inflater.unused_data.lstrip(b"\x00")
    return bytes(out)


def parse(data: bytes) -> list[Any]:
    "The ``Records`` of one log file (gzip, or plain JSON). :raises BadLogFile:"
    if data[:2] == GZIP_MAGIC:
        data = decompress(data)
    elif data.lstrip()[:1] != b"{":
        raise BadLogFile("neither gzip nor a JSON object")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadLogFile(f"the file is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("Records"), list):
        raise BadLogFile('not a CloudTrail log file: no "Records" list')
    records: list[Any] = document["Records"]
    return records

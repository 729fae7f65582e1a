"""Keyed fingerprints that replace every leaf value of a SECRET event's snapshots.

A diff then shows that a value changed, never what it is; without the server key nobody can
test guesses against a stored fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from audit_service.models import JSONObject

FINGERPRINT_PREFIX = "hmac-sha256:"
FINGERPRINT_HEX_CHARS = 16


class SecretFingerprinter:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def fingerprint(self, value: Any) -> str:
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()
        return FINGERPRINT_PREFIX + digest[:FINGERPRINT_HEX_CHARS]

    def redact(self, snapshot: JSONObject) -> JSONObject:
        "A copy of ``snapshot`` with the same shape and every leaf replaced by its fingerprint."
        return {key: self._redact_value(value) for key, value in snapshot.items()}

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self.redact(value)
        if isinstance(value, list):
            return [self._redact_value(v) for v in value]
        return self.fingerprint(value)

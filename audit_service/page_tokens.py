"""Opaque, tamper-resistant page tokens.

A token carries the keyset cursor (the last row's sort value and id) and a digest of the query
it belongs to, MAC'd with a key derived from the server key. A forged, garbled or altered
token, or one replayed with other filters or another sort, is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

from audit_service.errors import InvalidArgument
from audit_service.query import Condition, Cursor, Sort

_VERSION = 1
_MAC_BYTES = 16


def query_digest(conditions: tuple[Condition, ...], sort: Sort) -> str:
    shape = [[c.field, c.op.value, list(c.values)] for c in conditions]
    text = json.dumps([shape, str(sort)], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, cursor: Cursor, digest: str) -> str:
        payload = json.dumps(
            {"v": _VERSION, "q": digest, "k": cursor.value, "i": cursor.id},
            separators=(",", ":"),
        ).encode()
        return _b64(payload) + "." + _b64(self._mac(payload))

    def decode(self, token: str, digest: str) -> Cursor:
        problem = "not a page token this service issued (garbled or altered)"
        try:
            payload_part, mac_part = token.split(".")
            payload, mac = _unb64(payload_part), _unb64(mac_part)
        except (ValueError, binascii.Error):
            raise InvalidArgument("page_token", problem) from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidArgument("page_token", problem)
        data = json.loads(payload)
        if data.get("v") != _VERSION:
            raise InvalidArgument("page_token", "issued by an incompatible version; start over")
        if data.get("q") != digest:
            raise InvalidArgument(
                "page_token", "issued for other filters or another order_by; start over"
            )
        return Cursor(data["k"], data["i"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    "Decode exactly what ``_b64`` produces: no padding, no stray characters, no spare bits."
    if not _B64URL.fullmatch(text):
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


_B64URL = re.compile(r"[A-Za-z0-9_-]+")

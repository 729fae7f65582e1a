"""The server key: generated on first start, kept beside the database with 0600 rights.

It keys the fingerprints that replace SECRET snapshot values and the MAC on page tokens;
each use derives its own subkey so one can never stand in for the other.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class ServerKey:
    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"server key must be at least {KEY_BYTES} bytes")
        self._key = key

    def derive(self, purpose: str) -> bytes:
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).digest()

    @classmethod
    def load_or_create(cls, path: Path) -> ServerKey:
        "Read the key at ``path``, creating it (0600, atomically) when it does not exist yet."
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process created it first: use theirs
        except FileExistsError:
            os.unlink(tmp)
            return cls(bytes.fromhex(path.read_text().strip()))
        os.unlink(tmp)
        return cls(key)


def key_path_for(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".key")

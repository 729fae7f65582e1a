"""Authentication: turning a call's metadata into a Principal.

``DevAuthenticator`` (``--dev``) makes every caller the admin ``dev``. ``TokenAuthenticator``
checks ``authorization: Bearer <token>`` against the tokens file, which holds only SHA-256
digests; the digest of the presented token is compared with every entry in constant time.
The file is re-read when it changes (checked at most once a second) and on ``reload()``
(SIGHUP); a broken file keeps the last good one in force and logs why.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from audit_service.errors import Unauthenticated
from audit_service.principals import DEV_PRINCIPAL, Principal
from audit_service.tokens_file import TokenEntry, TokensFileError, load_tokens_file

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]
MAX_TOKEN_CHARS = 4096
TOKEN_PREFIX_HEX = 8  # what a failed sign-in may record of the presented token's digest


class Authenticator(Protocol):
    def authenticate(self, metadata: Metadata, peer: str) -> Principal:
        """The caller's principal.

        :raises Unauthenticated: no credentials, or unknown ones.
        """
        ...


class SignInObserver(Protocol):
    def failed(self, peer: str, reason: str, token_digest_prefix: str) -> None: ...

    def succeeded(self, principal: Principal, peer: str) -> None: ...


class DevAuthenticator:
    "``--dev``: every caller is the one admin principal ``dev``."

    def authenticate(self, metadata: Metadata, peer: str) -> Principal:
        return DEV_PRINCIPAL


def bearer_token(metadata: Metadata) -> str:
    """The token of the ``authorization: Bearer`` metadata.

    :raises Unauthenticated: it is missing or malformed.
    """
    values = [v for k, v in metadata if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated("missing credentials: send metadata 'authorization: Bearer <token>'")
    value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed authorization metadata: expected 'Bearer <token>'")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated(f"bearer token longer than {MAX_TOKEN_CHARS} characters")
    return token


class TokenAuthenticator:
    def __init__(
        self,
        path: Path,
        observer: SignInObserver | None = None,
        *,
        recheck_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.observer = observer  # sign-in audit; set once the writer exists
        self._recheck = recheck_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: tuple[TokenEntry, ...] = ()
        self._file_state: tuple[int, int, int] | None = None
        self._checked_at = monotonic()
        if not self.reload():
            raise TokensFileError(self.last_error)

    last_error = ""

    def reload(self) -> bool:
        "Re-read the file now. Returns whether it took effect (else the last good one stays)."
        with self._lock:
            try:
                state = _file_state(self.path)
                entries = load_tokens_file(self.path)
            except (TokensFileError, OSError) as exc:
                self.last_error = str(exc)
                log.error("tokens file not (re)loaded, keeping the previous one: %s", exc)
                return False
            self._entries = tuple(entries)
            self._file_state = state
            log.info("tokens file %s loaded: %d principals", self.path, len(entries))
            return True

    def _reload_if_changed(self) -> None:
        now = self._monotonic()
        if now - self._checked_at < self._recheck:
            return
        self._checked_at = now
        try:
            state = _file_state(self.path)
        except OSError:
            return  # a file being replaced; the next check will see the new one
        if state != self._file_state:
            self.reload()

    def authenticate(self, metadata: Metadata, peer: str) -> Principal:
        self._reload_if_changed()
        try:
            token = bearer_token(metadata)
        except Unauthenticated as exc:
            self._failed(peer, exc.message, "")
            raise
        digest = hashlib.sha256(token.encode()).digest()
        found: TokenEntry | None = None
        for entry in self._entries:  # no early exit: the time taken does not depend on a match
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            self._failed(peer, "unknown or revoked token", digest.hex()[:TOKEN_PREFIX_HEX])
            raise Unauthenticated("unknown or revoked token")
        if self.observer is not None:
            self.observer.succeeded(found.principal, peer)
        return found.principal

    def _failed(self, peer: str, reason: str, prefix: str) -> None:
        if self.observer is not None:
            self.observer.failed(peer, reason, prefix)


def _file_state(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)

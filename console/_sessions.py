"""Signed-in sessions, kept in this process's memory only.

The browser holds a random session id in an HttpOnly, SameSite=Strict cookie; everything else
(the user's token, role, CSRF token, the client that calls the service with the token) stays
here. A session ends on sign-out, after ``idle`` seconds without a request, or ``max_age``
seconds after sign-in, whichever comes first; a restart of the console ends them all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clients import AsyncAuditClient


@dataclass(frozen=True)
class Identity:
    """Who signed in, as far as the service lets the console know: the role (from what the
    token may do), and the principal's id and name when the service showed them."""

    role: str  # admin | member
    token_prefix: str  # the first 8 hex digits of the token's SHA-256 ("" without a token)
    principal_id: str = ""
    name: str = ""

    @property
    def subject(self) -> str:
        "The identifier of the user's SIGN_IN events: the principal id, else ``token:<prefix>``."
        if self.principal_id:
            return self.principal_id
        return f"token:{self.token_prefix}" if self.token_prefix else "no-token"

    @property
    def label(self) -> str:
        "What the page header shows."
        if self.name or self.principal_id:
            return self.name or self.principal_id
        if self.token_prefix:
            return f"{self.role} (token {self.token_prefix})"
        return f"{self.role} (no token)"


def token_prefix(token: str | None) -> str:
    "The first 8 hex digits of the token's SHA-256, as the service's sign-in events show it."
    if not token:
        return ""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass
class Session:
    id: str
    csrf: str
    identity: Identity
    client: AsyncAuditClient  # calls the service with the user's own token
    peer: str
    created: float
    last_seen: float
    token: str | None = field(repr=False, default=None)

    @property
    def ref(self) -> str:
        "A name for this session in audit events: a hash of its id, never the id itself."
        return hashlib.sha256(self.id.encode()).hexdigest()[:16]

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf)


class SessionStore:
    "The sessions by id; ``clock`` is seconds (monotonic) and can be replaced in tests."

    def __init__(
        self, *, idle: float, max_age: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle = idle
        self.max_age = max_age
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(
        self, identity: Identity, client: AsyncAuditClient, token: str | None, peer: str
    ) -> Session:
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            identity=identity,
            client=client,
            peer=peer,
            created=now,
            last_seen=now,
            token=token,
        )
        self._sessions[session.id] = session
        return session

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen > self.idle or now - session.created > self.max_age

    def get(self, session_id: str | None) -> tuple[Session | None, Session | None]:
        """``(live, expired)``: the live session of ``session_id`` (touched), or None; and the
        session that has just expired (removed here; the caller records and closes it)."""
        if not session_id:
            return None, None
        session = self._sessions.get(session_id)
        if session is None:
            return None, None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None, session
        session.last_seen = now
        return session, None

    def pop(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def sweep(self) -> list[Session]:
        "Remove and return every expired session."
        now = self._clock()
        gone = [s for s in self._sessions.values() if self._expired(s, now)]
        for session in gone:
            del self._sessions[session.id]
        return gone

    def drain(self) -> list[Session]:
        "Remove and return every session (the console is stopping)."
        sessions = list(self._sessions.values())
        self._sessions.clear()
        return sessions


class AttemptLimiter:
    "At most ``per_minute`` sign-in attempts per browser address in each clock minute."

    def __init__(
        self, per_minute: int, *, max_peers: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._limit = per_minute
        self._max_peers = max_peers
        self._clock = clock
        self._counts: dict[str, tuple[int, int]] = {}

    def allow(self, peer: str) -> bool:
        minute = int(self._clock() // 60)
        window, count = self._counts.pop(peer, (minute, 0))
        if window != minute:
            window, count = minute, 0
        self._counts[peer] = (window, count + 1)  # most recent last
        while len(self._counts) > self._max_peers:
            del self._counts[next(iter(self._counts))]
        return count < self._limit

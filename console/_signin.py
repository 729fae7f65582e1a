"""Signing in: what a token may do (asked of the service with that token), and the SIGN_IN
events the console records for sign-ins, sign-outs and expired sessions.

The service has no "who am I" call, so the console asks two questions with the user's token:

1. ``List`` one event. UNAUTHENTICATED: the service does not know the token.
   PERMISSION_DENIED: a recorder's token, which may not read (refused: the console is for
   reading). A member's List shows only its own runs, so an event there names the member.
2. An empty ``RecordStream`` (``record_many([])``, which stores nothing): an admin may record,
   a member may not (PERMISSION_DENIED). That tells the two apart.

The events are recorded with the console's own credential (a recorder for origin UI; anything
works with a --dev service), because members may not record. See docs/console.md.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from clients import (
    AsyncAuditClient,
    AuditClientError,
    DeadlineExceeded,
    Event,
    PermissionDenied,
    Source,
    Unauthenticated,
    Unavailable,
)
from console._sessions import Identity, Session

log = logging.getLogger(__name__)

CONSOLE = "audit-console"
UNREACHABLE = "The audit service cannot be reached; try again shortly."


class SignInRefused(Exception):
    "The token cannot sign in; ``reason`` says why in words for the sign-in page."

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


async def identify(client: AsyncAuditClient, prefix: str) -> Identity:
    """Ask the service, with the user's token, what that token may do.

    :raises SignInRefused: unknown token (401), a recorder's token (403), the service cannot
        be reached (503).
    """
    try:
        page = await client.list_page(page_size=1)
    except Unauthenticated:
        raise SignInRefused("The audit service does not accept this token.") from None
    except PermissionDenied:
        raise SignInRefused(
            "This token may only record events (role recorder). Sign in with an admin or"
            " member token.",
            403,
        ) from None
    except (Unavailable, DeadlineExceeded):
        raise SignInRefused(
            "The audit service cannot be reached; try again shortly.", 503
        ) from None
    try:
        await client.record_many([])
    except PermissionDenied:
        mine = page.events[0].source if page.events else None
        return Identity("member", prefix, mine.id if mine else "", mine.name if mine else "")
    except (Unavailable, DeadlineExceeded):
        raise SignInRefused(
            "The audit service cannot be reached; try again shortly.", 503
        ) from None
    return Identity("admin", prefix)


def _peer_host(peer: str) -> str:
    return peer or "unknown"


class SignInAudit:
    """Records the console's SIGN_IN events with its own client.

    Operations say what happened to the console session: CREATE (signed in; FAILURE when
    refused), DELETE (signed out), TIMER_EXPIRED (ended by the idle or maximum age).
    """

    def __init__(self, client: AsyncAuditClient) -> None:
        self._client = client

    async def signed_in(self, session: Session, user_agent: str) -> None:
        """:raises AuditClientError: not recorded (the caller refuses the sign-in)."""
        await self._client.record(self._event(session, "CREATE", "sign-in", user_agent, after=True))

    async def signed_out(self, session: Session, user_agent: str) -> None:
        await self._quietly(self._event(session, "DELETE", "sign-out", user_agent, after=False))

    async def expired(self, session: Session) -> None:
        await self._quietly(
            self._event(session, "TIMER_EXPIRED", "session-expired", "", after=False)
        )

    async def refused(self, prefix: str, peer: str, reason: str, user_agent: str) -> None:
        context = {
            "action": "sign-in",
            "peer": _peer_host(peer),
            "via": CONSOLE,
            "user_agent": user_agent[:200],
        }
        if prefix:
            context["token_sha256_prefix"] = prefix
        await self._quietly(
            Event(
                resource="SIGN_IN",
                identifier=f"token:{prefix}" if prefix else "no-token",
                operation="CREATE",
                origin="UI",
                source=Source(kind="USER", id=f"peer:{_peer_host(peer)}"),
                status="FAILURE",
                error=reason[:1000],
                context=context,
            )
        )

    def _event(
        self, session: Session, operation: str, action: str, user_agent: str, *, after: bool
    ) -> Event:
        who = session.identity
        context = {
            "action": action,
            "role": who.role,
            "peer": _peer_host(session.peer),
            "session": session.ref,
            "via": CONSOLE,
        }
        if who.token_prefix:
            context["token_sha256_prefix"] = who.token_prefix
        if user_agent:
            context["user_agent"] = user_agent[:200]
        snapshot = {"session": session.ref, "role": who.role, "user": who.subject}
        return Event(
            resource="SIGN_IN",
            identifier=who.subject,
            operation=operation,
            origin="UI",
            source=Source(kind="USER", id=who.subject, name=who.name),
            context=context,
            occurred_at=datetime.now(UTC),
            before=None if after else snapshot,
            after=snapshot if after else None,
            idempotency_key=f"{CONSOLE}:{session.ref}:{action}",
        )

    async def _quietly(self, event: Event) -> None:
        try:
            await self._client.record(event)
        except AuditClientError as exc:
            log.warning("could not record a %s event: %s", event.context.get("action"), exc)

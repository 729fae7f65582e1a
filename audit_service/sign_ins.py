"""Sign-in audit: failed authentications and the first use of a token each hour become
SIGN_IN events.

Failures are rate-limited per peer host, so a flood of bad tokens cannot fill the disk; what
was held back is counted in the next failure event recorded for that peer. Events are queued
to the writer without waiting: a sign-in record never slows the call it describes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from audit_service.errors import Unavailable
from audit_service.models import (
    NewEvent,
    Operation,
    Origin,
    ResourceType,
    Source,
    SourceKind,
    Status,
)
from audit_service.principals import Principal, Role
from audit_service.writer import GroupCommitWriter

log = logging.getLogger(__name__)

SERVICE_PRINCIPAL = "audit-service"
HOUR_NS = 3600 * 1_000_000_000
MINUTE_NS = 60 * 1_000_000_000


def peer_host(peer: str) -> str:
    "``ipv4:127.0.0.1:5555`` -> ``127.0.0.1``; ``ipv6:[::1]:5555`` -> ``::1``."
    _, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0] if rest.count(":") >= 1 else rest
    return host.strip("[]") or peer


class SignInAuditor:
    def __init__(
        self,
        writer: GroupCommitWriter,
        *,
        failures_per_minute: int = 10,
        max_peers: int = 10_000,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._writer = writer
        self._limit = failures_per_minute
        self._max_peers = max_peers
        self._clock = clock
        # peer host -> (minute, recorded this minute, held back since the last record)
        self._failures: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._last_success_hour: dict[str, int] = {}
        self._lock = threading.Lock()  # calls arrive on every RPC thread

    def failed(self, peer: str, reason: str, token_digest_prefix: str) -> None:
        now = self._clock()
        host = peer_host(peer)
        minute = now // MINUTE_NS
        with self._lock:
            window, recorded, held_back = self._failures.pop(host, (minute, 0, 0))
            if window != minute:
                window, recorded = minute, 0
            if recorded >= self._limit:
                self._failures[host] = (window, recorded, held_back + 1)
                return
            self._failures[host] = (window, recorded + 1, 0)
            while len(self._failures) > self._max_peers:
                self._failures.popitem(last=False)
        context = {"peer": peer}
        if token_digest_prefix:
            context["token_sha256_prefix"] = token_digest_prefix
        if held_back:
            context["failures_not_recorded"] = str(held_back)
        self._submit(
            NewEvent(
                resource=ResourceType.SIGN_IN,
                identifier=f"token:{token_digest_prefix}" if token_digest_prefix else "no-token",
                operation=Operation.READ,
                origin=Origin.API,
                occurred_at=now,
                recorded_by=SERVICE_PRINCIPAL,
                source=Source(SourceKind.USER, f"peer:{host}"),
                status=Status.FAILURE,
                error=reason,
                context=context,
            )
        )

    def succeeded(self, principal: Principal, peer: str) -> None:
        now = self._clock()
        hour = now // HOUR_NS
        with self._lock:
            if self._last_success_hour.get(principal.id) == hour:
                return
            self._last_success_hour[principal.id] = hour
        kind = SourceKind.INTEGRATION if principal.role is Role.RECORDER else SourceKind.USER
        self._submit(
            NewEvent(
                resource=ResourceType.SIGN_IN,
                identifier=principal.id,
                operation=Operation.READ,
                origin=Origin.API,
                occurred_at=now,
                recorded_by=SERVICE_PRINCIPAL,
                source=Source(kind, principal.id, principal.name),
                context={"peer": peer, "role": principal.role.value},
            )
        )

    def _submit(self, event: NewEvent) -> None:
        try:
            self._writer.submit([event])
        except Unavailable:
            log.info("sign-in event not recorded: shutting down")

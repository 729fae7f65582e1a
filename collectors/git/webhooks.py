"""The webhook receivers: ``POST /webhooks/github``, ``/webhooks/gitlab``, ``/webhooks/bitbucket``.

The endpoint checks the sender first (``X-Hub-Signature-256`` / ``X-Hub-Signature``, an HMAC of
the raw body, or ``X-Gitlab-Token``): a delivery that fails gets 401 and nothing of it is
stored. Then, here:

- 400 when the event header is missing, the body is not a JSON object, or the payload lacks
  what its event type must carry; 413 (from the endpoint) over ``--max-body-bytes``;
- 200 ``{"events": 0, "ignored": ...}`` for event types that are not recorded (counted);
- 200 ``{"events": N, "duplicate": false}`` once the events are committed to the spool, with
  the delivery id remembered in the same transaction; a delivery id seen before gets
  ``"duplicate": true`` and stores nothing again;
- 503 while the spool is full (the provider, or whoever redelivers, tries again).

Each event's idempotency key is ``<provider>:<delivery id>:<n>``, so even a delivery that
outlived the memory of delivery ids (the last 100,000) is stored once by the service.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from clients import pb
from collectors.git import bitbucket, github, gitlab
from collectors.git.changes import Actor, Change, Mapped, PayloadError
from collectors.runtime import Request, Response, Runtime, SpoolTransaction
from collectors.runtime.limits import OMITTED_KEY, fit_event
from collectors.runtime.snapshots import NotASnapshot, encode_struct

SCOPE = "git.deliveries"
MEMORY = 100_000  # delivery ids remembered (a ring in the spool's state table)
_PLAIN_ID = re.compile(r"^[A-Za-z0-9{}._:-]{1,128}$")

OPERATIONS = {
    "CREATE": pb.OPERATION_CREATE,
    "UPDATE": pb.OPERATION_UPDATE,
    "DELETE": pb.OPERATION_DELETE,
}
SOURCE_KINDS = {
    "USER": pb.SOURCE_KIND_USER,
    "INTEGRATION": pb.SOURCE_KIND_INTEGRATION,
    "SYSTEM": pb.SOURCE_KIND_SYSTEM,
}


@dataclass(frozen=True)
class Provider:
    name: str  # github, gitlab, bitbucket
    title: str
    event_header: str
    delivery_headers: tuple[str, ...]  # the first one present is the delivery id
    origin: pb.Origin.ValueType
    map: Callable[[str, dict[str, Any]], Mapped]
    blueprints: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"/webhooks/{self.name}"


GITHUB = Provider(
    "github",
    "GitHub",
    "X-GitHub-Event",
    ("X-GitHub-Delivery",),
    pb.ORIGIN_GITHUB_EXPORTER,
    github.map_delivery,
    github.BLUEPRINTS,
)
GITLAB = Provider(
    "gitlab",
    "GitLab",
    "X-Gitlab-Event",
    ("Idempotency-Key", "X-Gitlab-Event-UUID"),
    pb.ORIGIN_GITLAB_EXPORTER,
    gitlab.map_delivery,
    gitlab.BLUEPRINTS,
)
BITBUCKET = Provider(
    "bitbucket",
    "Bitbucket",
    "X-Event-Key",
    ("X-Request-UUID",),
    pb.ORIGIN_BITBUCKET_EXPORTER,
    bitbucket.map_delivery,
    bitbucket.BLUEPRINTS,
)
PROVIDERS = (GITHUB, GITLAB, BITBUCKET)


def delivery_id(provider: Provider, request: Request) -> str:
    """The delivery's id from its header; a digest of the body when none came (a proxy
    stripped it): an exact resend is then still recognised."""
    for header in provider.delivery_headers:
        value = (request.headers.get(header) or "").strip()
        if value:
            if _PLAIN_ID.match(value):
                return value
            return "sha256:" + hashlib.sha256(value.encode(errors="replace")).hexdigest()[:32]
    return "body-sha256:" + hashlib.sha256(request.body).hexdigest()[:32]


class DeliveryMemory:
    """The last ``MEMORY`` delivery ids, in the spool's state table, read and written in the
    transaction that spools the delivery's events: ``id:<key>`` -> its slot, ``slot:<n>`` ->
    the key there, ``next`` -> the slot to write next (the oldest id there is forgotten)."""

    def __init__(self, capacity: int = MEMORY) -> None:
        self.capacity = capacity

    def seen(self, tx: SpoolTransaction, key: str) -> bool:
        return tx.get_state(SCOPE, f"id:{key}") is not None

    def remember(self, tx: SpoolTransaction, key: str) -> None:
        number = int(tx.get_state(SCOPE, "next") or b"0")
        slot = f"slot:{number % self.capacity}"
        oldest = tx.get_state(SCOPE, slot)
        if oldest is not None:
            tx.delete_state(SCOPE, f"id:{oldest.decode()}")
        tx.set_state(SCOPE, slot, key)
        tx.set_state(SCOPE, f"id:{key}", str(number))
        tx.set_state(SCOPE, "next", str(number + 1))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _payload(provider: Provider, request: Request) -> dict[str, Any] | str:
    "The delivery's JSON object, or what is wrong with the body."
    body = request.body
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":  # GitHub's other content type
        try:
            form = urllib.parse.parse_qs(body.decode(), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            return f"the form body cannot be read: {exc}"
        values = form.get("payload")
        if not values:
            return "the form body has no payload field"
        body = values[0].encode()
    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"the body is not JSON: {exc}"
    except RecursionError:
        return "the body nests too deep to be read"
    if not isinstance(payload, dict):
        return f"expected a JSON object, got JSON {type(payload).__name__}"
    return payload


class WebhookReceiver:
    "``handler(request)`` for one provider's route."

    def __init__(
        self,
        runtime: Runtime,
        provider: Provider,
        blueprints: Mapping[str, str],
        memory: DeliveryMemory,
    ) -> None:
        self.runtime = runtime
        self.provider = provider
        self.blueprints = dict(blueprints)
        self.memory = memory
        self.log = runtime.logger(f"webhook.{provider.name}")

    def _count(self, name: str, amount: int = 1) -> None:
        self.runtime.count(f"{self.provider.name}_{name}", amount)

    def __call__(self, request: Request) -> Response:
        provider = self.provider
        event = (request.headers.get(provider.event_header) or "").strip()
        if not event:
            self._count("bad_requests")
            return Response.error(
                HTTPStatus.BAD_REQUEST,
                f"no {provider.event_header} header: not a {provider.title} webhook delivery",
            )
        payload = _payload(provider, request)
        if isinstance(payload, str):
            self._count("bad_requests")
            return Response.error(HTTPStatus.BAD_REQUEST, payload)
        try:
            mapped = provider.map(event, payload)
        except PayloadError as exc:
            self._count("bad_requests")
            return Response.error(
                HTTPStatus.BAD_REQUEST, f"{provider.title} {event} delivery: {exc}"
            )
        delivery = delivery_id(provider, request)
        if mapped.ignored:
            self._count("ignored")
            return Response.json(HTTPStatus.OK, {"events": 0, "ignored": mapped.ignored})
        assert mapped.actor is not None
        received = datetime.now(UTC)
        events = [
            self._event(index, change, mapped.actor, event, delivery, received)
            for index, change in enumerate(mapped.changes)
        ]
        self.runtime.spool.ensure_room(len(events))
        key = f"{provider.name}:{delivery}"
        with self.runtime.spool.transaction() as tx:
            duplicate = self.memory.seen(tx, key)
            if not duplicate:
                for item in events:
                    tx.add(item)
                self.memory.remember(tx, key)
        if duplicate:
            self._count("duplicate_deliveries")
            self.log.info("delivery seen before; not stored again", delivery=delivery)
        else:
            self._count("deliveries")
            self._count("events", len(events))
        return Response.json(HTTPStatus.OK, {"events": len(events), "duplicate": duplicate})

    def _event(
        self,
        index: int,
        change: Change,
        actor: Actor,
        event_name: str,
        delivery: str,
        received: datetime,
    ) -> pb.AuditEvent:
        provider = self.provider
        event = pb.AuditEvent(
            idempotency_key=f"{provider.name}:{delivery}:{index}",
            resource=pb.RESOURCE_TYPE_ENTITY,
            identifier=change.identifier,
            blueprint=self.blueprints.get(change.blueprint, change.blueprint),
            operation=OPERATIONS[change.operation],
            origin=provider.origin,
            status=pb.STATUS_SUCCESS,
            source=pb.Source(kind=SOURCE_KINDS[actor.kind], id=actor.id, name=actor.name),
        )
        occurred = change.occurred_at
        if occurred is None or occurred > received:
            occurred = received
        event.occurred_at.FromDatetime(occurred)
        event.context.update(
            {
                "provider": provider.name,
                "event": event_name,
                "action": change.action,
                "delivery_id": delivery,
                **change.context,
            }
        )
        for name, snapshot in (("before", change.before), ("after", change.after)):
            if snapshot is None:
                continue
            try:
                getattr(event, name).MergeFromString(encode_struct(snapshot))
            except NotASnapshot as exc:
                event.context[OMITTED_KEY] = f"{name}: {exc}"
        return fit_event(event)

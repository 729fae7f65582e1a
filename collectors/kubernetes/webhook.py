"""The audit webhook receiver: what kube-apiserver's webhook backend POSTs.

The body is an ``audit.k8s.io/v1`` ``EventList`` (up to ``--audit-webhook-batch-max-size``
events, 400 by default). 400 for a body that is not JSON or not an EventList, 413 (from the
endpoint) over ``--max-body-bytes``; either way nothing is stored. 200 only once the batch is
committed to the spool; 503 while the spool is full (the apiserver retries).
"""

from __future__ import annotations

import json
from http import HTTPStatus

from collectors.kubernetes.ingest import Ingest
from collectors.runtime import Request, Response

PATH = "/audit"
API_VERSION = "audit.k8s.io/v1"


class WebhookReceiver:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def __call__(self, request: Request) -> Response:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return Response.error(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}")
        problem = eventlist_problem(body)
        if problem:
            return Response.error(HTTPStatus.BAD_REQUEST, problem)
        items = body.get("items") or []
        self.ingest.runtime.spool.ensure_room(len(items))  # before mapping them
        spooled = self.ingest(items)
        self.ingest.runtime.count("webhook_batches")
        return Response.json(HTTPStatus.OK, {"events": len(items), "spooled": spooled})


def eventlist_problem(body: object) -> str:
    "What keeps ``body`` from being an ``audit.k8s.io/v1`` EventList ('' if nothing)."
    if not isinstance(body, dict):
        return f"expected an {API_VERSION} EventList object, got JSON {type(body).__name__}"
    if body.get("kind") != "EventList":
        return f"expected kind EventList, got {body.get('kind')!r}"
    if body.get("apiVersion") != API_VERSION:
        return f"expected apiVersion {API_VERSION}, got {body.get('apiVersion')!r}"
    items = body.get("items")
    if items is None:
        return ""
    if not isinstance(items, list):
        return "items is not a list"
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            return f"items[{index}] is not an object"
    return ""

"""auditlog clients: the Python client library, the generated protobuf/gRPC stubs, and the
``auditctl`` command (``clients.cli``).

The library::

    from clients import AuditClient, Event, Source

    with AuditClient("audit.internal:50051", token=token, tls=True) as client:
        client.record(Event(resource="entity", identifier="payments-api", blueprint="service",
                            operation="update", origin="api", idempotency_key="deploy-4711"))
        for event in client.list(("resource", "=", "entity"), ("source", "~", "alice")):
            print(event.occurred_at, event.identifier)

``AsyncAuditClient`` is the same for asyncio. Errors are ``AuditClientError`` subclasses
(see ``clients._errors`` for the tree). ``clients.pb`` holds the messages and enums of
``auditlog.v1``; ``clients.pb_grpc`` the stub and servicer base for
``auditlog.v1.AuditService``; every method also accepts ``pb.AuditEvent`` messages.
"""

from clients._aio import AsyncAuditClient
from clients._channel import TLS, InsecureTokenWarning
from clients._client import AuditClient
from clients._errors import (
    AuditClientError,
    DeadlineExceeded,
    InvalidArgument,
    InvalidEvent,
    NotFound,
    PermissionDenied,
    ServiceError,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from clients._generated.auditlog.v1 import audit_pb2 as pb
from clients._generated.auditlog.v1 import audit_pb2_grpc as pb_grpc
from clients._retry import RetryPolicy
from clients._values import (
    FILTER_FIELDS,
    Diff,
    Event,
    Filter,
    Page,
    RecordResult,
    Source,
    enum_names,
)

__all__ = [
    "FILTER_FIELDS",
    "TLS",
    "AsyncAuditClient",
    "AuditClient",
    "AuditClientError",
    "DeadlineExceeded",
    "Diff",
    "Event",
    "Filter",
    "InsecureTokenWarning",
    "InvalidArgument",
    "InvalidEvent",
    "NotFound",
    "Page",
    "PermissionDenied",
    "RecordResult",
    "RetryPolicy",
    "ServiceError",
    "Source",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "enum_names",
    "pb",
    "pb_grpc",
]

"""What the client library raises. Every error the service reports maps to one class, in
``error_from_status``; the tree::

    AuditClientError            base class: .code (a grpc.StatusCode or None) and .details
     ├── InvalidArgument        INVALID_ARGUMENT: .field names what is wrong, .problem says how
     │    └── InvalidEvent      ... about an event (its field starts with "event")
     ├── TooLarge               RESOURCE_EXHAUSTED: over a size limit (an event over 1 MiB)
     ├── NotFound               NOT_FOUND: no such event, or none the caller may see
     ├── Unauthenticated        UNAUTHENTICATED: no token, or one the service does not know
     ├── PermissionDenied       PERMISSION_DENIED: a known token that may not do this
     ├── Unavailable            UNAVAILABLE: the service cannot be reached or is shutting down
     ├── DeadlineExceeded       DEADLINE_EXCEEDED: no answer within the timeout
     └── ServiceError           any other status (INTERNAL, UNKNOWN, ...): the service's bug

Errors found before anything is sent (an unknown enum name, a naive datetime, a bad filter
operator) are the same classes with ``code`` None, so one ``except`` covers both.

The service words INVALID_ARGUMENT as ``<field>: <problem>`` (``event.identifier: required``)
and a RecordStream per-event error as ``<CODE>: <message>``; both are parsed back here.
"""

from __future__ import annotations

import re

import grpc

_EVENT_FIELD_PREFIXES = ("event.", "event[")
# A field path as the service names it: event.source.id, filters[2].values[0], event.context['k']
_FIELD = re.compile(r"([A-Za-z_][\w.]*(?:\[[^\]]*\][\w.]*)*): ")


class AuditClientError(Exception):
    "Base class of every error the client library raises."

    def __init__(self, details: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}" if self.code is not None else self.details


class InvalidArgument(AuditClientError):
    "The request is malformed; ``field`` names the part (``filters[0].field``) when known."

    def __init__(
        self,
        details: str,
        *,
        code: grpc.StatusCode | None = grpc.StatusCode.INVALID_ARGUMENT,
        field: str = "",
        problem: str = "",
    ) -> None:
        super().__init__(details, code=code)
        self.field = field
        self.problem = problem or details


class InvalidEvent(InvalidArgument):
    "An event breaks a rule; ``field`` names its field (``event.identifier``)."


class TooLarge(AuditClientError):
    "The request is over a size limit (an event over 1 MiB serialized)."


class NotFound(AuditClientError):
    "No such event, or none the caller may see."


class Unauthenticated(AuditClientError):
    "The service does not know the token (or none was given)."


class PermissionDenied(AuditClientError):
    "The token is known but its role may not do this."


class Unavailable(AuditClientError):
    "The service cannot be reached, or is shutting down; safe calls were retried first."


class DeadlineExceeded(AuditClientError):
    "The service did not answer within the timeout."


class ServiceError(AuditClientError):
    "Any other status: a bug or an outage on the service's side (INTERNAL, UNKNOWN, ...)."


_BY_CODE: dict[grpc.StatusCode, type[AuditClientError]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: TooLarge,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_from_status(code: grpc.StatusCode, details: str) -> AuditClientError:
    "The exception for a status the service (or the channel) reported: the one mapping."
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        field, problem = split_field(details)
        cls = InvalidEvent if is_event_field(field) else InvalidArgument
        return cls(details, code=code, field=field, problem=problem)
    return _BY_CODE.get(code, ServiceError)(details, code=code)


def error_from_rpc(exc: grpc.RpcError) -> AuditClientError:
    "The exception for a failed call (sync or asyncio)."
    try:
        code, details = exc.code(), exc.details()
    except AttributeError:  # a bare RpcError carries no status
        code, details = grpc.StatusCode.UNKNOWN, None
    return error_from_status(code, details or str(exc) or code.name)


def error_from_result(text: str) -> AuditClientError:
    "The exception for a RecordStream per-event error: ``INVALID_ARGUMENT: event.x: problem``."
    name, sep, details = text.partition(": ")
    code = grpc.StatusCode.__members__.get(name) if sep else None
    if code is None:  # not in the documented shape: keep the whole text
        return error_from_status(grpc.StatusCode.INVALID_ARGUMENT, text)
    return error_from_status(code, details)


def split_field(details: str) -> tuple[str, str]:
    "``'event.identifier: required'`` -> ``('event.identifier', 'required')``."
    match = _FIELD.match(details)
    if match is None:
        return "", details
    return match.group(1), details[match.end() :]


def is_event_field(field: str) -> bool:
    return field == "event" or field.startswith(_EVENT_FIELD_PREFIXES)


def invalid_event(field: str, problem: str) -> InvalidEvent:
    "An event rule broken before sending (``code`` is None)."
    return InvalidEvent(f"{field}: {problem}", code=None, field=field, problem=problem)


def invalid_argument(field: str, problem: str) -> InvalidArgument:
    "A malformed argument found before sending (``code`` is None)."
    return InvalidArgument(f"{field}: {problem}", code=None, field=field, problem=problem)

"""Domain errors raised by the service's models, validation and storage.

They know nothing of gRPC: ``audit_service.status`` maps each one to a status code, in one
place. The tree::

    AuditError
     ├── InvalidArgument    the request is malformed; names the field
     ├── TooLarge           over a size limit
     ├── NotFound           no such event (or none the caller may see)
     ├── Unauthenticated    no credentials, or unknown ones
     ├── PermissionDenied   authenticated, but not allowed
     └── Unavailable        shutting down, or storage cannot take writes now
"""

from __future__ import annotations


class AuditError(Exception):
    "Base class of every error the service reports to a caller."

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AuditError):
    "The request is malformed; the message names the field."

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class TooLarge(AuditError):
    "The request is over a size limit."


class NotFound(AuditError):
    "The event does not exist, or the caller may not see it."


class Unauthenticated(AuditError):
    "The caller presented no credentials, or unknown ones."


class PermissionDenied(AuditError):
    "The caller is known but may not do this."


class Unavailable(AuditError):
    "The service is shutting down or cannot write now; retry later."

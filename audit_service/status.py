"""The one place domain errors become gRPC status codes."""

from __future__ import annotations

import grpc

from audit_service import errors

_CODES: dict[type[errors.AuditError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(exc: errors.AuditError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INVALID_ARGUMENT  # an AuditError is always about the request


def result_error(exc: errors.AuditError) -> str:
    "How a per-event error reads in a RecordStream result: ``CODE: message``."
    return f"{status_code(exc).name}: {exc.message}"

"""How auditctl fails: one line on stderr that says what to do, and an exit code.

Exit codes: 0 success; 1 the service refused or failed the request; 2 bad usage (flags,
filters, input); 3 the service is unreachable or did not answer in time; 4 the token is
missing, unknown or not allowed to do this; 130 interrupted.
"""

from __future__ import annotations

from clients import (
    AuditClientError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4
EXIT_INTERRUPTED = 130


class CliError(Exception):
    "A failure auditctl explains in one line."

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    "The command line (or its config, or its input) is wrong."

    exit_code = EXIT_USAGE


def explain(error: AuditClientError, service: str, what: str = "") -> CliError:
    """A client-library error as the line a person reads. ``what`` names the part of the
    command that was refused (e.g. the ``--where`` rule), when known."""
    if isinstance(error, Unavailable):
        return CliError(
            f"cannot reach the audit service at {service} ({_short(error.details)}). Is it"
            " running? Point auditctl at it with --service, $AUDITLOG_SERVICE or the config file.",
            EXIT_UNREACHABLE,
        )
    if isinstance(error, DeadlineExceeded):
        return CliError(
            f"the audit service at {service} did not answer in time; try again or raise --timeout",
            EXIT_UNREACHABLE,
        )
    if isinstance(error, Unauthenticated):
        return CliError(
            f"the audit service rejected the credentials: {error.details}. Give a valid"
            " token with --token-file, $AUDITLOG_TOKEN or token_file in the config file.",
            EXIT_DENIED,
        )
    if isinstance(error, NotFound):
        return CliError(error.details)
    if isinstance(error, PermissionDenied):
        return CliError(f"not allowed: {error.details}", EXIT_DENIED)
    if isinstance(error, InvalidArgument):
        prefix = f"{what}: " if what else ""
        return UsageError(f"{prefix}{error.details}")
    return CliError(str(error))


def _short(details: str, limit: int = 200) -> str:
    details = " ".join(details.split())
    return details if len(details) <= limit else details[: limit - 3] + "..."

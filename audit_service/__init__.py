"""audit-service: the auditlog.v1.AuditService gRPC server, backed by SQLite.

Public surface: ``create_server`` (build and start a server, returning a ``RunningService``
with its ``.port``), ``Settings`` and ``load_settings``.
"""

from audit_service.config import Settings, load_settings
from audit_service.server import RunningService, StartupError, create_server

__all__ = ["RunningService", "Settings", "StartupError", "create_server", "load_settings"]

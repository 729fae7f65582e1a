"""Storage: one interface (``Storage``), one backend per module, one contract test suite."""

from audit_service.storage.base import Storage
from audit_service.storage.sqlite import SQLiteStorage

__all__ = ["SQLiteStorage", "Storage"]

"""Storage: one interface (``Storage``), one backend per module, one contract test suite.

``open_storage(db)`` picks the backend from ``--db``: a ``postgresql://`` (or ``postgres://``)
URL means PostgreSQL, anything else is the path of a SQLite file.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

from audit_service.storage.base import Storage, StorageError
from audit_service.storage.sqlite import SQLiteStorage

Durability = Literal["FULL", "NORMAL"]
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    return db.startswith(POSTGRES_SCHEMES)


def open_storage(db: str, durability: Durability = "FULL") -> Storage:
    """The backend ``db`` names, opened and migrated.

    :raises StorageError: the database cannot be opened or migrated (the message says why).
    """
    if is_postgres_url(db):
        from audit_service.storage.postgres import PostgresStorage  # psycopg only when used

        return PostgresStorage(db, durability)
    try:
        return SQLiteStorage(db, durability)
    except sqlite3.Error as exc:  # e.g. "file is not a database"
        raise StorageError(f"cannot open SQLite database {db}: {exc}") from None


def describe(db: str) -> str:
    "``db`` as logs may show it: a PostgreSQL URL without its password."
    if is_postgres_url(db):
        from audit_service.storage.postgres import redacted

        return redacted(db)
    return db


__all__ = [
    "SQLiteStorage",
    "Storage",
    "StorageError",
    "describe",
    "is_postgres_url",
    "open_storage",
]

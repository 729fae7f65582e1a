"""The backend's own database: every state version of every workspace, and the locks.

A SQLite file (WAL, ``synchronous=FULL``), apart from the spool: states hold secrets, and the
spool must not. Tables:

- ``workspace``: one row per workspace: its current version (``head``; NULL once deleted or
  before the first write) and the lock held on it (Terraform's lock info JSON, as sent).
- ``version``: every state body ever accepted, never changed or removed, with what was known
  when it was written (the lock's Who and Operation, the lock ID, the basic-auth user) and the
  version it replaced (``previous``: its events are the difference).

A write is committed here first; its events are spooled next, in order of version, each
spool transaction recording the last version whose events it holds (in the spool's state
table, so the mark and the events are one commit). A crash between the two commits leaves
versions past the mark, and their events are made again from the stored bodies at the next
start (``pending``), with the same idempotency keys.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS workspace (
    name TEXT PRIMARY KEY,
    head INTEGER,
    lock BLOB,
    locked_at REAL
);
CREATE TABLE IF NOT EXISTS version (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT NOT NULL,
    previous INTEGER,
    lineage TEXT NOT NULL,
    serial INTEGER NOT NULL,
    terraform_version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    body BLOB NOT NULL,
    stored_at REAL NOT NULL,
    who TEXT NOT NULL,
    operation TEXT NOT NULL,
    lock_id TEXT NOT NULL,
    backend_user TEXT NOT NULL,
    reused_serial INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS version_by_workspace ON version (workspace, id);
CREATE INDEX IF NOT EXISTS version_by_serial ON version (lineage, serial);
"""


class StoreError(Exception):
    "The state database cannot be used (not one, a newer schema, unreadable)."


@dataclass(frozen=True)
class StoredVersion:
    id: int
    workspace: str
    previous: int | None
    lineage: str
    serial: int
    terraform_version: str
    sha256: str
    body: bytes
    stored_at: float
    who: str
    operation: str
    lock_id: str
    backend_user: str
    reused_serial: bool

    def summary(self, head: int | None) -> dict[str, Any]:
        "What ``GET /state/<workspace>/versions`` lists about it."
        return {
            "version": self.id,
            "serial": self.serial,
            "lineage": self.lineage,
            "terraform_version": self.terraform_version,
            "sha256": self.sha256,
            "bytes": len(self.body),
            "stored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.stored_at)),
            "who": self.who,
            "operation": self.operation,
            "current": self.id == head,
        }


_COLUMNS = (
    "id, workspace, previous, lineage, serial, terraform_version, sha256, body, stored_at,"
    " who, operation, lock_id, backend_user, reused_serial"
)


def _version(row: Any) -> StoredVersion:
    return StoredVersion(
        id=row[0],
        workspace=row[1],
        previous=row[2],
        lineage=row[3],
        serial=row[4],
        terraform_version=row[5],
        sha256=row[6],
        body=bytes(row[7]),
        stored_at=row[8],
        who=row[9],
        operation=row[10],
        lock_id=row[11],
        backend_user=row[12],
        reused_serial=bool(row[13]),
    )


class Transaction:
    "Reads and writes of one workspace, committed together (``StateStore.transaction``)."

    def __init__(self, conn: sqlite3.Connection, workspace: str) -> None:
        self._conn = conn
        self.workspace = workspace

    def lock(self) -> bytes | None:
        "The lock info held on the workspace (as sent), or None."
        row = self._conn.execute(
            "SELECT lock FROM workspace WHERE name = ?", (self.workspace,)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def set_lock(self, lock: bytes | None) -> None:
        self._conn.execute(
            "INSERT INTO workspace (name, lock, locked_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET lock = excluded.lock,"
            " locked_at = excluded.locked_at",
            (self.workspace, lock, time.time() if lock is not None else None),
        )

    def head(self) -> StoredVersion | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM version"  # noqa: S608 (constant columns)
            " WHERE id = (SELECT head FROM workspace WHERE name = ?)",
            (self.workspace,),
        ).fetchone()
        return None if row is None else _version(row)

    def serial_stored_before(self, lineage: str, serial: int) -> bool:
        "Whether any workspace ever stored this lineage + serial."
        row = self._conn.execute(
            "SELECT 1 FROM version WHERE lineage = ? AND serial = ? LIMIT 1", (lineage, serial)
        ).fetchone()
        return row is not None

    def add_version(
        self,
        *,
        previous: int | None,
        lineage: str,
        serial: int,
        terraform_version: str,
        sha256: str,
        body: bytes,
        who: str,
        operation: str,
        lock_id: str,
        backend_user: str,
        reused_serial: bool,
    ) -> StoredVersion:
        "Store a new version and make it the workspace's head."
        stored_at = time.time()
        cursor = self._conn.execute(
            "INSERT INTO version (workspace, previous, lineage, serial, terraform_version,"
            " sha256, body, stored_at, who, operation, lock_id, backend_user, reused_serial)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.workspace,
                previous,
                lineage,
                serial,
                terraform_version,
                sha256,
                body,
                stored_at,
                who,
                operation,
                lock_id,
                backend_user,
                int(reused_serial),
            ),
        )
        version_id = cursor.lastrowid
        assert version_id is not None
        self._conn.execute(
            "INSERT INTO workspace (name, head) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET head = excluded.head",
            (self.workspace, version_id),
        )
        return StoredVersion(
            version_id,
            self.workspace,
            previous,
            lineage,
            serial,
            terraform_version,
            sha256,
            body,
            stored_at,
            who,
            operation,
            lock_id,
            backend_user,
            reused_serial,
        )

    def clear_head(self) -> None:
        "The workspace has no state any more (its versions stay)."
        self._conn.execute("UPDATE workspace SET head = NULL WHERE name = ?", (self.workspace,))


class StateStore:
    """The state database at ``path`` (created with its directory).

    :raises StoreError: the file is not a state database this version can use.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._setup()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path} cannot be used as a Terraform state database: {exc}"
            ) from None

    def _setup(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 10000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer collector (schema {version})")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self, workspace: str) -> Iterator[Transaction]:
        """Reads and writes that commit together, durably, when the block ends (and roll
        back if it raises); one at a time."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn, workspace)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _one(self, sql: str, parameters: tuple[Any, ...]) -> Any:
        with self._lock:
            return self._conn.execute(sql, parameters).fetchone()

    def head(self, workspace: str) -> StoredVersion | None:
        row = self._one(
            f"SELECT {_COLUMNS} FROM version"  # noqa: S608 (constant columns)
            " WHERE id = (SELECT head FROM workspace WHERE name = ?)",
            (workspace,),
        )
        return None if row is None else _version(row)

    def version(self, workspace: str, version_id: int) -> StoredVersion | None:
        row = self._one(
            f"SELECT {_COLUMNS} FROM version WHERE id = ? AND workspace = ?",  # noqa: S608
            (version_id, workspace),
        )
        return None if row is None else _version(row)

    def body(self, version_id: int) -> bytes | None:
        row = self._one("SELECT body FROM version WHERE id = ?", (version_id,))
        return None if row is None else bytes(row[0])

    def lock(self, workspace: str) -> bytes | None:
        row = self._one("SELECT lock FROM workspace WHERE name = ?", (workspace,))
        return None if row is None or row[0] is None else bytes(row[0])

    def versions(self, workspace: str) -> tuple[int | None, list[StoredVersion]]:
        "The workspace's head and every version it stored, oldest first."
        with self._lock:
            head = self._conn.execute(
                "SELECT head FROM workspace WHERE name = ?", (workspace,)
            ).fetchone()
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM version WHERE workspace = ? ORDER BY id",  # noqa: S608
                (workspace,),
            ).fetchall()
        return (None if head is None else head[0]), [_version(r) for r in rows]

    def pending(self, after: int, limit: int = 100) -> list[StoredVersion]:
        "Versions stored after version ``after``, oldest first."
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM version WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608
                (after, limit),
            ).fetchall()
        return [_version(r) for r in rows]

    def counts(self, spooled_through: int) -> dict[str, int]:
        "For /stats: workspaces with a state, versions, locks held, versions not spooled yet."
        with self._lock:
            row = self._conn.execute(
                "SELECT (SELECT count(*) FROM workspace WHERE head IS NOT NULL),"
                " (SELECT count(*) FROM version),"
                " (SELECT count(*) FROM workspace WHERE lock IS NOT NULL),"
                " (SELECT count(*) FROM version WHERE id > ?)",
                (spooled_through,),
            ).fetchone()
        return {
            "workspaces": row[0],
            "versions": row[1],
            "locked": row[2],
            "versions_not_spooled": row[3],
        }

    def close(self) -> None:
        with self._lock:
            self._conn.close()

"""A throwaway PostgreSQL cluster for tests: initdb into a temporary directory, served on a
Unix socket in that directory only (no TCP), stopped and deleted at the end.

PostgreSQL refuses to run as root; as root, the server programs run as the ``postgres`` user
(``runuser``) and the directory is handed to it.

With ``AUDITLOG_TEST_POSTGRES_URL`` set, the tests use that server instead (``ExternalServer``:
e.g. another engine that speaks PostgreSQL's protocol); its role must be allowed to create
databases, and the databases the tests made are dropped at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PROGRAMS = ("initdb", "pg_ctl", "postgres")
SEARCH_DIRS = ("/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
SKIP_ENV = "AUDITLOG_TEST_POSTGRES"  # "skip": report the PostgreSQL tests as skipped instead
URL_ENV = "AUDITLOG_TEST_POSTGRES_URL"  # a server to test against instead of a local cluster


class PostgresUnavailable(Exception):
    "PostgreSQL's server programs are missing or the cluster would not start."


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres.

    :raises PostgresUnavailable: none has all three (the message names where it looked).
    """
    on_path = shutil.which("initdb")
    candidates = [*(Path(p) for p in SEARCH_DIRS)]
    if on_path:
        candidates.insert(0, Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / p).exists() for p in PROGRAMS):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) not found on PATH or in "
        + ", ".join(SEARCH_DIRS)
        + ": install PostgreSQL 15 (Debian: apt-get install postgresql), or set"
        f" {SKIP_ENV}=skip to report the PostgreSQL tests as skipped"
    )


def _free_port() -> int:
    # The port only names the socket file (no TCP listener); still, take one nobody uses.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_database(url: str, database: str, password: str | None = None) -> str:
    "``url`` naming another database (and, if given, a password)."
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{urllib.parse.quote(password)}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path="/" + database))


class PostgresServer:
    "What the tests need of a server: URLs, connections and fresh databases."

    base_url: str
    _prefix = "t"
    _created: list[str]

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        return with_database(self.base_url, database, password)

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(database), autocommit=True)

    def new_database(self) -> str:
        "A fresh, empty database; returns its URL."
        name = f"{self._prefix}_{len(self._created) + 1}"
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        self._created.append(name)
        return self.url(name)

    def stop(self) -> None:
        raise NotImplementedError


class ExternalServer(PostgresServer):
    "A server the tests did not start (``AUDITLOG_TEST_POSTGRES_URL``)."

    def __init__(self, url: str) -> None:
        self.base_url = url
        self._prefix = f"auditlog_test_{os.getpid()}"
        self._created = []
        try:
            self.connect(urllib.parse.urlsplit(url).path.lstrip("/") or "postgres").close()
        except psycopg.Error as exc:
            raise PostgresUnavailable(f"cannot connect to {URL_ENV}: {exc}") from exc

    def stop(self) -> None:
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            for name in self._created:
                conn.execute(f"DROP DATABASE IF EXISTS {name}")


@dataclass
class PostgresCluster(PostgresServer):
    root: Path
    bindir: Path
    port: int
    _run_as: list[str] = field(default_factory=list)
    _created: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:  # type: ignore[override]
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @classmethod
    def start(cls, *, parent: Path | None = None, durable: bool = False) -> PostgresCluster:
        """initdb and start a cluster in a new directory under ``parent`` (default: the
        system's temporary directory; the ``postgres`` user must be able to reach it).

        ``durable=False`` (tests) turns fsync off; ``durable=True`` (benchmarks) keeps
        PostgreSQL's defaults. :raises PostgresUnavailable:"""
        bindir = find_bindir()
        root = Path(tempfile.mkdtemp(prefix="auditlog-pg-", dir=parent))
        run_as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root)
                raise PostgresUnavailable(
                    "running as root, and there is no 'postgres' user to run PostgreSQL as"
                ) from None
            os.chown(root, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        cluster = cls(root, bindir, _free_port(), run_as)
        try:
            cluster._run(
                "initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            options = (
                f"-p {cluster.port} -k {cluster.socket_dir} -c listen_addresses=''"
                " -c max_connections=300"
            )
            if not durable:
                options += " -c fsync=off -c full_page_writes=off -c shared_buffers=64MB"
            cluster._run(
                "pg_ctl", "-D", str(cluster.data), "-o", options,
                "-l", str(cluster.root / "server.log"), "-w", "-t", "60", "start",
            )  # fmt: skip
        except PostgresUnavailable:
            cluster.stop()
            raise
        return cluster

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [*self._run_as, str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            cwd=self.root,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{program} failed ({result.returncode}):\n{result.stdout}{result.stderr}{tail}"
            )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self._run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                 "-m", "immediate", "-w", "stop"],
                capture_output=True,
                check=False,
                timeout=60,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

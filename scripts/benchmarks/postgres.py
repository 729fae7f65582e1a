"""PostgreSQL beside SQLite: ingest rate and List latency of the real service on each backend,
measured in the same run on the same machine.

For each backend, a fresh database and the real audit-service in a child process (FULL
durability: an event is acknowledged once its commit is flushed):

(a) ingest: RecordStream, batches of 500 events, 2 streams x 4 batches in flight; for
    PostgreSQL also the same load split over 2 replicas sharing the database;
(b) List latency on what (a) stored: median and 95th percentile of repeated calls for a few
    typical queries (newest page, one identifier, a context value, a prefix, a substring scan,
    and following page tokens).

PostgreSQL is a throwaway local cluster (initdb; PostgreSQL's default, durable settings) on a
Unix socket, started with the test suite's helper (``tests.postgres_cluster``), unless
``--postgres-url`` names a server to use.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg

from clients import pb, pb_grpc
from scripts.benchmarks.common import (
    LOOPBACK,
    ChildServer,
    Measurement,
    machine_lines,
    rate,
    sample_event,
)
from scripts.benchmarks.ingest import STREAM_BATCH, Target, stream_ingest

DESCRIPTION = "PostgreSQL vs SQLite: ingest events/s and List latency, in the same run"

CLUSTERS = 20  # context.cluster takes one of these values, round robin


@dataclass(frozen=True)
class Counts:
    events: int  # stored per backend (per replica setting) by the ingest measurement
    calls: int  # List calls per query
    max_seconds: float  # each ingest measurement stops early at this


QUICK = Counts(events=20_000, calls=15, max_seconds=15.0)
FULL = Counts(events=100_000, calls=40, max_seconds=60.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the SQLite file and the PostgreSQL cluster go (default: the system's"
        " temporary directory); put both on the disk you mean to compare",
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="a PostgreSQL server to use instead of a throwaway local cluster (its role must"
        " be allowed to CREATE DATABASE; the benchmark's databases are dropped afterwards)",
    )
    parser.add_argument("--streams", type=int, default=2, help="RecordStreams at once")
    parser.add_argument("--in-flight", type=int, default=4, help="batches in flight per stream")


def run(args: argparse.Namespace) -> int:
    counts = QUICK if args.quick else FULL
    run_id = secrets.token_hex(4)
    with ExitStack() as stack:
        tmp_dir = tempfile.TemporaryDirectory(prefix="auditlog-bench-", dir=args.dir)
        tmp = Path(stack.enter_context(tmp_dir))
        server = stack.enter_context(_postgres(args.postgres_url, args.dir))
        print(f"auditlog PostgreSQL vs SQLite benchmark ({'quick' if args.quick else 'full'})")
        for line in machine_lines(tmp):
            print(line)
        print(f"postgresql: {server.version} ({server.where})")
        print(
            f"events: {counts.events:,} per backend, ENTITY UPDATEs with 5-key snapshots, unique"
            f" identifiers and idempotency keys, context.cluster one of {CLUSTERS} values;"
            f" durability FULL on both; RecordStream {STREAM_BATCH}/batch,"
            f" {args.streams} streams x {args.in_flight} in flight"
        )
        print(flush=True)
        bench = Bench(counts, run_id, args.streams, args.in_flight, tmp)
        results: dict[str, dict[str, list[float]]] = {}
        sqlite_ingest, results["sqlite"] = bench.backend("sqlite", [str(tmp / "audit.db")])
        pg_ingest, results["postgres"] = bench.backend("postgres", [server.new_database()])
        pg_two, _ = bench.backend("postgres", [server.new_database()] * 2, lists=False)
        print()
        print(f"ingest (events/s, {counts.events:,} events):")
        for label, result in (
            ("sqlite, 1 process", sqlite_ingest),
            ("postgres, 1 replica", pg_ingest),
            ("postgres, 2 replicas", pg_two),
        ):
            print(f"  {label + ':':24} {rate(result.rate):>8}  {result.details('events')}")
        if sqlite_ingest.rate > 0:
            print(f"  postgres / sqlite (1 replica): {pg_ingest.rate / sqlite_ingest.rate:.2f}")
        print()
        print(f"List latency (ms, median / p95 of {counts.calls} calls, {counts.events:,} events):")
        print(f"  {'query':44} {'sqlite':>15} {'postgres':>15}")
        for name in results["sqlite"]:
            cells = [_cell(results[backend][name]) for backend in ("sqlite", "postgres")]
            print(f"  {name:44} {cells[0]:>15} {cells[1]:>15}")
    return 0


def _cell(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:.1f} / {p95 * 1000:.1f}"


# -- the PostgreSQL server -------------------------------------------------------------------


@dataclass
class _Server:
    base_url: str
    where: str
    version: str
    created: list[str]

    def new_database(self) -> str:
        name = f"auditlog_bench_{os.getpid()}_{len(self.created) + 1}"
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        self.created.append(name)
        from tests.postgres_cluster import with_database

        return with_database(self.base_url, name)


@contextmanager
def _postgres(url: str | None, parent: Path | None) -> Iterator[_Server]:
    from tests.postgres_cluster import PostgresCluster, PostgresUnavailable

    cluster: PostgresCluster | None = None
    if url is None:
        try:
            cluster = PostgresCluster.start(parent=parent, durable=True)
        except PostgresUnavailable as exc:
            raise SystemExit(f"scripts/bench postgres: {exc}") from None
        url = cluster.url()
        where = f"throwaway local cluster in {cluster.root}, default settings, Unix socket"
    else:
        where = "server given with --postgres-url"
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    server = _Server(url, where, row[0] if row else "?", [])
    try:
        yield server
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                for name in server.created:
                    conn.execute(f"DROP DATABASE IF EXISTS {name}")


# -- one backend -------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, counts: Counts, run_id: str, streams: int, in_flight: int, tmp: Path
    ) -> None:
        self.counts = counts
        self.run_id = run_id
        self.streams = streams
        self.in_flight = in_flight
        self.tmp = tmp
        self._next = 0
        self._services = 0

    def _events(self) -> list[bytes]:
        "Serialized RecordStreamRequests holding ``counts.events`` fresh events."
        start, self._next = self._next, self._next + self.counts.events
        batches = []
        for n, first in enumerate(range(start, start + self.counts.events, STREAM_BATCH)):
            events = []
            for i in range(first, min(first + STREAM_BATCH, start + self.counts.events)):
                event = sample_event(i, self.run_id)
                event.context["cluster"] = f"c{i % CLUSTERS}"
                events.append(event)
            batches.append(pb.RecordStreamRequest(batch=n, events=events).SerializeToString())
        return batches

    def backend(
        self, name: str, dbs: Sequence[str], *, lists: bool = True
    ) -> tuple[Measurement, dict[str, list[float]]]:
        "Ingest into one service per entry of ``dbs`` (several: replicas), then time Lists."
        batches = self._events()
        first_index = self._next - self.counts.events
        with ExitStack() as stack:
            servers = [stack.enter_context(self._service(name, db)) for db in dbs]
            per_stream = [batches[s :: self.streams] for s in range(self.streams)]
            targets = [Target(s.endpoint, s.process.pid) for s in servers]
            measured = self._ingest(targets, per_stream)
            label = f"{len(dbs)} replica{'s' if len(dbs) > 1 else ''}" if name == "postgres" else ""
            print(f"{name} {label} ingest: {rate(measured.rate)} events/s".replace("  ", " "))
            samples = self._lists(servers[0].endpoint, first_index) if lists else {}
        return measured, samples

    def _service(self, name: str, db: str) -> ChildServer:
        self._services += 1
        argv = [
            sys.executable, "-m", "audit_service", "--dev", "--listen", f"{LOOPBACK}:0",
            "--db", db, "--durability", "FULL", "--log-level", "WARNING",
        ]  # fmt: skip
        return ChildServer(argv, self.tmp / f"{self._services:02d}-{name}.log")

    def _ingest(self, targets: list[Target], per_stream: list[list[bytes]]) -> Measurement:
        if len(targets) == 1:
            return stream_ingest(targets[0], per_stream, self.in_flight, self.counts.max_seconds)
        # Replicas: the streams spread over them, all at once; the figures add up.
        with ThreadPoolExecutor(len(targets)) as pool:
            futures = [
                pool.submit(
                    stream_ingest,
                    target,
                    per_stream[i :: len(targets)],
                    self.in_flight,
                    self.counts.max_seconds,
                )
                for i, target in enumerate(targets)
            ]
            results = [f.result() for f in futures]
        seconds = max(r.seconds for r in results)
        return Measurement(sum(r.count for r in results), seconds)

    def _lists(self, endpoint: str, first_index: int) -> dict[str, list[float]]:
        prefix = f"service-{self.run_id}-{first_index + self.counts.events // 2:08d}"[:-2]
        one = f"service-{self.run_id}-{first_index + 7:08d}"
        queries: dict[str, pb.ListRequest] = {
            "newest 100, no filter": pb.ListRequest(page_size=100),
            "identifier EQUALS one (newest first)": pb.ListRequest(
                page_size=100, filters=[_rule("identifier", pb.FILTER_OP_EQUALS, one)]
            ),
            f"context.cluster EQUALS (1 in {CLUSTERS}), 100": pb.ListRequest(
                page_size=100, filters=[_rule("context.cluster", pb.FILTER_OP_EQUALS, "c7")]
            ),
            "identifier STARTS_WITH (100 match), 100": pb.ListRequest(
                page_size=100, filters=[_rule("identifier", pb.FILTER_OP_STARTS_WITH, prefix)]
            ),
            "identifier CONTAINS (1 match: a scan)": pb.ListRequest(
                page_size=100, filters=[_rule("identifier", pb.FILTER_OP_CONTAINS, one[-12:])]
            ),
            "identifier asc, 100, with snapshots": pb.ListRequest(
                page_size=100, order_by="identifier asc", include_snapshots=True
            ),
        }
        samples: dict[str, list[float]] = {}
        with grpc.insecure_channel(endpoint) as channel:
            stub = pb_grpc.AuditServiceStub(channel)
            for name, request in queries.items():
                samples[name] = _timed(functools.partial(stub.List, request), self.counts.calls)
            samples["next page by token (identifier asc, 100)"] = _pages(stub, self.counts.calls)
        return samples


def _rule(field: str, op: pb.FilterOp.ValueType, value: str) -> pb.Filter:
    return pb.Filter(field=field, op=op, values=[value])


def _timed(call: Callable[[], object], calls: int) -> list[float]:
    for _ in range(3):  # warm caches and connections
        call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _pages(stub: pb_grpc.AuditServiceStub, calls: int) -> list[float]:
    "Latency of each next page while walking ``calls`` pages by their tokens."
    request = pb.ListRequest(page_size=100, order_by="identifier asc")
    request.page_token = stub.List(request).next_page_token
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        response = stub.List(request)
        samples.append(time.perf_counter() - start)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    return samples

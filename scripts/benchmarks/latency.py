"""What the query benchmarks (``list``, ``contains``, ``diff``) share: the database they query,
the service in a child process, timed calls and the report.

Every latency is the wall time of one gRPC call from this process over loopback, one call at a
time. The floor beside them is the same for ``grpc.health.v1.Health/Check`` on the same
server: what any call costs here before the service does anything.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.benchmarks import dataset
from scripts.benchmarks.common import (
    ChildServer,
    audit_service_argv,
    load_average,
    machine_lines,
    percentile,
    rss_line,
)


@dataclass
class Timed:
    "One query's samples (seconds) and what it returned."

    name: str
    samples: list[float] = field(default_factory=list)
    returned: int = 0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples, 0.99) * 1000


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="query this database (made by 'scripts/bench generate') instead of generating"
        " one; it is opened by the service (migrated if older) and not written to otherwise",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help=f"events to generate (default {dataset.DEFAULT_EVENTS:,};"
        f" {dataset.QUICK_EVENTS:,} with --quick)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where a generated database goes (default: /tmp)"
    )
    parser.add_argument("--calls", type=int, default=None, help="timed calls per query")


@contextmanager
def database(args: argparse.Namespace, title: str) -> Iterator[Path]:
    "The database to query (``--db``, or a fresh one), with the run's header printed."
    with tempfile.TemporaryDirectory(prefix="auditlog-bench-", dir=args.dir) as tmp:
        print(f"auditlog {title} benchmark ({'quick' if args.quick else 'full'})")
        for line in machine_lines(Path(tmp) if args.db is None else args.db.parent):
            print(line)
        print(f"load average before: {load_average()}", flush=True)
        if args.db is not None:
            print(f"database: {args.db} (given with --db)")
            yield args.db
            return
        events = args.events or (dataset.QUICK_EVENTS if args.quick else dataset.DEFAULT_EVENTS)
        path = Path(tmp) / "bench.db"
        made = dataset.generate(path, events, end_ns=time.time_ns())
        print(
            f"database: {made.events:,} generated events ({_size_mb(path):,.0f} MB),"
            f" written in {made.seconds:.1f} s",
            flush=True,
        )
        yield path


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


@contextmanager
def service(db: Path, *extra: str) -> Iterator[ChildServer]:
    "The real audit-service on ``db`` in a child process (its log beside the database)."
    log = db.parent / f"{db.name}.bench-service.log"
    with ChildServer(audit_service_argv(db, *extra), log) as server:
        yield server


def timed(name: str, call: Callable[[], int], calls: int, warmup: int = 2) -> Timed:
    "Call ``call`` (returns how many events it got) ``calls`` times after ``warmup`` calls."
    result = Timed(name)
    for _ in range(warmup):
        result.returned = call()
    for _ in range(calls):
        start = time.perf_counter()
        call()
        result.samples.append(time.perf_counter() - start)
    return result


def health_floor(channel: grpc.Channel, calls: int) -> Timed:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")

    def check() -> int:
        stub.Check(request)
        return 0

    return timed("floor: grpc.health.v1.Health/Check", check, calls)


def report(
    results: list[Timed], floor: Timed, p50_target_ms: float, p99_target_ms: float | None
) -> tuple[int, int]:
    "Print one line per query and the summary; returns (queries over p50, over p99)."
    width = max(len(r.name) for r in [*results, floor])
    print(f"  {'query':{width}}  {'p50 ms':>8} {'p99 ms':>8} {'events':>7}")
    for r in [floor, *results]:
        flag = ""
        if r is not floor and (
            r.p50_ms > p50_target_ms or (p99_target_ms is not None and r.p99_ms > p99_target_ms)
        ):
            flag = "  <- over target"
        print(f"  {r.name:{width}}  {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.returned:7d}{flag}")
    over50 = sum(r.p50_ms > p50_target_ms for r in results)
    over99 = sum(p99_target_ms is not None and r.p99_ms > p99_target_ms for r in results)
    worst50 = max(results, key=lambda r: r.p50_ms)
    worst99 = max(results, key=lambda r: r.p99_ms)
    every = sorted(s for r in results for s in r.samples)
    print(
        f"all {len(results)} queries, {len(every)} calls: p50 {statistics.median(every) * 1000:.2f}"
        f" ms, p99 {percentile(every, 0.99) * 1000:.2f} ms"
        f" (= {statistics.median(every) / statistics.median(floor.samples):.1f} x the floor's p50)"
    )
    print(f"worst p50: {worst50.p50_ms:.2f} ms ({worst50.name})")
    print(f"worst p99: {worst99.p99_ms:.2f} ms ({worst99.name})")
    target = f"p50 <= {p50_target_ms:g} ms" + (
        f", p99 <= {p99_target_ms:g} ms" if p99_target_ms is not None else ""
    )
    verdict = "met" if over50 == 0 and over99 == 0 else "NOT met"
    print(
        f"target {target} for every query: {verdict}"
        f" ({over50} over the p50 target"
        + (f", {over99} over the p99 target)" if p99_target_ms is not None else ")")
    )
    return over50, over99


def finish(server: ChildServer) -> None:
    print(rss_line(server.process.pid))
    print(f"load average after: {load_average()}")

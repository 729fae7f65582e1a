"""Ingest: how many events per second the service stores durably, beside what SQLite alone and
a do-nothing gRPC server reach on the same machine in the same run.

(a) raw SQLite: the service's own schema and rows, executemany, 1000 events per transaction,
    WAL, synchronous=FULL, with the text indexes kept as the service keeps them (the snapshot
    search text computed by SQLite from the rows); no gRPC, no Python per-event work inside
    the timing. Beside it, the
    service's storage layer in-process (SQLiteStorage.insert_batch, 500 events per call): the
    same rows plus the Python that builds them, ids, the idempotency lookup.
(b) RecordStream through the real server (a child process) over loopback: batches of 500
    events, FULL durability, a few batches in flight per stream; 1 and 2 streams.
(c) unary Record from concurrent client threads, FULL durability, beside the same client
    against a no-op server (same grpcio sync server, same thread pool, empty response).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import sqlite_utils

from audit_service import convert
from audit_service.ids import IdGenerator
from audit_service.models import NewEvent
from audit_service.storage import sqlite as sqlite_storage
from audit_service.storage import sqlite_rows
from audit_service.storage.sqlite import SQLiteStorage
from audit_service.storage.sqlite_schema import migrate
from clients import pb, pb_grpc
from scripts.benchmarks.common import (
    ChildServer,
    Measurement,
    add_endpoint_argument,
    audit_service_argv,
    machine_lines,
    process_cpu_seconds,
    rate,
    sample_event,
)

DESCRIPTION = "events/s: raw SQLite vs RecordStream vs unary Record (vs a no-op gRPC server)"

RAW_EVENTS_PER_TXN = 1000
STREAM_BATCH = 500
MEASUREMENTS = ("raw", "storage", "stream", "unary", "noop")
RECORD_METHOD = "/auditlog.v1.AuditService/Record"
RECORD_STREAM_METHOD = "/auditlog.v1.AuditService/RecordStream"
RPC_TIMEOUT_S = 60.0
PRINCIPAL = "dev"  # whom --dev records every event as


@dataclass(frozen=True)
class Counts:
    events: int  # raw SQLite and each RecordStream setting: same rows, same database size
    unary_calls: int  # unary Record, and the no-op server
    max_seconds: float  # each measurement stops early at this, and reports what it did


QUICK = Counts(events=40_000, unary_calls=6_000, max_seconds=10.0)
FULL = Counts(events=150_000, unary_calls=20_000, max_seconds=20.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the benchmark databases go (default: a fresh temporary directory);"
        " FULL durability writes and fsyncs the WAL there on every commit",
    )
    parser.add_argument(
        "--only",
        choices=MEASUREMENTS,
        action="append",
        help="run only these measurements (repeatable); ratios need their baseline",
    )
    add_endpoint_argument(parser)
    parser.add_argument(
        "--streams", type=_count(64), nargs="+", default=[1, 2], help="stream counts to try"
    )
    parser.add_argument(
        "--in-flight", type=_count(64), default=4, help="batches in flight per stream"
    )
    parser.add_argument("--threads", type=_count(256), default=8, help="unary client threads")


def _count(most: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"{text} is not between 1 and {most}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    counts = QUICK if args.quick else FULL
    wanted = set(args.only or MEASUREMENTS)
    with tempfile.TemporaryDirectory(prefix="auditlog-bench-", dir=args.dir) as tmp:
        bench = IngestBench(Path(tmp), counts, args.endpoint)
        print(f"auditlog ingest benchmark ({'quick' if args.quick else 'full'})")
        for line in machine_lines(Path(tmp)):
            print(line)
        size = sample_event(0, bench.run_id).ByteSize()
        print(
            "event: ENTITY UPDATE, 5-key before/after snapshots, 2 context entries, unique"
            f" identifier and idempotency key ({size} bytes serialized)"
        )
        print(
            f"counts: {counts.events:,} events for raw SQLite, the storage layer and each"
            " RecordStream setting,"
            f" {counts.unary_calls:,} unary calls per server; each measurement on a fresh"
            f" database, capped at {counts.max_seconds:.0f} s"
        )
        print(f"load average before: {_load()}")
        _warn_if_busy()
        print(flush=True)
        raw = bench.raw() if "raw" in wanted else None
        if "storage" in wanted:
            bench.storage(raw)
        if "stream" in wanted:
            bench.streams(args.streams, args.in_flight, raw)
        unary = bench.unary(args.threads) if "unary" in wanted else None
        noop = bench.noop(args.threads) if "noop" in wanted else None
        if unary and noop and noop.rate > 0:
            print(f"unary Record / no-op unary = {unary.rate / noop.rate:.2f}")
        print(f"load average after: {_load()}")
        _warn_if_busy()
    return 0


def _warn_if_busy() -> None:
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    if load > cpus / 2:
        print(
            f"WARNING: the machine is busy (load {load:.1f} on {cpus} CPUs): other processes"
            " take CPU from the benchmark, so these figures are low and noisy",
            flush=True,
        )


def _load() -> str:
    "The 1, 5 and 15 minute load averages: other work on the machine skews every figure."
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


class IngestBench:
    def __init__(self, tmp: Path, counts: Counts, endpoint: str | None) -> None:
        self.tmp = tmp
        self.counts = counts
        self.endpoint = endpoint
        self.run_id = secrets.token_hex(4)
        self._next_index = 0
        self._databases = 0

    def _indexes(self, count: int) -> range:
        "Fresh event numbers, so identifiers and idempotency keys never repeat in a run."
        start = self._next_index
        self._next_index += count
        return range(start, start + count)

    def _db_path(self, name: str) -> Path:
        self._databases += 1
        return self.tmp / f"{self._databases:02d}-{name}.db"

    # -- (a) raw SQLite --------------------------------------------------------------------

    def raw(self) -> Measurement:
        transactions = raw_rows(
            [sample_event(i, self.run_id) for i in self._indexes(self.counts.events)]
        )
        result = raw_insert(self._db_path("raw"), transactions, self.counts.max_seconds)
        print(
            f"raw sqlite executemany ({RAW_EVENTS_PER_TXN}/txn, FULL): {rate(result.rate)}"
            f" events/s  {result.details('events', 'bench process')}",
            flush=True,
        )
        return result

    def storage(self, raw: Measurement | None) -> Measurement:
        "The service's own insert path without gRPC: SQLiteStorage.insert_batch, in-process."
        events = new_events(
            [sample_event(i, self.run_id) for i in self._indexes(self.counts.events)]
        )
        result = storage_insert(self._db_path("storage"), events, self.counts.max_seconds)
        print(
            f"SQLiteStorage.insert_batch in-process ({STREAM_BATCH}/txn, FULL):"
            f" {rate(result.rate)} events/s{_vs(result, raw)}"
            f"  {result.details('events', 'bench process')}",
            flush=True,
        )
        return result

    # -- (b) RecordStream ------------------------------------------------------------------

    def streams(
        self, stream_counts: Sequence[int], in_flight: int, raw: Measurement | None
    ) -> Measurement | None:
        best: tuple[Measurement, str] | None = None
        for streams in stream_counts:
            label = f"{streams} stream{'s' if streams > 1 else ''} x {in_flight} in flight"
            batches = [
                pb.RecordStreamRequest(
                    batch=n, events=[sample_event(i, self.run_id) for i in chunk]
                ).SerializeToString()
                for n, chunk in enumerate(_chunks(self._indexes(self.counts.events), STREAM_BATCH))
            ]
            warmup = [
                pb.RecordStreamRequest(
                    batch=0, events=[sample_event(i, self.run_id) for i in self._indexes(50)]
                ).SerializeToString()
            ]
            with self._service("stream") as target:
                stream_ingest(target, [warmup], 1, self.counts.max_seconds)
                per_stream = [batches[s::streams] for s in range(streams)]
                result = stream_ingest(target, per_stream, in_flight, self.counts.max_seconds)
            print(
                f"RecordStream {STREAM_BATCH}/batch, {label}: {rate(result.rate)} events/s"
                f"{_vs(result, raw)}  {result.details('events')}",
                flush=True,
            )
            if best is None or result.rate > best[0].rate:
                best = (result, label)
        if best is not None and len(stream_counts) > 1:
            print(
                f"RecordStream {STREAM_BATCH}/batch (best: {best[1]}): {rate(best[0].rate)}"
                f" events/s{_vs(best[0], raw)}",
                flush=True,
            )
        return None if best is None else best[0]

    # -- (c) unary Record and the no-op server -----------------------------------------------

    def unary(self, threads: int) -> Measurement:
        requests = [
            pb.RecordRequest(event=sample_event(i, self.run_id)).SerializeToString()
            for i in self._indexes(self.counts.unary_calls + threads * 10)
        ]
        warmup, requests = requests[: threads * 10], requests[threads * 10 :]
        with self._service("unary") as target:
            unary_calls(target, warmup, threads, self.counts.max_seconds)
            result = unary_calls(target, requests, threads, self.counts.max_seconds)
        print(
            f"unary Record, {threads} client threads (FULL): {rate(result.rate)} events/s"
            f"  {result.details('calls')}",
            flush=True,
        )
        return result

    def noop(self, threads: int) -> Measurement:
        request = pb.RecordRequest(event=sample_event(0, self.run_id)).SerializeToString()
        requests = [request] * self.counts.unary_calls
        argv = [sys.executable, "-m", "scripts.benchmarks.noop_server"]
        with ChildServer(argv, self.tmp / "noop-server.log") as server:
            target = Target(server.endpoint, server.process.pid)
            warmup = requests[: threads * 10]
            unary_calls(target, warmup, threads, self.counts.max_seconds, listed=False)
            result = unary_calls(target, requests, threads, self.counts.max_seconds, listed=False)
        print(
            f"no-op unary gRPC server, {threads} client threads: {rate(result.rate)} calls/s"
            f"  {result.details('calls')}",
            flush=True,
        )
        return result

    def _service(self, name: str) -> _Service:
        return _Service(self.endpoint, self._db_path(name))


@dataclass(frozen=True)
class Target:
    "A server to measure: where it listens and, when we started it, its process id."

    endpoint: str
    pid: int | None = None


class _Service:
    "The endpoint given with --endpoint, else a fresh audit-service in a child process."

    def __init__(self, endpoint: str | None, db_path: Path) -> None:
        self._endpoint = endpoint
        self._db_path = db_path
        self._server: ChildServer | None = None

    def __enter__(self) -> Target:
        if self._endpoint is not None:
            return Target(self._endpoint)
        argv = audit_service_argv(self._db_path, "--durability", "FULL")
        self._server = ChildServer(argv, self._db_path.with_suffix(".log"))
        return Target(self._server.endpoint, self._server.process.pid)

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            status = self._server.stop()
            if status != 0:
                raise RuntimeError(f"audit-service exited with status {status}")


def _vs(result: Measurement, raw: Measurement | None) -> str:
    return "" if raw is None or raw.rate <= 0 else f" = {result.rate / raw.rate:.2f} x raw"


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- raw SQLite ------------------------------------------------------------------------------


@dataclass
class Transaction:
    "The rows the service writes for one group of events."

    events: list[tuple[Any, ...]]
    context: list[tuple[str, str, str, int, int]]  # key, value, resource, occurred_at, seq
    snapshots: list[tuple[int, str | None, str | None]]
    errors: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def new_events(events: Sequence[pb.AuditEvent]) -> list[NewEvent]:
    "``events`` as the servicer hands them to storage (converted, recorded by ``dev``)."
    now = time.time_ns()
    return [
        dataclasses.replace(convert.event_from_pb(event, now), recorded_by=PRINCIPAL)
        for event in events
    ]


def storage_insert(path: Path, events: Sequence[NewEvent], max_seconds: float) -> Measurement:
    "Store ``events`` with ``SQLiteStorage.insert_batch``, one RecordStream batch at a time."
    store = SQLiteStorage(path, durability="FULL")
    try:
        count = 0
        cpu = process_cpu_seconds()
        start = time.perf_counter()
        for chunk in _chunks(range(len(events)), STREAM_BATCH):
            if time.perf_counter() > start + max_seconds:
                break
            store.insert_batch([events[i] for i in chunk])
            count += len(chunk)
        store.wait_applied()  # acknowledged is not enough: until every event is queryable
        elapsed = time.perf_counter() - start
        return Measurement(count, elapsed, client_cpu=_used(cpu, process_cpu_seconds()))
    finally:
        store.close()


def raw_rows(events: Sequence[pb.AuditEvent]) -> list[Transaction]:
    """The rows ``SQLiteStorage.insert_batch`` would write for ``events``, built with its own
    conversion and row functions, ``RAW_EVENTS_PER_TXN`` events per transaction."""
    ids = IdGenerator()
    now = time.time_ns()
    converted = new_events(events)
    transactions: list[Transaction] = []
    seq = 0
    for chunk in _chunks(range(len(events)), RAW_EVENTS_PER_TXN):
        txn = Transaction([], [], [])
        for i in chunk:
            seq += 1
            event = converted[i]
            txn.events.append(sqlite_rows.event_row(seq, ids.new(), now, event))
            txn.context.extend(
                (k, v, event.resource.value, event.occurred_at, seq)
                for k, v in event.context.items()
            )
            if event.before is not None or event.after is not None:
                txn.snapshots.append(
                    (seq, sqlite_rows.dumps(event.before), sqlite_rows.dumps(event.after))
                )
            if event.error:
                txn.errors.append((seq, event.error))
        transactions.append(txn)
    return transactions


def raw_insert(path: Path, transactions: Sequence[Transaction], max_seconds: float) -> Measurement:
    "Insert prebuilt rows into a fresh database with the service's schema and connection."
    conn = sqlite_storage.connect(path, "FULL")
    try:
        migrate(sqlite_utils.Database(conn))
        count = 0
        cpu = process_cpu_seconds()
        start = time.perf_counter()
        deadline = start + max_seconds
        for txn in transactions:
            if time.perf_counter() > deadline:
                break
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sqlite_rows.INSERT_EVENT, txn.events)
            conn.executemany(
                "INSERT INTO event_context (key, value, resource, occurred_at, seq)"
                " VALUES (?, ?, ?, ?, ?)",
                txn.context,
            )
            conn.executemany(
                "INSERT INTO snapshots (seq, before, after) VALUES (?, ?, ?)", txn.snapshots
            )
            conn.executemany(sqlite_rows.INSERT_ERROR_FTS, txn.errors)
            if txn.snapshots:  # the snapshot text index, as the service keeps it
                conn.execute(
                    sqlite_rows.INDEX_SNAPSHOTS, [txn.snapshots[0][0], txn.snapshots[-1][0]]
                )
            conn.execute("COMMIT")
            count += len(txn.events)
        elapsed = time.perf_counter() - start
        return Measurement(count, elapsed, client_cpu=_used(cpu, process_cpu_seconds()))
    finally:
        conn.close()


# -- gRPC clients ----------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


def stream_ingest(
    target: Target, per_stream: Sequence[Sequence[bytes]], in_flight: int, max_seconds: float
) -> Measurement:
    """Send each list of pre-serialized RecordStreamRequests on its own stream, each stream
    keeping up to ``in_flight`` batches unacknowledged. Returns the events acknowledged and
    the time from the first send to the last acknowledgement."""
    acked = [0] * len(per_stream)
    errors: list[BaseException] = []
    cpu = _CpuMeter(target.pid)
    start = time.perf_counter()
    deadline = start + max_seconds

    def one_stream(index: int) -> None:
        try:
            with grpc.insecure_channel(target.endpoint) as channel:
                call = channel.stream_stream(
                    RECORD_STREAM_METHOD,
                    request_serializer=_identity,
                    response_deserializer=pb.RecordStreamResponse.FromString,
                )
                window = threading.BoundedSemaphore(in_flight)

                def requests() -> Iterator[bytes]:
                    for batch in per_stream[index]:
                        if time.perf_counter() > deadline or not window.acquire(
                            timeout=RPC_TIMEOUT_S
                        ):
                            return
                        yield batch

                for response in call(requests(), timeout=max_seconds + RPC_TIMEOUT_S):
                    window.release()
                    _check_results(response)
                    acked[index] += len(response.results)
        except BaseException as exc:
            errors.append(exc)

    _run_threads(one_stream, len(per_stream), max_seconds + 2 * RPC_TIMEOUT_S)
    _until_listed(target)
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"RecordStream failed: {errors[0]!r}") from errors[0]
    return cpu.measurement(sum(acked), elapsed)


def _until_listed(target: Target) -> None:
    """One List call: the service answers it once every event acknowledged before it is in
    the events tables (SQLite applies staged events behind the acknowledgement)."""
    with grpc.insecure_channel(target.endpoint) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        stub.List(pb.ListRequest(page_size=1), timeout=RPC_TIMEOUT_S)


def _check_results(response: pb.RecordStreamResponse) -> None:
    for result in response.results:
        if result.error or result.duplicate:
            raise RuntimeError(f"batch {response.batch}: event not stored as new: {result}")


def unary_calls(
    target: Target,
    requests: Sequence[bytes],
    threads: int,
    max_seconds: float,
    *,
    listed: bool = True,
) -> Measurement:
    """Send pre-serialized RecordRequests as unary Record calls from ``threads`` threads sharing
    one channel. Returns the calls answered and the time they took, up to the answer of a List
    after the last (``listed``; the no-op server has none): every event acknowledged is then
    queryable, not only stored."""
    done = [0] * threads
    errors: list[BaseException] = []
    cpu = _CpuMeter(target.pid)
    start = time.perf_counter()
    deadline = start + max_seconds
    with grpc.insecure_channel(target.endpoint) as channel:
        call = channel.unary_unary(
            RECORD_METHOD,
            request_serializer=_identity,
            response_deserializer=pb.RecordResponse.FromString,
        )

        def one_thread(index: int) -> None:
            try:
                for request in requests[index::threads]:
                    if time.perf_counter() > deadline:
                        return
                    if call(request, timeout=RPC_TIMEOUT_S).duplicate:
                        raise RuntimeError("an event was taken for a duplicate")
                    done[index] += 1
            except BaseException as exc:
                errors.append(exc)

        _run_threads(one_thread, threads, max_seconds + 2 * RPC_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"Record failed: {errors[0]!r}") from errors[0]
    return cpu.measurement(sum(done), elapsed)


class _CpuMeter:
    "CPU seconds the server process and this (client) process use from now on."

    def __init__(self, server_pid: int | None) -> None:
        self._pid = server_pid
        self._server = None if server_pid is None else process_cpu_seconds(server_pid)
        self._client = process_cpu_seconds()

    def measurement(self, count: int, seconds: float) -> Measurement:
        server = None if self._pid is None else process_cpu_seconds(self._pid)
        return Measurement(
            count,
            seconds,
            server_cpu=_used(self._server, server),
            client_cpu=_used(self._client, process_cpu_seconds()),
        )


def _used(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _run_threads(target: Callable[[int], None], count: int, timeout: float) -> None:
    "Run ``target(0) .. target(count - 1)`` in threads; :raises TimeoutError: one hangs."
    workers = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            raise TimeoutError(f"a client thread is still running after {timeout:.0f} s")

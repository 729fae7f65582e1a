"""CONTAINS on error and snapshot text at a million events, over gRPC, against the real
service on a generated database (see ``dataset``).

Error texts come from a dozen templates with a resource's name in them, on 3% of events;
snapshots hold a title, team, image, labels and owner. Each query asks for one page of 100,
newest first, and is timed ``--calls`` times. Target (issue 10): p50 <= 50 ms.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import grpc

from clients import pb, pb_grpc
from scripts.benchmarks import dataset
from scripts.benchmarks.latency import (
    add_database_arguments,
    database,
    finish,
    health_floor,
    report,
    service,
    timed,
)

DESCRIPTION = "CONTAINS on error and snapshot text (FTS5) at 1M events: p50 per query"

P50_TARGET_MS = 50.0
QUICK_CALLS = 10
FULL_CALLS = 40
SNAPSHOT_FIELD = "snapshot_text"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_arguments(parser)


def run(args: argparse.Namespace) -> int:
    calls = args.calls or (QUICK_CALLS if args.quick else FULL_CALLS)
    with database(args, "CONTAINS") as db:
        queries = _queries(_values(db))
        print(f"queries: {len(queries)}, {calls} timed calls each, page_size 100")
        with service(db) as server, grpc.insecure_channel(server.endpoint) as channel:
            stub = pb_grpc.AuditServiceStub(channel)
            floor = health_floor(channel, calls * 3)
            results = []
            for name, request in queries.items():
                try:
                    results.append(timed(name, _lister(stub, request), calls))
                except grpc.RpcError as exc:
                    print(f"  {name}: refused by the service: {exc.details()}")
            print()
            if results:
                report(results, floor, P50_TARGET_MS, None)
            finish(server)
    return 0


def _lister(stub: pb_grpc.AuditServiceStub, request: pb.ListRequest) -> Callable[[], int]:
    def call() -> int:
        return len(stub.List(request).events)

    return call


def _rule(field: str, *values: str) -> pb.Filter:
    return pb.Filter(field=field, op=pb.FILTER_OP_CONTAINS, values=list(values))


def _values(db: Path) -> dict[str, str]:
    conn = dataset.connect_read_only(db)
    try:
        row = conn.execute(
            "SELECT identifier FROM events WHERE status = 'FAILURE' AND resource = 'ENTITY'"
            " ORDER BY seq LIMIT 1 OFFSET 100"
        ).fetchone()
        old = conn.execute(
            "SELECT identifier FROM events WHERE resource = 'ENTITY' ORDER BY seq LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    return {"failed_name": row[0] if row else "none", "old_name": old[0] if old else "none"}


def _queries(v: dict[str, str]) -> dict[str, pb.ListRequest]:
    entity = pb.Filter(field="resource", op=pb.FILTER_OP_EQUALS, values=["entity"])
    failed = v["failed_name"]
    rules: dict[str, list[pb.Filter]] = {
        "error CONTAINS 'timed out' (1 in 12 errors)": [_rule("error", "timed out")],
        "error CONTAINS 'TIMED OUT' (entity tab)": [entity, _rule("error", "TIMED OUT")],
        "error CONTAINS one resource's name (rare)": [_rule("error", failed)],
        "error CONTAINS 'quota' or 'rate limited'": [_rule("error", "quota", "rate limited")],
        "error CONTAINS '502' (3 characters)": [_rule("error", "502")],
        "error CONTAINS 'zz-no-such-text' (no match)": [_rule("error", "zz-no-such-text")],
        f"{SNAPSHOT_FIELD} CONTAINS 'platinum' (common)": [
            entity,
            _rule(SNAPSHOT_FIELD, "platinum"),
        ],
        f"{SNAPSHOT_FIELD} CONTAINS one resource's name (rare)": [
            _rule(SNAPSHOT_FIELD, v["old_name"])
        ],
        f"{SNAPSHOT_FIELD} CONTAINS 'payments-owners@' (1 in 8)": [
            _rule(SNAPSHOT_FIELD, "payments-owners@")
        ],
        f"{SNAPSHOT_FIELD} CONTAINS 'zz-no-such-text' (no match)": [
            _rule(SNAPSHOT_FIELD, "zz-no-such-text")
        ],
    }
    return {name: pb.ListRequest(filters=r, page_size=100) for name, r in rules.items()}

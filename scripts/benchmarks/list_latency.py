"""List latency at a million events: every filter field and every sort of the contract, over
gRPC, against the real service on a generated database (see ``dataset``).

Each query asks for one page of the default size (100) and is timed ``--calls`` times, one call
at a time. Most run inside a tab (``resource EQUALS``), as the console always sends them; a few
run across every tab. Values are picked from the database so that each filter matches
something: one identifier (about 10 events), a blueprint (1 in 40), 3% failures, and so on.
Target (issue 10): p50 <= 5 ms and p99 <= 25 ms for each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from clients import pb, pb_grpc
from scripts.benchmarks import dataset
from scripts.benchmarks.latency import (
    Timed,
    add_database_arguments,
    database,
    finish,
    health_floor,
    report,
    service,
    timed,
)

DESCRIPTION = "List p50/p99 over gRPC at 1M events: every filter field and every sort"

P50_TARGET_MS = 5.0
P99_TARGET_MS = 25.0
QUICK_CALLS = 10
FULL_CALLS = 50
SORTABLE = (
    "occurred_at", "recorded_at", "resource", "identifier", "blueprint", "integration",
    "run_id", "operation", "source", "source_kind", "origin", "status", "error", "recorded_by",
)  # fmt: skip
HOUR_NS = 3600 * 1_000_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_arguments(parser)
    parser.add_argument("--page-size", type=int, default=100, help="events per page")


def run(args: argparse.Namespace) -> int:
    calls = args.calls or (QUICK_CALLS if args.quick else FULL_CALLS)
    with database(args, "List latency") as db:
        values = _values(db)
        queries = _queries(values, args.page_size)
        print(f"queries: {len(queries)}, {calls} timed calls each, page_size {args.page_size}")
        with service(db) as server, grpc.insecure_channel(server.endpoint) as channel:
            stub = pb_grpc.AuditServiceStub(channel)
            floor = health_floor(channel, calls * 3)
            results = [timed(name, _lister(stub, q), calls) for name, q in queries.items()]
            for sort in ("identifier asc", "occurred_at desc", "source desc"):
                results.append(_next_pages(stub, sort, args.page_size, calls))
            print()
            report(results, floor, P50_TARGET_MS, P99_TARGET_MS)
            finish(server)
    return 0


def _lister(stub: pb_grpc.AuditServiceStub, request: pb.ListRequest) -> Callable[[], int]:
    def call() -> int:
        return len(stub.List(request).events)

    return call


def _next_pages(stub: pb_grpc.AuditServiceStub, sort: str, page_size: int, calls: int) -> Timed:
    "Each call fetches the next page by the previous one's token (inside the ENTITY tab)."
    request = pb.ListRequest(page_size=page_size, order_by=sort, filters=[_tab("entity")])
    request.page_token = stub.List(request).next_page_token
    result = Timed(f"next page by token, entity tab, {sort}")
    for _ in range(calls):
        start = time.perf_counter()
        response = stub.List(request)
        result.samples.append(time.perf_counter() - start)
        result.returned = len(response.events)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    return result


def _rule(field: str, op: str, *values: str) -> pb.Filter:
    return pb.Filter(field=field, op=pb.FilterOp.Value("FILTER_OP_" + op), values=list(values))


def _tab(resource: str) -> pb.Filter:
    return _rule("resource", "EQUALS", resource)


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


def _values(db: Path) -> dict[str, str]:
    "Values that occur in the database, for the filters to match something."
    conn = dataset.connect_read_only(db)
    try:

        def one(sql: str) -> str:
            row = conn.execute(sql).fetchone()
            return "" if row is None else str(row[0])

        newest = int(one("SELECT max(occurred_at) FROM events"))
        return {
            "identifier": one(
                "SELECT identifier FROM events WHERE resource = 'ENTITY'"
                " ORDER BY seq DESC LIMIT 1 OFFSET 1000"
            ),
            "blueprint": one(
                "SELECT blueprint FROM events WHERE resource = 'ENTITY' ORDER BY seq DESC LIMIT 1"
            ),
            "integration": one(
                "SELECT integration FROM events WHERE integration != '' ORDER BY seq DESC LIMIT 1"
            ),
            "run_id": one(
                "SELECT run_id FROM events WHERE resource = 'RUN'"
                " ORDER BY seq DESC LIMIT 1 OFFSET 5000"
            ),
            "source": one(
                "SELECT source_id FROM events WHERE source_kind = 'USER' ORDER BY seq DESC LIMIT 1"
            ),
            "run_source": one(
                "SELECT source_id FROM events WHERE resource = 'RUN'"
                " AND source_kind = 'USER' ORDER BY seq DESC LIMIT 1"
            ),
            "recorded_by": one(
                "SELECT recorded_by FROM events WHERE resource = 'ENTITY' ORDER BY seq DESC LIMIT 1"
            ),
            "cluster": one("SELECT value FROM event_context WHERE key = 'cluster' LIMIT 1"),
            "repo": one("SELECT value FROM event_context WHERE key = 'repo' LIMIT 1"),
            "day_ago": _rfc3339(newest - 24 * HOUR_NS),
            "hour_start": _rfc3339(newest - 72 * HOUR_NS),
            "hour_end": _rfc3339(newest - 71 * HOUR_NS),
        }
    finally:
        conn.close()


def _queries(v: dict[str, str], page_size: int) -> dict[str, pb.ListRequest]:
    entity = _tab("entity")
    prefix = v["identifier"][: len(v["identifier"]) - 2]  # about 100 identifiers
    filters: dict[str, list[pb.Filter]] = {
        "resource EQUALS entity (the tab alone)": [entity],
        "resource EQUALS secret (2% of events)": [_tab("secret")],
        "occurred_at GTE a day ago": [entity, _rule("occurred_at", "GTE", v["day_ago"])],
        "occurred_at in one hour, 3 days ago": [
            entity,
            _rule("occurred_at", "GTE", v["hour_start"]),
            _rule("occurred_at", "LT", v["hour_end"]),
        ],
        "recorded_at GTE a day ago": [entity, _rule("recorded_at", "GTE", v["day_ago"])],
        "identifier EQUALS one": [entity, _rule("identifier", "EQUALS", v["identifier"])],
        "identifier STARTS_WITH (about 100 identifiers)": [
            entity,
            _rule("identifier", "STARTS_WITH", prefix),
        ],
        "blueprint EQUALS one of 40": [entity, _rule("blueprint", "EQUALS", v["blueprint"])],
        "integration EQUALS one of 25": [
            entity,
            _rule("integration", "EQUALS", v["integration"]),
        ],
        "run_id EQUALS one (run tab)": [_tab("run"), _rule("run_id", "EQUALS", v["run_id"])],
        "operation EQUALS delete": [entity, _rule("operation", "EQUALS", "delete")],
        "operation NOT_EQUALS update": [entity, _rule("operation", "NOT_EQUALS", "update")],
        "source EQUALS one user": [entity, _rule("source", "EQUALS", v["source"])],
        "source EQUALS one user (run tab: a member's runs)": [
            _tab("run"),
            _rule("source", "EQUALS", v["run_source"]),
        ],
        "source_kind EQUALS webhook": [entity, _rule("source_kind", "EQUALS", "webhook")],
        "origin EQUALS terraform (6%)": [entity, _rule("origin", "EQUALS", "terraform")],
        "origin EQUALS pulumi (1%)": [entity, _rule("origin", "EQUALS", "pulumi")],
        "status EQUALS failure (3%)": [entity, _rule("status", "EQUALS", "failure")],
        "error STARTS_WITH 'Deploy failed'": [
            entity,
            _rule("error", "STARTS_WITH", "Deploy failed"),
        ],
        "recorded_by EQUALS": [entity, _rule("recorded_by", "EQUALS", v["recorded_by"])],
        "context.cluster EQUALS one of 20": [
            entity,
            _rule("context.cluster", "EQUALS", v["cluster"]),
        ],
        "context.repo EQUALS one of 400": [entity, _rule("context.repo", "EQUALS", v["repo"])],
        "context.cluster STARTS_WITH one region (4 clusters)": [
            entity,
            _rule("context.cluster", "STARTS_WITH", v["cluster"].rsplit("-", 1)[0] + "-"),
        ],
        "all tabs: no filter": [],
        "all tabs: identifier EQUALS one": [_rule("identifier", "EQUALS", v["identifier"])],
        "all tabs: status EQUALS failure": [_rule("status", "EQUALS", "failure")],
        "all tabs: source EQUALS one user": [_rule("source", "EQUALS", v["source"])],
    }
    queries = {
        name: pb.ListRequest(filters=rules, page_size=page_size) for name, rules in filters.items()
    }
    for field in SORTABLE:
        for direction in ("asc", "desc"):
            queries[f"sort {field} {direction} (entity tab)"] = pb.ListRequest(
                filters=[entity], order_by=f"{field} {direction}", page_size=page_size
            )
        queries[f"sort {field} desc (all tabs)"] = pb.ListRequest(
            order_by=f"{field} desc", page_size=page_size
        )
    return queries

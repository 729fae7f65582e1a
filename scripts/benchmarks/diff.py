"""GetDiff with 100 KB snapshots, over gRPC, against the real service.

Stores ``--events`` ENTITY UPDATEs whose ``before`` is a 100 KB object (an entity with a
thousand properties: text, numbers, booleans, nested objects and arrays) and whose ``after``
changes, adds and removes a dozen of them; then times GetDiff on each in turn. Beside it the
same for an event with small snapshots. Target (issue 10): p50 <= 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from clients import pb, pb_grpc
from scripts.benchmarks.common import (
    ChildServer,
    add_endpoint_argument,
    audit_service_argv,
    load_average,
    machine_lines,
    percentile,
    rss_line,
    sample_event,
)

DESCRIPTION = "GetDiff p50/p99 with 100 KB before/after snapshots"

P50_TARGET_MS = 20.0
SNAPSHOT_BYTES = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=None, help="events with big snapshots")
    parser.add_argument("--calls", type=int, default=None, help="timed GetDiff calls")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    add_endpoint_argument(parser)


def big_snapshot(seed: int, size: int = SNAPSHOT_BYTES) -> dict[str, Any]:
    "An entity of about ``size`` bytes of JSON."
    properties: dict[str, Any] = {}
    i = 0
    while len(json.dumps(properties, separators=(",", ":"))) < size - 200:
        kind = i % 6
        key = f"property_{i:04d}"
        if kind == 0:
            properties[key] = f"value {seed}-{i} of a text property, with some words in it"
        elif kind == 1:
            properties[key] = i * 7 + seed
        elif kind == 2:
            properties[key] = i % 2 == 0
        elif kind == 3:
            properties[key] = {"name": f"n{i}", "count": i, "tags": ["a", "b", f"t{i}"]}
        elif kind == 4:
            properties[key] = [f"item-{i}-{j}" for j in range(5)]
        else:
            properties[key] = {"nested": {"deeper": {"value": i / 3, "flag": None}}}
        i += 1
    return {"identifier": f"entity-{seed}", "title": f"Entity {seed}", "properties": properties}


def changed(before: dict[str, Any]) -> dict[str, Any]:
    after = copy.deepcopy(before)
    props = after["properties"]
    keys = sorted(props)
    for key in keys[5:200:20]:
        value = props[key]
        props[key] = (value + 1) if isinstance(value, int) and not isinstance(value, bool) else "x"
    for key in keys[7:100:30]:
        del props[key]
    props["added_property"] = {"new": True}
    props[keys[4]].append("appended")  # an array property (kind 4)
    after["title"] += " (renamed)"
    return after


def run(args: argparse.Namespace) -> int:
    events = args.events or (10 if args.quick else 40)
    calls = args.calls or (60 if args.quick else 300)
    with tempfile.TemporaryDirectory(prefix="auditlog-bench-", dir=args.dir) as tmp:
        print(f"auditlog GetDiff benchmark ({'quick' if args.quick else 'full'})")
        for line in machine_lines(Path(tmp)):
            print(line)
        print(f"load average before: {load_average()}")
        with contextlib.ExitStack() as stack:
            pid = None
            endpoint = args.endpoint
            if endpoint is None:
                argv = audit_service_argv(Path(tmp) / "diff.db")
                server = stack.enter_context(ChildServer(argv, Path(tmp) / "service.log"))
                endpoint, pid = server.endpoint, server.process.pid
            with grpc.insecure_channel(endpoint) as channel:
                stub = pb_grpc.AuditServiceStub(channel)
                big_ids, size, patch_ops = _store_big(stub, events)
                small = stub.Record(pb.RecordRequest(event=sample_event(0, "diff"))).id
                print(
                    f"{events} events with {size:,}-byte snapshots (JSON), {patch_ops} patch"
                    f" operations each; {calls} timed calls"
                )
                big = _time(stub, big_ids, calls)
                floor = _time(stub, [small], calls)
            print(
                f"GetDiff, small snapshots (5 keys): p50 {_ms(floor, 0.5)} ms,"
                f" p99 {_ms(floor, 0.99)} ms"
            )
            print(
                f"GetDiff, {size // 1000} KB snapshots: p50 {_ms(big, 0.5)} ms, p99"
                f" {_ms(big, 0.99)} ms, max {max(big) * 1000:.2f} ms"
                f" (= {statistics.median(big) / statistics.median(floor):.1f} x small)"
            )
            verdict = "met" if statistics.median(big) * 1000 <= P50_TARGET_MS else "NOT met"
            print(f"target p50 <= {P50_TARGET_MS:g} ms: {verdict}")
            if pid is not None:
                print(rss_line(pid))
        print(f"load average after: {load_average()}")
    return 0


def _store_big(stub: pb_grpc.AuditServiceStub, events: int) -> tuple[list[str], int, int]:
    ids = []
    size = ops = 0
    for n in range(events):
        before = big_snapshot(n)
        after = changed(before)
        size = len(json.dumps(before, separators=(",", ":")))
        event = pb.AuditEvent(
            resource=pb.RESOURCE_TYPE_ENTITY, identifier=f"entity-{n}", blueprint="service",
            operation=pb.OPERATION_UPDATE, origin=pb.ORIGIN_API,
        )  # fmt: skip
        event.before.update(before)
        event.after.update(after)
        ids.append(stub.Record(pb.RecordRequest(event=event)).id)
    if ids:
        ops = len(stub.GetDiff(pb.GetDiffRequest(id=ids[0])).patch)
    return ids, size, ops


def _time(stub: pb_grpc.AuditServiceStub, ids: list[str], calls: int) -> list[float]:
    for event_id in ids[:3]:
        stub.GetDiff(pb.GetDiffRequest(id=event_id))
    samples = []
    for i in range(calls):
        request = pb.GetDiffRequest(id=ids[i % len(ids)])
        start = time.perf_counter()
        response = stub.GetDiff(request)
        samples.append(time.perf_counter() - start)
        if not response.available:
            raise RuntimeError(f"GetDiff {request.id}: {response.reason}")
    return samples


def _ms(samples: list[float], fraction: float) -> str:
    return f"{percentile(samples, fraction) * 1000:.2f}"

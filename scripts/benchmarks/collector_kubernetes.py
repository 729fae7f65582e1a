"""Kubernetes collector, end to end: events per second from webhook POSTs of 400-event
``audit.k8s.io/v1`` EventLists (as kube-apiserver's webhook backend sends them) until the
audit-service has acknowledged every event.

Then, as the ceiling the service sets, the same events (mapped beforehand in this process)
go to a fresh service over one RecordStream, without the collector.

The service and the collector run as child processes (``--dev`` service, FULL durability;
collector with its default spool durability, FULL, and default batching); the sender is
this process, with keep-alive connections. Each object is created and then patched, so half
the events take the history path (``before`` from the spool's state table). Bodies are built
before the clock starts. At the end the service is asked how many events it holds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients import AuditClient
from scripts.benchmarks.common import (
    LOOPBACK,
    ChildServer,
    audit_service_argv,
    machine_lines,
    process_cpu_seconds,
    rate,
)

DESCRIPTION = (
    "events/s end to end: 400-event EventList POSTs to audit-collector kubernetes until the"
    " service acknowledged them all"
)
BATCH = 400  # kube-apiserver's default --audit-webhook-batch-max-size
QUICK_EVENTS = 20_000
FULL_EVENTS = 100_000
TIMEOUT_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help=f"events to send (default {FULL_EVENTS:,}; {QUICK_EVENTS:,} with --quick)",
    )
    parser.add_argument(
        "--senders", type=int, default=2, help="concurrent webhook connections (default 2)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the service database and the spool go (default: a temporary directory)",
    )
    parser.add_argument(
        "--level",
        choices=("RequestResponse", "Metadata"),
        default="RequestResponse",
        help="audit level of the events: RequestResponse carries the objects (snapshots and"
        " diffs), Metadata only who did what (default RequestResponse)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip counting the events in the service"
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the second measurement: the same events sent to a fresh service directly",
    )


@dataclass
class SendResult:
    latencies: list[float]
    retries_503: int


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def deployment(name: str, uid: str, version: int, replicas: int, image: str) -> dict[str, Any]:
    "A Deployment of about 1.5 KB as the apiserver returns it (managedFields included)."
    return {
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": name,
            "namespace": "payments",
            "uid": uid,
            "resourceVersion": str(version),
            "generation": 2,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": name, "team": "payments", "tier": "backend"},
            "annotations": {"deployment.kubernetes.io/revision": "2"},
            "managedFields": [
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "apiVersion": "apps/v1",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
                }
            ],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            },
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                            },
                            "imagePullPolicy": "IfNotPresent",
                        }
                    ],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                },
            },
        },
        "status": {"replicas": replicas, "readyReplicas": replicas},
    }


def audit_item(verb: str, name: str, obj: dict[str, Any], level: str) -> dict[str, Any]:
    now = stamp()
    uri = "/apis/apps/v1/namespaces/payments/deployments"
    ref: dict[str, Any] = {"resource": "deployments", "namespace": "payments"}
    if verb != "create":
        uri += f"/{name}"
        ref["name"] = name
    ref.update(apiGroup="apps", apiVersion="v1")
    item: dict[str, Any] = {
        "level": level,
        "auditID": str(uuid.uuid4()),
        "stage": "ResponseComplete",
        "requestURI": uri,
        "verb": verb,
        "user": {"username": "ci@example.com", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.7"],
        "userAgent": "kubectl/v1.29.3 (linux/amd64) kubernetes/6813625",
        "objectRef": ref,
        "responseStatus": {"metadata": {}, "code": 201 if verb == "create" else 200},
    }
    if level == "RequestResponse":
        item["responseObject"] = obj
    item.update(
        requestReceivedTimestamp=now,
        stageTimestamp=now,
        annotations={"authorization.k8s.io/decision": "allow"},
    )
    return item


def bodies(events: int, run: str, level: str = "RequestResponse") -> list[bytes]:
    "EventList bodies of 400: each object created, then patched in a later batch."
    items: list[dict[str, Any]] = []
    objects = events // 2
    uids = [str(uuid.uuid4()) for _ in range(objects)]
    for i in range(objects):
        name = f"svc-{run}-{i:06d}"
        obj = deployment(name, uids[i], 100, 2, "app:1.0")
        items.append(audit_item("create", name, obj, level))
    for i in range(events - objects):
        name = f"svc-{run}-{i % objects:06d}"
        obj = deployment(name, uids[i % objects], 101, 4, "app:1.1")
        items.append(audit_item("patch", name, obj, level))
    out = []
    for start in range(0, len(items), BATCH):
        body: dict[str, Any] = {
            "kind": "EventList",
            "apiVersion": "audit.k8s.io/v1",
            "metadata": {},
            "items": items[start : start + BATCH],
        }
        out.append(json.dumps(body, separators=(",", ":")).encode())
    return out


def send(port: int, batches: Sequence[bytes], result: SendResult) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
    try:
        for body in batches:
            while True:
                started = time.perf_counter()
                conn.request("POST", "/audit", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    result.latencies.append(time.perf_counter() - started)
                    break
                if response.status != 503:
                    raise RuntimeError(f"the collector answered {response.status}")
                result.retries_503 += 1
                time.sleep(0.05)
    finally:
        conn.close()


def collector_stats(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("GET", "/stats")
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def count_stored(endpoint: str) -> int:
    with AuditClient(endpoint) as client:
        return sum(1 for _ in client.list(("origin", "=", "K8S_EXPORTER")))


def run(args: argparse.Namespace) -> int:
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    events -= events % BATCH
    with tempfile.TemporaryDirectory(prefix="auditlog-bench-k8s-", dir=args.dir) as tmp_text:
        tmp = Path(tmp_text)
        print("auditlog Kubernetes collector benchmark (webhook POST -> acknowledged)")
        for line in machine_lines(tmp):
            print(line)
        run_id = uuid.uuid4().hex[:6]
        warmup = bodies(BATCH, run_id + "w", args.level)
        payload = bodies(events, run_id, args.level)
        size = sum(len(b) for b in payload) / events
        print(
            f"events: {events:,} in {len(payload)} EventList POSTs of {BATCH}, level"
            f" {args.level} ({size:,.0f} bytes of JSON per event; half creates, half patches"
            f" of ~1.5 KB Deployments); {args.senders} sender connection(s)"
        )
        print(f"load average before: {load()}", flush=True)
        with ChildServer(audit_service_argv(tmp / "audit.db"), tmp / "service.log") as service:
            collector_argv = [
                sys.executable,
                "-m",
                "collectors",
                "kubernetes",
                "--service",
                service.endpoint,
                "--spool",
                str(tmp / "spool.db"),
                "--listen",
                f"{LOOPBACK}:0",
                "--log-level",
                "WARNING",
            ]
            with ChildServer(collector_argv, tmp / "collector.log") as collector:
                port = int(collector.endpoint.rsplit(":", 1)[1])
                status = measure(service, collector, port, warmup, payload, events, args)
        if not args.no_baseline:
            baseline(tmp, payload, events)
        print(f"load average after: {load()}")
        return status


def baseline(tmp: Path, payload: Sequence[bytes], events: int) -> None:
    """The ceiling the service sets: the same events, mapped in this process beforehand, sent
    to a fresh service over one RecordStream (500 per batch, 4 in flight)."""
    from clients import pb
    from collectors.kubernetes import history
    from collectors.kubernetes.mapping import Mapped, Mapper, MappingConfig, Redactor
    from collectors.runtime import Spool

    mapper = Mapper(MappingConfig(), Redactor(b"benchmark-key-0123456789abcdef01"))
    messages: list[pb.AuditEvent] = []
    with Spool(tmp / "baseline-spool.db") as spool:
        for body in payload:
            items = json.loads(body)["items"]
            mapped = [m for m in map(mapper.map, items) if isinstance(m, Mapped)]
            with spool.transaction() as tx:
                messages.extend(history.resolve_all(tx, mapped))
    argv = audit_service_argv(tmp / "baseline.db")
    with (
        ChildServer(argv, tmp / "baseline-service.log") as service,
        AuditClient(service.endpoint) as client,
    ):
        cpu = process_cpu_seconds(service.process.pid)
        started = time.perf_counter()
        results = client.record_many(messages, window=4)
        elapsed = time.perf_counter() - started
        after = process_cpu_seconds(service.process.pid)
    stored = sum(1 for r in results if r.error is None)
    busy = "?" if cpu is None or after is None else f"{(after - cpu) / elapsed:.2f}"
    print(
        f"the service alone, same events (mapped beforehand, one RecordStream, 500 per batch,"
        f" 4 in flight): {rate(stored / elapsed)} events/s  ({stored:,} events in"
        f" {elapsed:.2f} s; service CPU cores busy {busy})"
    )


def load() -> str:
    "The 1, 5 and 15 minute load averages: other work on the machine skews every figure."
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def measure(
    service: ChildServer,
    collector: ChildServer,
    port: int,
    warmup: list[bytes],
    payload: list[bytes],
    events: int,
    args: argparse.Namespace,
) -> int:
    send(port, warmup, SendResult([], 0))
    deadline = time.monotonic() + TIMEOUT_S
    while collector_stats(port)["delivered"] < BATCH and time.monotonic() < deadline:
        time.sleep(0.05)
    service_cpu = process_cpu_seconds(service.process.pid)
    collector_cpu = process_cpu_seconds(collector.process.pid)
    client_cpu = process_cpu_seconds()
    results = [SendResult([], 0) for _ in range(args.senders)]
    threads = [
        threading.Thread(target=send, args=(port, payload[i :: args.senders], results[i]))
        for i in range(args.senders)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    posted = time.perf_counter() - started
    target = BATCH + events
    while True:
        stats = collector_stats(port)
        if stats["delivered"] + stats["dead_lettered"] >= target:
            break
        if time.monotonic() > deadline:
            print(f"gave up after {TIMEOUT_S:.0f} s: {stats}")
            return 1
        time.sleep(0.01)
    elapsed = time.perf_counter() - started

    def used(before: float | None, pid: int | None = None) -> str:
        after = process_cpu_seconds(pid)
        if before is None or after is None:
            return "?"
        return f"{(after - before) / elapsed:.2f}"

    cores = (
        f"CPU cores busy: service {used(service_cpu, service.process.pid)},"
        f" collector {used(collector_cpu, collector.process.pid)},"
        f" sender {used(client_cpu)}"
    )
    latencies = sorted(x for r in results for x in r.latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(
        f"webhook accepted (200 after the spool commit): {rate(events / posted)} events/s;"
        f" POST latency p50 {p50:.1f} ms, p99 {p99:.1f} ms;"
        f" 503 answers retried: {sum(r.retries_503 for r in results)}"
    )
    print(
        f"end to end (first POST -> last event acknowledged by the service):"
        f" {rate(events / elapsed)} events/s  ({events:,} events in {elapsed:.2f} s; {cores})"
    )
    print(
        f"collector: delivered {stats['delivered']:,}, duplicates {stats['duplicates']},"
        f" retried {stats['retried']}, dead-lettered {stats['dead_lettered']}"
    )
    if not args.no_verify:
        stored = count_stored(service.endpoint)
        verdict = "as sent" if stored == target else f"EXPECTED {target:,}"
        print(f"the service holds {stored:,} K8S_EXPORTER events ({verdict}, warm-up included)")
        if stored != target:
            return 1
    return 0

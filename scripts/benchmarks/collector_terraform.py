"""Terraform collector: how long a state write takes, by state size, and events/s end to end.

Terraform's side is played by this process, with the requests the ``http`` backend sends for
one ``terraform apply``: LOCK, POST ``?ID=<lock>`` with the whole state, UNLOCK. One workspace
holds N resource instances (about 1.2 KB of attributes each, one of them sensitive). The first
write creates them all (N CREATE events); each following write changes 1% of them (UPDATE
events), as a day of small applies does. Every POST is answered after the state version is
committed to the state database and its events to the spool; the collector then delivers them
to the service (``--dev``, FULL durability, child processes on the same machine). At the end
the service is asked how many events it holds.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from clients import AuditClient
from scripts.benchmarks.common import (
    LOOPBACK,
    ChildServer,
    audit_service_argv,
    load_average,
    machine_lines,
    percentile,
    process_cpu_seconds,
    rate,
)

DESCRIPTION = (
    "state writes to audit-collector terraform (LOCK, POST the state, UNLOCK): latency by"
    " state size, and events/s until the service acknowledged them all"
)
FULL_INSTANCES = 2_000
QUICK_INSTANCES = 500
FULL_WRITES = 50
QUICK_WRITES = 20
TIMEOUT_S = 600.0
USER, PASSWORD = "terraform", "bench-password"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--instances",
        type=int,
        default=None,
        help=f"resource instances in the state (default {FULL_INSTANCES:,};"
        f" {QUICK_INSTANCES:,} with --quick)",
    )
    parser.add_argument(
        "--writes",
        type=int,
        default=None,
        help=f"writes after the first, each changing 1%% of the instances (default"
        f" {FULL_WRITES}; {QUICK_WRITES} with --quick)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the databases go (default: a temporary directory)",
    )


def attributes(index: int, generation: int) -> dict[str, Any]:
    "An aws_instance-like object of about 1.2 KB."
    return {
        "id": f"i-{index:017x}",
        "ami": "ami-0abcdef1234567890",
        "arn": f"arn:aws:ec2:eu-west-1:123456789012:instance/i-{index:017x}",
        "instance_type": "t3.small" if generation % 2 == 0 else "t3.medium",
        "availability_zone": "eu-west-1a",
        "private_ip": f"10.0.{index // 250 % 250}.{index % 250}",
        "subnet_id": "subnet-0123456789abcdef0",
        "vpc_security_group_ids": ["sg-0123456789abcdef0", "sg-0fedcba9876543210"],
        "tags": {"Name": f"web-{index}", "team": "payments", "generation": str(generation)},
        "root_block_device": [
            {"volume_size": 20, "volume_type": "gp3", "encrypted": True, "iops": 3000}
        ],
        "user_data": "#!/bin/sh\necho hello\n" * 8,
        "admin_password": f"pw-{index}-{generation}",
        "monitoring": False,
        "metadata_options": [{"http_tokens": "required", "http_endpoint": "enabled"}],
    }


def state_body(lineage: str, serial: int, generations: list[int], instances: int) -> bytes:
    resources = [
        {
            "mode": "managed",
            "type": "aws_instance",
            "name": "web",
            "provider": 'provider["registry.terraform.io/hashicorp/aws"]',
            "instances": [
                {
                    "index_key": i,
                    "schema_version": 1,
                    "attributes": attributes(i, generations[i]),
                    "sensitive_attributes": [[{"type": "get_attr", "value": "admin_password"}]],
                }
                for i in range(instances)
            ],
        }
    ]
    document = {
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": serial,
        "lineage": lineage,
        "outputs": {"count": {"value": instances, "type": "number"}},
        "resources": resources,
        "check_results": None,
    }
    return json.dumps(document, indent=2).encode()


class Backend:
    "Terraform's requests, on one keep-alive connection."

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=300)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes = b"") -> bytes:
        self.conn.request(method, path, body, self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return data

    def apply(self, body: bytes) -> float:
        "LOCK, POST, UNLOCK; the seconds the POST took."
        lock_id = str(uuid.uuid4())
        lock = json.dumps({"ID": lock_id, "Operation": "OperationTypeApply", "Who": "bench@ci"})
        self.call("LOCK", "/state/bench", lock.encode())
        started = time.perf_counter()
        self.call("POST", f"/state/bench?ID={lock_id}", body)
        took = time.perf_counter() - started
        self.call("UNLOCK", "/state/bench", lock.encode())
        return took

    def stats(self) -> dict[str, Any]:
        self.conn.request("GET", "/stats")
        data: dict[str, Any] = json.loads(self.conn.getresponse().read())
        return data


def run(args: argparse.Namespace) -> int:
    instances = args.instances or (QUICK_INSTANCES if args.quick else FULL_INSTANCES)
    writes = args.writes or (QUICK_WRITES if args.quick else FULL_WRITES)
    changed = max(1, instances // 100)
    lineage = str(uuid.uuid4())
    generations = [0] * instances
    bodies = [state_body(lineage, 1, generations, instances)]
    for write in range(writes):
        for j in range(changed):
            generations[(write * changed + j) % instances] += 1
        bodies.append(state_body(lineage, write + 2, generations, instances))
    events = instances + 1 + writes * changed
    with tempfile.TemporaryDirectory(prefix="auditlog-bench-tf-", dir=args.dir) as tmp_text:
        tmp = Path(tmp_text)
        print("auditlog Terraform collector benchmark (state writes -> acknowledged events)")
        for line in machine_lines(tmp):
            print(line)
        print(
            f"state: {instances:,} instances, {len(bodies[0]) / 1e6:.1f} MB of JSON; 1 write"
            f" creating them, then {writes} writes changing {changed} each"
            f" ({events:,} events in all)"
        )
        print(f"load average before: {load_average()}", flush=True)
        (tmp / "credentials").write_text(f"{USER}:{PASSWORD}\n")
        with ChildServer(audit_service_argv(tmp / "audit.db"), tmp / "service.log") as service:
            argv = [
                sys.executable,
                "-m",
                "collectors",
                "terraform",
                "--service",
                service.endpoint,
                "--spool",
                str(tmp / "spool.db"),
                "--state-db",
                str(tmp / "state.db"),
                "--basic-auth-file",
                str(tmp / "credentials"),
                "--listen",
                f"{LOOPBACK}:0",
                "--log-level",
                "WARNING",
            ]
            with ChildServer(argv, tmp / "collector.log") as collector:
                backend = Backend(int(collector.endpoint.rsplit(":", 1)[1]))
                collector_cpu = process_cpu_seconds(collector.process.pid)
                started = time.perf_counter()
                first = backend.apply(bodies[0])
                later = [backend.apply(body) for body in bodies[1:]]
                posted = time.perf_counter() - started
                deadline = time.monotonic() + TIMEOUT_S
                while (stats := backend.stats())["delivered"] < events:
                    if time.monotonic() > deadline:
                        print(f"gave up after {TIMEOUT_S:.0f} s: {stats}")
                        return 1
                    time.sleep(0.01)
                elapsed = time.perf_counter() - started
                cpu_after = process_cpu_seconds(collector.process.pid)
            with AuditClient(service.endpoint) as client:
                stored = sum(1 for _ in client.list(("origin", "=", "TERRAFORM")))
        busy = (
            "?"
            if collector_cpu is None or cpu_after is None
            else f"{(cpu_after - collector_cpu) / elapsed:.2f}"
        )
        print(
            f"first write ({instances:,} CREATE events): POST answered in {first * 1000:,.0f} ms"
            f" ({rate(instances / first)} events/s)"
        )
        print(
            f"later writes ({changed} UPDATE events each, the whole state sent each time):"
            f" POST p50 {statistics.median(later) * 1000:.0f} ms,"
            f" p99 {percentile(later, 0.99) * 1000:.0f} ms"
        )
        print(
            f"end to end (first LOCK -> last event acknowledged): {rate(events / elapsed)}"
            f" events/s ({events:,} events in {elapsed:.2f} s, writes done after"
            f" {posted:.2f} s; collector CPU cores busy {busy})"
        )
        verdict = "as sent" if stored == events else f"EXPECTED {events:,}"
        print(f"the service holds {stored:,} TERRAFORM events ({verdict})")
        print(f"load average after: {load_average()}")
        return 0 if stored == events else 1

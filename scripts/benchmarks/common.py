"""What every benchmark needs: the machine's description, servers in child processes, sample
events, timing and the report's number format."""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

from clients import pb

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Measurement:
    """``count`` operations (events or calls) done in ``seconds``, using ``server_cpu`` and
    ``client_cpu`` seconds of CPU time (user + system, all threads; None: not measured)."""

    count: int
    seconds: float
    server_cpu: float | None = None
    client_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def details(self, unit: str, client: str = "client") -> str:
        "``(N units in S s; CPU cores busy: server x, client y)``: what the run used."
        text = f"{self.count:,} {unit} in {self.seconds:.2f} s"
        cores = [
            f"{who} {cpu / self.seconds:.2f}"
            for who, cpu in (("server", self.server_cpu), (client, self.client_cpu))
            if cpu is not None and self.seconds > 0
        ]
        if cores:
            text += "; CPU cores busy: " + ", ".join(cores)
        return f"({text})"


def process_cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (default: this one), all
    threads; None when /proc cannot tell."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def rate(value: float) -> str:
    return f"{value:,.0f}"


def machine_lines(db_dir: Path) -> list[str]:
    "The facts a reader needs to compare these numbers with theirs."
    return [
        f"machine: {os.cpu_count()} CPUs ({_cpu_model()}), {platform.system()}"
        f" {platform.release()} {platform.machine()}",
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
        f" grpcio {grpc.__version__}, protobuf {protobuf_version} ({api_implementation.Type()})",
        f"database directory: {db_dir} ({_filesystem(db_dir)})",
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _filesystem(path: Path) -> str:
    "The filesystem type of the mount holding ``path`` (fsync cost depends on it)."
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "filesystem unknown"
    resolved = str(path.resolve())
    best = ("", "filesystem unknown")
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best[1]


def sample_event(index: int, run: str) -> pb.AuditEvent:
    """A realistic collector event: an ENTITY UPDATE with 5-key before/after snapshots and two
    context entries; ``identifier`` and ``idempotency_key`` are unique per (run, index)."""
    event = pb.AuditEvent(
        idempotency_key=f"bench-{run}-{index}",
        resource=pb.RESOURCE_TYPE_ENTITY,
        identifier=f"service-{run}-{index:08d}",
        blueprint="service",
        integration="k8s-prod",
        operation=pb.OPERATION_UPDATE,
        origin=pb.ORIGIN_K8S_EXPORTER,
        source=pb.Source(kind=pb.SOURCE_KIND_INTEGRATION, id="k8s-prod", name="k8s exporter"),
        context={"cluster": "prod-eu-1", "namespace": "payments"},
    )
    before: dict[str, Any] = {
        "title": f"Service {index}",
        "team": "payments",
        "tier": "gold",
        "replicas": 3,
        "on_call": True,
    }
    event.before.update(before)
    event.after.update({**before, "replicas": 4, "tier": "platinum"})
    return event


class ChildServer:
    """A gRPC server in a child process (its own GIL), started from ``argv``, which prints a
    line ``... listening on HOST:PORT`` once it serves. ``stop`` sends SIGTERM, then SIGKILL
    after ``STOP_TIMEOUT_S``."""

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        self._argv = list(argv)
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            self._argv,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
        )
        self.endpoint = self._wait_listening(log_path)

    def _wait_listening(self, log_path: Path) -> str:
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        stdout = self.process.stdout
        assert stdout is not None
        threading.Thread(target=_pump, args=(stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:  # the pump's end-of-output mark: the child exited
                break
            seen.append(line)
            if match := _LISTENING.search(line):
                return f"{match.group(1)}:{match.group(2)}"
        self.stop()
        raise RuntimeError(
            f"{' '.join(self._argv)} did not start within {START_TIMEOUT_S:.0f} s;"
            f" output: {''.join(seen)!r}; log: {log_path}"
        )

    def stop(self) -> int:
        "Stop the child gracefully; returns its exit status."
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pump(stream: IO[str], lines: queue.SimpleQueue[str]) -> None:
    "Forward the child's stdout lines; an empty string marks its end."
    for line in stream:
        lines.put(line)
    lines.put("")


def audit_service_argv(db_path: Path, *extra: str) -> list[str]:
    "The real service, as ``scripts/serve`` runs it, on a free loopback port."
    return [
        sys.executable,
        "-m",
        "audit_service",
        "--dev",
        "--listen",
        f"{LOOPBACK}:0",
        "--db",
        str(db_path),
        "--log-level",
        "WARNING",
        *extra,
    ]


def peak_rss_bytes(pid: int) -> int | None:
    "The most resident memory process ``pid`` has used so far (VmHWM), or None."
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_line(pid: int | None, limit_mb: float = 300.0) -> str:
    "``service peak RSS: N MB (target <= 300 MB)`` for a server we started."
    peak = None if pid is None else peak_rss_bytes(pid)
    if peak is None:
        return "service peak RSS: not measured (not a child process)"
    mb = peak / 1e6
    verdict = "met" if mb <= limit_mb else "NOT met"
    return f"service peak RSS: {mb:,.0f} MB (target <= {limit_mb:,.0f} MB: {verdict})"


def load_average() -> str:
    "The 1, 5 and 15 minute load averages: other work on the machine skews every figure."
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def percentile(samples: Sequence[float], fraction: float) -> float:
    "The ``fraction`` quantile of ``samples`` (nearest rank)."
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def loopback_endpoint(text: str) -> str:
    "HOST:PORT with a loopback HOST: the benchmark talks to nothing else."
    host, sep, port = text.rpartition(":")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not sep or not port.isdigit() or not loopback:
        raise argparse.ArgumentTypeError(f"{text!r} is not a loopback HOST:PORT")
    return text


def add_endpoint_argument(parser: argparse.ArgumentParser) -> None:
    "``--endpoint``: a running service to measure instead of one the benchmark starts."
    parser.add_argument(
        "--endpoint",
        type=loopback_endpoint,
        default=None,
        help="measure an audit-service already listening on this loopback HOST:PORT instead"
        " of starting one (e.g. one running under a profiler)",
    )

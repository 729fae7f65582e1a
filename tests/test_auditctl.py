"""auditctl as a child process against the real service: every command and output format,
filters and columns per tab, diffs, tail -f, export (with its progress bar, and 100k events in
flat memory), record, tokens, where the target and token come from, friendly errors, retries.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pty
import queue
import re
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clients import AuditClient, Event, Source, pb
from tests.auditctl_helpers import AUDITCTL, LOCAL_TZ, auditctl_env, free_port, run_auditctl
from tests.helpers import REPO, TestServer, Token, event, spawn_server, start_server
from tests.tls_certs import make_pki

T0 = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
LOCAL = ZoneInfo(LOCAL_TZ)

ALICE = Source(kind="user", id="u-1", name="alice@example.com")
BOB = Source(kind="user", id="u-2", name="Bob")
GITHUB = Source(kind="integration", id="github", name="GitHub")


def _seed_events() -> list[Event]:
    "The catalog the read-only tests query: one or more events on every tab, a minute apart."
    specs: list[dict[str, Any]] = [
        {
            "resource": "entity",
            "identifier": "payments-api",
            "blueprint": "service",
            "operation": "update",
            "origin": "ui",
            "source": ALICE,
            "before": {"title": "Payments", "replicas": 2, "tags": ["a"]},
            "after": {"title": "Payments API", "replicas": 3, "tags": ["a", "b"]},
        },
        {
            "resource": "entity",
            "identifier": "checkout",
            "blueprint": "service",
            "operation": "create",
            "origin": "api",
            "source": BOB,
            "context": {"cluster": "prod"},
            "after": {"title": "Checkout"},
        },
        {
            "resource": "entity",
            "identifier": "checkout",
            "blueprint": "service",
            "operation": "delete",
            "origin": "k8s_exporter",
            "source": Source(kind="system", id="k8s"),
            "context": {"cluster": "staging"},
            "before": {"title": "Checkout"},
        },
        {
            "resource": "blueprint",
            "identifier": "service",
            "operation": "update",
            "origin": "ui",
            "source": ALICE,
        },
        {
            "resource": "run",
            "identifier": "deploy-1",
            "run_id": "run_1",
            "operation": "create",
            "origin": "gh_action",
            "source": GITHUB,
            "status": "failure",
            "error": "deploy timed out",
        },
        {
            "resource": "run",
            "identifier": "deploy-2",
            "run_id": "run_2",
            "operation": "create",
            "origin": "gh_action",
            "source": GITHUB,
        },
        {
            "resource": "integration",
            "identifier": "k8s",
            "integration": "k8s-prod",
            "operation": "update",
            "origin": "k8s_exporter",
            "source": GITHUB,
        },
        {
            "resource": "sign_in",
            "identifier": "alice@example.com",
            "operation": "read",
            "origin": "ui",
            "source": ALICE,
        },
        {
            "resource": "secret",
            "identifier": "db-password",
            "operation": "update",
            "origin": "ui",
            "source": ALICE,
            "before": {"value": "old"},
            "after": {"value": "new"},
        },
        {
            "resource": "action",
            "identifier": "deploy",
            "operation": "update",
            "origin": "ui",
            "source": BOB,
        },
        {
            "resource": "automation",
            "identifier": "on-merge",
            "operation": "create",
            "origin": "ui",
            "source": BOB,
        },
        {
            "resource": "scorecard",
            "identifier": "prod-readiness",
            "operation": "update",
            "origin": "ui",
            "source": ALICE,
        },
    ]
    return [Event(occurred_at=T0 + timedelta(minutes=i), **s) for i, s in enumerate(specs)]


SEED = _seed_events()
TAB_OF = {
    "entities": "ENTITY",
    "blueprints": "BLUEPRINT",
    "actions": "ACTION",
    "automations": "AUTOMATION",
    "scorecards": "SCORECARD",
    "runs": "RUN",
    "integrations": "INTEGRATION",
    "secrets": "SECRET",
    "sign-ins": "SIGN_IN",
}


@dataclass
class Catalog:
    server: TestServer
    home: Path
    ids: list[str]  # SEED[i] was recorded as ids[i]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_auditctl(
            *args,
            home=self.home,
            env=auditctl_env(self.home, AUDITLOG_SERVICE=self.server.endpoint, **env),
        )

    def ok(self, *args: str, **env: str) -> str:
        "stdout of a run that must succeed."
        done = self.run(*args, **env)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return done.stdout

    def jsonl(self, *args: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ok(*args, "--format", "jsonl").splitlines()]

    def identifiers(self, *args: str) -> list[str]:
        return [e["identifier"] for e in self.jsonl("list", *args)]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    folder = tmp_path_factory.mktemp("catalog")
    running = start_server(folder / "audit.db")
    try:
        with AuditClient(running.endpoint) as client:
            results = client.record_many(SEED)
        assert all(r.ok for r in results)
        yield Catalog(running, folder, [r.id for r in results])
    finally:
        running.close()


def expected(predicate: Callable[[Event], bool]) -> list[str]:
    "Identifiers of the seed events matching, newest first (the default order)."
    return [e.identifier for e in reversed(SEED) if predicate(e)]


def table_headers(output: str) -> list[str]:
    line = next(li for li in output.splitlines() if li.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in li.strip("│").split("│")]
        for li in output.splitlines()
        if li.startswith("│")
    ]


def local(moment: datetime) -> str:
    return moment.astimezone(LOCAL).strftime("%Y-%m-%d %H:%M:%S")


# -- list -------------------------------------------------------------------------------------

BASE = ["Source", "Operation", "Type", "Status", "Error"]


@pytest.mark.parametrize(
    ("tab", "headers"),
    [
        (None, ["Date", "Resource", "Identifier", *BASE]),
        ("entities", ["Date", "Blueprint", "Entity", *BASE]),
        ("integrations", ["Date", "Integration", *BASE]),
        ("runs", ["Date", "Run ID", *BASE]),
        ("blueprints", ["Date", *BASE]),
        ("actions", ["Date", *BASE]),
        ("automations", ["Date", *BASE]),
        ("scorecards", ["Date", *BASE]),
        ("secrets", ["Date", *BASE]),
        ("sign-ins", ["Date", *BASE]),
    ],
)
def test_list_table_has_each_tabs_default_columns(
    catalog: Catalog, tab: str | None, headers: list[str]
) -> None:
    output = catalog.ok("list", *(["--tab", tab] if tab else []))
    assert table_headers(output) == headers
    rows = table_rows(output)
    matching = [e for e in reversed(SEED) if tab is None or e.resource == TAB_OF[tab]]
    assert len(rows) == len(matching)
    first, newest = rows[0], matching[0]
    assert first[0] == local(newest.occurred_at or T0)
    assert first[headers.index("Source")] == newest.source.label
    assert first[headers.index("Operation")] == newest.operation
    assert first[headers.index("Type")] == newest.origin
    if tab == "entities":
        assert first[1:3] == [newest.blueprint, newest.identifier]
    if tab == "runs":
        assert first[1] == newest.run_id
        assert table_rows(output)[1][headers.index("Error")] == "deploy timed out"
    if tab == "integrations":
        assert first[1] == "k8s-prod"


def test_list_dates_are_in_the_local_timezone(catalog: Catalog) -> None:
    output = catalog.ok("list", "--tab", "entities", "--where", "entity", "=", "payments-api")
    assert table_rows(output)[0][0] == local(T0)
    assert local(T0).endswith("17:30:00")  # Asia/Kolkata is UTC+05:30
    assert "UTC+05:30" in output
    utc = catalog.ok(
        "list", "--tab", "entities", "--where", "entity", "=", "payments-api", TZ="UTC"
    )
    assert table_rows(utc)[0][0] == T0.strftime("%Y-%m-%d %H:%M:%S")
    (item,) = catalog.jsonl("list", "--where", "entity", "=", "payments-api")
    assert item["occurred_at"] == T0.astimezone(LOCAL).isoformat(timespec="microseconds")


def test_list_columns_choose_order_and_hide(catalog: Catalog) -> None:
    chosen = catalog.ok("list", "--tab", "entities", "--columns", "id,type,date")
    assert table_headers(chosen) == ["ID", "Type", "Date"]
    assert {row[0] for row in table_rows(chosen)} == set(catalog.ids[:3])

    relative = catalog.ok("list", "--tab", "runs", "--columns=-error,-run-id,+recorded_by")
    assert table_headers(relative) == ["Date", *BASE[:-1], "Recorded By"]
    assert {row[-1] for row in table_rows(relative)} == {"dev"}

    context = catalog.ok("list", "--tab", "entities", "--columns", "context.cluster,entity")
    assert table_headers(context) == ["cluster", "Entity"]
    assert ["prod", "checkout"] in table_rows(context)

    as_csv = catalog.ok("list", "--tab", "runs", "--format", "csv", "--columns", "run_id,status")
    assert list(csv.reader(io.StringIO(as_csv))) == [
        ["run_id", "status"],
        ["run_2", "SUCCESS"],
        ["run_1", "FAILURE"],
    ]

    unknown = catalog.run("list", "--columns", "date,colour")
    assert unknown.returncode == 2
    assert "unknown column 'colour'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_list_filters(catalog: Catalog) -> None:
    assert catalog.identifiers("--where", "source", "~", "ALICE") == expected(
        lambda e: "alice" in e.source.label.lower() or "alice" in e.source.id
    )
    assert catalog.identifiers(
        "--tab", "entities", "--where", "operation", "=", "create,delete"
    ) == ["checkout", "checkout"]
    assert catalog.identifiers("--where", "context.cluster", "=", "prod") == ["checkout"]
    assert catalog.identifiers("--where", "type", "!=", "ui") == expected(
        lambda e: e.origin != "UI"
    )
    assert catalog.identifiers("--where", "identifier", "^", "deploy") == [
        "deploy",
        "deploy-2",
        "deploy-1",
    ]
    assert catalog.identifiers("--tab", "runs", "--where", "status", "=", "failure") == ["deploy-1"]
    # Times: durations, local times without an offset, RFC 3339.
    since = (T0 + timedelta(minutes=5)).astimezone(LOCAL).strftime("%Y-%m-%dT%H:%M")
    until = (T0 + timedelta(minutes=8)).isoformat()
    assert catalog.identifiers("--since", since, "--until", until) == [
        "alice@example.com",
        "k8s",
        "deploy-2",
    ]
    assert len(catalog.identifiers("--since", "7d")) == len(SEED)
    assert catalog.identifiers("--until", "7d") == []
    assert catalog.identifiers(
        "--where", "date", ">=", (T0 + timedelta(minutes=10)).isoformat()
    ) == ["prod-readiness", "on-merge"]


def test_list_sort_and_limit(catalog: Catalog) -> None:
    assert catalog.identifiers("--sort", "identifier:asc", "--limit", "3") == [
        "alice@example.com",
        "checkout",
        "checkout",
    ]
    assert catalog.identifiers("--sort", "date")[0] == "payments-api"  # ascending
    assert catalog.identifiers("--sort", "date:desc", "--limit", "2") == [
        "prod-readiness",
        "on-merge",
    ]
    assert len(catalog.identifiers("--limit", "0")) == len(SEED)
    bad = catalog.run("list", "--sort", "context.cluster")
    assert bad.returncode == 2
    assert "cannot sort by" in bad.stderr


def test_list_formats(catalog: Catalog) -> None:
    whole = json.loads(catalog.ok("list", "--format", "json", "--tab", "entities"))
    assert [e["identifier"] for e in whole] == ["checkout", "checkout", "payments-api"]
    assert whole[2]["source"] == {"kind": "USER", "id": "u-1", "name": "alice@example.com"}
    assert whole[2]["id"] == catalog.ids[0]
    assert whole[2]["diff_available"] is True
    assert "before" not in whole[2]
    with_snapshots = json.loads(
        catalog.ok("list", "--format", "json", "--tab", "entities", "--snapshots")
    )
    assert with_snapshots[2]["after"]["replicas"] == 3

    assert json.loads(
        catalog.ok(
            "list",
            "--format",
            "json",
            "--tab",
            "runs",
            "--where",
            "status",
            "=",
            "failure",
            "--columns",
            "run_id,error",
        )
    ) == [{"run_id": "run_1", "error": "deploy timed out"}]

    lines = catalog.ok("list", "--format", "jsonl").splitlines()
    assert len(lines) == len(SEED)
    assert json.loads(lines[0])["identifier"] == "prod-readiness"

    rows = list(csv.DictReader(io.StringIO(catalog.ok("list", "--format", "csv", "--tab", "runs"))))
    assert list(rows[0]) == [
        "occurred_at",
        "run_id",
        "source",
        "operation",
        "origin",
        "status",
        "error",
    ]
    assert rows[1]["error"] == "deploy timed out"
    assert rows[1]["occurred_at"].endswith("+05:30")

    assert (
        json.loads(catalog.ok("list", "--format", "json", "--where", "entity", "=", "none")) == []
    )
    empty = catalog.run("list", "--where", "entity", "=", "none")
    assert empty.returncode == 0
    assert "no events match" in empty.stderr


def test_bad_filters_are_friendly(catalog: Catalog) -> None:
    cases = [
        (["list", "--where", "colour", "=", "red"], "cannot filter on 'colour'; filter fields:"),
        (["list", "--where", "operation", "=", "crate"], "--where operation = crate:"),
        (["list", "--where", "identifier", "~", ""], "--where identifier ~ :"),
        (["list", "--where", "identifier", "=~", "x"], "unknown operator '=~'"),
        (["list", "--where", "operation", ">", "create"], "--where operation > create:"),
        (["list", "--since", "yesterday"], "--since 'yesterday': use a duration"),
        (["list", "--where", "date", ">", "soon"], "use a duration"),
        (["list", "--tab", "users"], "invalid choice: 'users'"),
    ]
    for args, message in cases:
        done = catalog.run(*args)
        assert done.returncode == 2, args
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_an_unreachable_service_is_friendly(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    done = run_auditctl(
        "list", "--service", f"127.0.0.1:{port}", "--retry-for", "0.5", home=tmp_path
    )
    assert done.returncode == 3
    assert f"cannot reach the audit service at 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 15


def test_no_command_prints_usage(tmp_path: Path) -> None:
    done = run_auditctl(home=tmp_path)
    assert done.returncode == 2
    assert "usage: auditctl" in done.stderr


# -- diff -------------------------------------------------------------------------------------


def test_diff_unified_patch_and_json(catalog: Catalog) -> None:
    event_id = catalog.ids[0]
    assert catalog.ok("diff", event_id).splitlines() == [
        f"--- {event_id} before",
        f"+++ {event_id} after",
        "@@ -1,7 +1,8 @@",
        " {",
        '-  "replicas": 2,',
        '+  "replicas": 3,',
        '   "tags": [',
        '-    "a"',
        '+    "a",',
        '+    "b"',
        "   ],",
        '-  "title": "Payments"',
        '+  "title": "Payments API"',
        " }",
    ]
    coloured = catalog.ok("diff", event_id, FORCE_COLOR="1")
    assert '\x1b[31m-  "replicas": 2,' in coloured
    assert '\x1b[32m+  "replicas": 3,' in coloured
    patch = json.loads(catalog.ok("diff", event_id, "--format", "patch"))
    assert sorted(patch, key=lambda op: str(op["path"])) == [
        {"op": "replace", "path": "/replicas", "value": 3},
        {"op": "add", "path": "/tags/1", "value": "b"},
        {"op": "replace", "path": "/title", "value": "Payments API"},
    ]
    whole = json.loads(catalog.ok("diff", event_id, "--format", "json"))
    assert whole["available"] is True
    assert whole["before"]["title"] == "Payments"
    assert whole["after"]["tags"] == ["a", "b"]

    created = catalog.ok("diff", catalog.ids[1], "-U", "0")
    assert '+  "title": "Checkout"' in created
    deleted = catalog.ok("diff", catalog.ids[2])
    assert '-  "title": "Checkout"' in deleted
    secret = catalog.ok("diff", catalog.ids[8])
    assert '"new"' not in secret  # SECRET values are fingerprinted by the service
    assert '-  "value":' in secret


def test_diff_says_why_there_is_none(catalog: Catalog) -> None:
    read = catalog.ok("diff", catalog.ids[7])
    assert read.strip() == (
        f"no diff available for {catalog.ids[7]}: READ events record an access, not a change:"
        " there is nothing to diff"
    )
    bare = catalog.ok("diff", catalog.ids[3])
    assert "recorded without before/after snapshots" in bare
    as_json = json.loads(catalog.ok("diff", catalog.ids[3], "--format", "json"))
    assert as_json["available"] is False
    assert as_json["reason"]

    missing = catalog.run("diff", "01a2154f-50c1-7000-8d6e-8b730436e28f")
    assert missing.returncode == 1
    assert "no event with id 01a2154f-50c1-7000-8d6e-8b730436e28f" in missing.stderr
    malformed = catalog.run("diff", "nope")
    assert malformed.returncode == 2
    assert "is not an event id" in malformed.stderr


# -- tail -------------------------------------------------------------------------------------


def test_tail_shows_the_newest_events_oldest_first(catalog: Catalog) -> None:
    lines = catalog.ok("tail", "-n", "3").splitlines()
    assert len(lines) == 3
    assert [li.split("  ")[2] for li in lines] == ["deploy", "on-merge", "prod-readiness"]
    assert lines[0].startswith(local(T0 + timedelta(minutes=9)))
    runs = catalog.ok("tail", "--tab", "runs", "--columns", "run_id,status").splitlines()
    assert runs == ["run_1  FAILURE", "run_2  SUCCESS"]


def _lines(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for text in stream:
            lines.put(text)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_tail_follow_picks_up_events_recorded_while_it_runs(
    server: TestServer, tmp_path: Path
) -> None:
    for name in ("old-1", "old-2", "old-3"):
        server.stub.Record(pb.RecordRequest(event=event(identifier=name)))
    process = subprocess.Popen(
        [*AUDITCTL, "tail", "-f", "-n", "2", "--interval", "0.2", "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=auditctl_env(tmp_path, AUDITLOG_SERVICE=server.endpoint),
    )
    try:
        assert process.stdout is not None
        lines = _lines(process.stdout)
        first = [json.loads(lines.get(timeout=15))["identifier"] for _ in range(2)]
        assert first == ["old-2", "old-3"]
        for name in ("new-1", "new-2"):
            server.stub.Record(pb.RecordRequest(event=event(identifier=name)))
        list(
            server.stub.RecordStream(
                iter([pb.RecordStreamRequest(batch=0, events=[event(identifier="new-3")])])
            )
        )
        followed = [json.loads(lines.get(timeout=15))["identifier"] for _ in range(3)]
        assert followed == ["new-1", "new-2", "new-3"]
        time.sleep(0.5)  # a few more polls: nothing is shown twice
        assert lines.empty()
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=15)
        assert process.stderr is not None
        errors = process.stderr.read()
        process.stderr.close()
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0, errors
    assert "Traceback" not in errors


# -- export -----------------------------------------------------------------------------------


def test_export_jsonl_and_csv_files(catalog: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    done = catalog.run("export", "--since", "2d", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"exported {len(SEED)} events to {out}\n"  # no progress bar: piped
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["id"] for e in exported] == catalog.ids  # oldest first
    assert exported[0]["source"]["name"] == "alice@example.com"

    table = tmp_path / "runs.csv"
    assert catalog.run("export", "--tab", "runs", "-o", str(table)).returncode == 0
    with table.open() as file:
        rows = list(csv.DictReader(file))
    assert [r["run_id"] for r in rows] == ["run_1", "run_2"]
    assert list(rows[0])[:4] == ["id", "occurred_at", "recorded_at", "resource"]
    assert rows[0]["status"] == "FAILURE"

    with_snapshots = tmp_path / "entities.jsonl"
    catalog.ok("export", "--tab", "entities", "--snapshots", "-o", str(with_snapshots))
    assert json.loads(with_snapshots.read_text().splitlines()[0])["before"]["replicas"] == 2

    piped = catalog.ok("export", "--tab", "secrets", "--format", "csv", "--columns", "id,entity")
    assert piped == f"id,identifier\n{catalog.ids[8]},db-password\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "entities.jsonl",
        "runs.csv",
    ]  # no partial files left behind


def test_export_shows_a_progress_bar_on_a_terminal(catalog: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*AUDITCTL, "export", "--since", "2d", "-o", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        cwd=REPO,
        env=auditctl_env(
            catalog.home, AUDITLOG_SERVICE=catalog.server.endpoint, TERM="xterm-256color"
        ),
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=30) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "exporting" in screen
    assert f"{len(SEED)} events" in screen
    assert "━" in screen  # the bar itself
    assert len(out.read_text().splitlines()) == len(SEED)


def _peak_rss_kib(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run auditctl, which must exit 0. Returns its peak resident set size in KiB (the kernel's
    VmHWM of its own address space, read while it runs) and its stderr.

    Not ``wait4``'s ru_maxrss: Linux carries the high-water mark of the address space a
    process had before exec (here, this big test process's) into it.
    """
    process = subprocess.Popen(
        [*AUDITCTL, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, env=env
    )
    status, cmdline = Path(f"/proc/{process.pid}/status"), Path(f"/proc/{process.pid}/cmdline")
    peak = 0
    while process.poll() is None:
        try:
            if b"clients.cli" in cmdline.read_bytes():  # exec'd: its own address space
                match = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
                peak = max(peak, int(match.group(1))) if match else peak
        except OSError:
            pass  # it exited between the poll and the read
        time.sleep(0.005)
    assert process.stderr is not None
    errors = process.stderr.read().decode()
    process.stderr.close()
    assert process.returncode == 0, errors
    assert peak > 0
    return peak, errors


@pytest.mark.slow
def test_export_of_100k_events_streams_in_flat_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = start_server(tmp_path / "big.db", durability="NORMAL")
    try:
        batches = (
            pb.RecordStreamRequest(
                batch=n,
                events=[
                    event(identifier=f"svc-{n}-{i}", context={"cluster": "prod"}, run_id=f"r{i}")
                    for i in range(1000)
                ],
            )
            for n in range(100)
        )
        acknowledged = sum(len(r.results) for r in running.stub.RecordStream(batches))
        assert acknowledged == 100_000
        env = auditctl_env(tmp_path, AUDITLOG_SERVICE=running.endpoint)
        small_out, full_out = tmp_path / "small.jsonl", tmp_path / "all.jsonl"
        small, _ = _peak_rss_kib(
            "export", "--where", "identifier", "^", "svc-7-", "-o", str(small_out), env=env
        )
        started = time.monotonic()
        full, errors = _peak_rss_kib("export", "-o", str(full_out), env=env)
        took = time.monotonic() - started
    finally:
        running.close()
    assert errors == f"exported 100000 events to {full_out}\n"
    with full_out.open() as file:
        count = sum(1 for _ in file)
    assert count == 100_000
    assert len(small_out.read_text().splitlines()) == 1000
    with capsys.disabled():
        print(
            f"\n[export] auditctl peak RSS: {small / 1024:.1f} MiB exporting 1,000 events,"
            f" {full / 1024:.1f} MiB exporting 100,000 events ({took:.1f} s)"
        )
    assert full - small < 16 * 1024  # KiB: a hundred times the events, not the memory


# -- record -----------------------------------------------------------------------------------


def test_record_from_flags_and_from_json(server: TestServer, tmp_path: Path) -> None:
    env = auditctl_env(tmp_path, AUDITLOG_SERVICE=server.endpoint)

    def auditctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_auditctl(*args, home=tmp_path, env=env, input=stdin)

    flags = auditctl(
        "record",
        "--resource",
        "run",
        "--identifier",
        "deploy-42",
        "--run-id",
        "run_42",
        "--operation",
        "create",
        "--origin",
        "gh_action",
        "--source-kind",
        "integration",
        "--source-id",
        "github",
        "--source-name",
        "GitHub",
        "--status",
        "failure",
        "--error",
        "tests failed",
        "--context",
        "repo=acme/shop",
        "--context",
        "commit=abc123",
        "--idempotency-key",
        "gh-run-42",
        "--after",
        '{"result": "red"}',
    )
    assert flags.returncode == 0, flags.stderr
    event_id = flags.stdout.strip()
    again = auditctl(
        "record",
        "--resource",
        "run",
        "--identifier",
        "deploy-42",
        "--operation",
        "create",
        "--idempotency-key",
        "gh-run-42",
    )
    assert again.stdout.strip() == event_id
    assert "duplicate" in again.stderr

    document = {
        "resource": "entity",
        "identifier": "payments-api",
        "blueprint": "service",
        "operation": "update",
        "source": {"kind": "user", "id": "u-1"},
        "before": {"replicas": 1},
        "after": {"replicas": 2},
        "occurred_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    }
    piped = auditctl(
        "record",
        "--json",
        "-",
        "--origin",
        "codefresh",
        "--format",
        "json",
        stdin=json.dumps(document),
    )
    assert piped.returncode == 0, piped.stderr
    answer = json.loads(piped.stdout)
    assert answer["duplicate"] is False

    with AuditClient(server.endpoint) as client:
        by_id = {e.id: e for e in client.list(include_snapshots=True)}
    run = by_id[event_id]
    assert (run.resource, run.run_id, run.origin, run.status) == (
        "RUN",
        "run_42",
        "GH_ACTION",
        "FAILURE",
    )
    assert run.source == Source(kind="INTEGRATION", id="github", name="GitHub")
    assert run.context == {"repo": "acme/shop", "commit": "abc123"}
    assert run.after == {"result": "red"}
    entity = by_id[answer["id"]]
    assert entity.origin == "CODEFRESH"  # the flag overrides the document
    assert entity.after == {"replicas": 2}

    no_blueprint = auditctl(
        "record", "--resource", "entity", "--identifier", "x", "--operation", "create"
    )
    assert no_blueprint.returncode == 2
    assert "event.blueprint: required for ENTITY events" in no_blueprint.stderr
    bad_origin = auditctl(
        "record",
        "--resource",
        "run",
        "--identifier",
        "x",
        "--operation",
        "create",
        "--origin",
        "jenkins",
    )
    assert bad_origin.returncode == 2
    assert "event.origin" in bad_origin.stderr
    bad_json = auditctl("record", "--json", "-", stdin="{not json")
    assert bad_json.returncode == 2
    assert "not valid JSON" in bad_json.stderr
    for done in (no_blueprint, bad_origin, bad_json):
        assert "Traceback" not in done.stderr


# -- tokens, credentials, configuration ---------------------------------------------------------


def _create_token(home: Path, *args: str) -> tuple[str, dict[str, Any], str]:
    done = run_auditctl("tokens", "create", *args, home=home)
    assert done.returncode == 0, done.stderr
    token, blank, *entry = done.stdout.split("\n")
    assert blank == ""
    (principal,) = tomllib.loads("\n".join(entry))["principal"]
    return token, principal, done.stderr


def test_tokens_create_prints_the_token_once_and_only_its_digest(tmp_path: Path) -> None:
    token, principal, notes = _create_token(
        tmp_path, "--id", "alice@example.com", "--role", "admin", "--name", "Alice"
    )
    assert token.startswith("alog_")
    assert len(token) >= 40
    assert principal == {
        "id": "alice@example.com",
        "name": "Alice",
        "role": "admin",
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    assert "shown only this once" in notes
    assert token not in notes

    other, recorder, _ = _create_token(
        tmp_path,
        "--id",
        "k8s",
        "--role",
        "recorder",
        "--origin",
        "k8s_exporter",
        "--origin",
        "ORIGIN_AWS_EXPORTER",
    )
    assert other != token
    assert recorder["origins"] == ["K8S_EXPORTER", "AWS_EXPORTER"]
    assert "name" not in recorder

    for args, message in [
        (["--id", "a", "--role", "admin", "--origin", "ui"], "only for recorders"),
        (["--id", "a", "--role", "recorder"], "needs at least one --origin"),
        (["--id", "a", "--role", "recorder", "--origin", "jenkins"], "'jenkins' is not a valid"),
        (["--id", "a", "--role", "owner"], "invalid choice: 'owner'"),
    ]:
        done = run_auditctl("tokens", "create", *args, home=tmp_path)
        assert done.returncode == 2, args
        assert message in done.stderr


def test_a_created_token_works_against_the_service_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    tokens_file = tmp_path / "tokens.toml"
    admin_token, _, _ = _create_token(
        tmp_path, "--id", "ops@example.com", "--role", "admin", "--append", str(tokens_file)
    )
    recorder_token, _, _ = _create_token(
        tmp_path,
        "--id",
        "ci",
        "--role",
        "recorder",
        "--origin",
        "gh_action",
        "--append",
        str(tokens_file),
    )
    duplicate = run_auditctl(
        "tokens",
        "create",
        "--id",
        "ci",
        "--role",
        "admin",
        "--append",
        str(tokens_file),
        home=tmp_path,
    )
    assert duplicate.returncode == 2
    assert "already has a principal 'ci'" in duplicate.stderr

    running = start_server(tmp_path / "audit.db", dev=False, tokens=str(tokens_file))
    try:
        env = auditctl_env(tmp_path, AUDITLOG_SERVICE=running.endpoint)
        (tmp_path / "admin.token").write_text(admin_token + "\n")
        (tmp_path / "wrong.token").write_text("alog_not-a-token\n")
        (tmp_path / "ci.token").write_text(recorder_token)

        def auditctl(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return run_auditctl(*args, home=tmp_path, env={**env, **extra})

        recorded = auditctl(
            "record",
            "--token-file",
            str(tmp_path / "ci.token"),
            "--resource",
            "run",
            "--identifier",
            "deploy-1",
            "--operation",
            "create",
            "--origin",
            "gh_action",
        )
        assert recorded.returncode == 0, recorded.stderr
        listed = auditctl(
            "list", "--format", "jsonl", "--token-file", str(tmp_path / "admin.token")
        )
        assert listed.returncode == 0, listed.stderr
        runs = [json.loads(li) for li in listed.stdout.splitlines() if '"RUN"' in li]
        assert [(r["identifier"], r["recorded_by"]) for r in runs] == [("deploy-1", "ci")]
        assert auditctl("list", AUDITLOG_TOKEN=admin_token).returncode == 0

        wrong = auditctl("list", "--token-file", str(tmp_path / "wrong.token"))
        assert wrong.returncode == 4
        assert "the audit service rejected the credentials" in wrong.stderr
        anonymous = auditctl("list")
        assert anonymous.returncode == 4
        assert "--token-file" in anonymous.stderr
        denied = auditctl("list", "--token-file", str(tmp_path / "ci.token"))
        assert denied.returncode == 4
        assert "not allowed" in denied.stderr
        missing = auditctl("list", "--token-file", str(tmp_path / "nope.token"))
        assert missing.returncode == 2
        assert "cannot read the token file" in missing.stderr
        for done in (wrong, anonymous, denied, missing):
            assert "Traceback" not in done.stderr
    finally:
        running.close()


def test_target_and_token_from_config_file_environment_and_flags(
    catalog: Catalog, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = tmp_path / "config" / "auditlog" / "auditctl.toml"
    config.parent.mkdir(parents=True)
    (tmp_path / "token").write_text("alog_ignored-by-the-dev-server")
    config.write_text(
        f'service = "{catalog.server.endpoint}"\ntoken_file = "../../token"\nretry_for = 0\n'
    )
    base = auditctl_env(tmp_path)

    def auditctl(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run_auditctl(*args, home=tmp_path, env={**base, **extra})

    from_config = auditctl("list", "--format", "jsonl")
    assert from_config.returncode == 0, from_config.stderr
    assert len(from_config.stdout.splitlines()) == len(SEED)

    env_wins = auditctl("list", AUDITLOG_SERVICE=dead)
    assert env_wins.returncode == 3
    assert dead in env_wins.stderr
    flag_wins = auditctl("--service", catalog.server.endpoint, "list", AUDITLOG_SERVICE=dead)
    assert flag_wins.returncode == 0, flag_wins.stderr
    after_command = auditctl("list", "--service", catalog.server.endpoint, AUDITLOG_SERVICE=dead)
    assert after_command.returncode == 0, after_command.stderr

    other = tmp_path / "other.toml"
    other.write_text(f'service = "{dead}"\nretry_for = 0\n')
    assert auditctl("list", "--config", str(other)).returncode == 3
    assert auditctl("list", AUDITCTL_CONFIG=str(other)).returncode == 3
    missing = auditctl("list", "--config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    other.write_text('server = "x"\n')
    typo = auditctl("list", "--config", str(other))
    assert typo.returncode == 2
    assert "unknown keys server; valid keys: service" in typo.stderr


def test_tls_and_mutual_tls_from_flags(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    admin = Token("admin", "admin", "alog_tls-admin-token")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[principal]]\nid = "admin"\nrole = "admin"\n'
        f'token_sha256 = "{hashlib.sha256(admin.value.encode()).hexdigest()}"\n'
    )
    (tmp_path / "token").write_text(admin.value)
    running = start_server(
        tmp_path / "audit.db",
        dev=False,
        tokens=str(tokens),
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca_cert),
    )
    try:
        common = [
            "--service",
            f"localhost:{running.service.port}",
            "--token-file",
            str(tmp_path / "token"),
            "--ca-file",
            str(pki.ca_cert),
            "--retry-for",
            "0",
        ]
        mutual = run_auditctl(
            "list",
            *common,
            "--cert-file",
            str(pki.client_cert),
            "--key-file",
            str(pki.client_key),
            home=tmp_path,
        )
        assert mutual.returncode == 0, mutual.stderr
        without_cert = run_auditctl("list", *common, home=tmp_path)
        assert without_cert.returncode == 3
        half = run_auditctl("list", *common, "--cert-file", str(pki.client_cert), home=tmp_path)
        assert half.returncode == 2
        assert "needs both --cert-file and --key-file" in half.stderr
    finally:
        running.close()


# -- retries ----------------------------------------------------------------------------------


def test_auditctl_waits_for_a_service_that_is_starting(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            *AUDITCTL,
            "list",
            "--format",
            "jsonl",
            "--service",
            f"127.0.0.1:{port}",
            "--retry-for",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=auditctl_env(tmp_path),
    )
    time.sleep(1.0)  # auditctl is up and being refused
    assert process.poll() is None
    service = spawn_server(
        "--dev", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "audit.db")
    )
    try:
        out, errors = process.communicate(timeout=30)
        assert process.returncode == 0, errors
        assert out == ""
    finally:
        service.stop()

"""The web console's tests share this: a real audit-service with a tokens file, the real
``audit-console`` in a child process (both on free ports), the tokens, and the seeded events."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clients import AuditClient, Event, Source
from tests.helpers import REPO, TestServer, Token, start_server, write_tokens_file

_LISTENING = re.compile(r"audit-console listening on (http://\S+)")

ADMIN = Token("ada@example.com", "admin", "alog_console-admin-token")
MEMBER = Token("mia@example.com", "member", "alog_console-member-token")
OTHER_MEMBER = Token("otto@example.com", "member", "alog_console-other-member-token")
CONSOLE = Token("audit-console", "recorder", "alog_console-own-recorder-token", ("UI",))
EXPORTER = Token("k8s-exporter", "recorder", "alog_console-k8s-token", ("K8S_EXPORTER",))
TOKENS = [ADMIN, MEMBER, OTHER_MEMBER, CONSOLE, EXPORTER]

ENTITIES = 1150  # more than one page of 1,000
XSS = '<script>alert("xss")</script>'
XSS_IMG = '"><img src=x onerror=alert(1)>'
ARTIFACTS = REPO / "var" / "artifacts" / "console"


@dataclass
class ConsoleProcess:
    process: subprocess.Popen[str]
    url: str
    output: list[str]

    def stop(self, timeout: float = 15) -> str:
        "SIGTERM, wait, and everything it printed."
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            assert self.process.stdout is not None
            self.output.append(self.process.stdout.read())
            self.process.stdout.close()
        return "".join(self.output)


def spawn_console(service: str, *args: str, timeout: float = 20) -> ConsoleProcess:
    "Start ``audit-console --service SERVICE --listen 127.0.0.1:0 ARGS``; wait for its URL."
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "--service", service, "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        match = _LISTENING.search(line)
        if match:
            return ConsoleProcess(process, match.group(1), output)
    process.kill()
    process.wait()
    raise AssertionError("audit-console did not start:\n" + "".join(output))


@dataclass
class Deployment:
    "The service, the console in front of it, and an admin client for checks."

    service: TestServer
    console: ConsoleProcess
    admin: AuditClient
    tmp: Path
    seeded: dict[str, str] = field(default_factory=dict)  # name -> event id

    @property
    def url(self) -> str:
        return self.console.url

    def token_file(self, token: Token) -> Path:
        path = self.tmp / f"{token.principal_id}.token"
        path.write_text(token.value + "\n")
        return path


@contextmanager
def deployment(tmp: Path, *console_args: str, own_token: bool = True) -> Iterator[Deployment]:
    tokens = write_tokens_file(tmp / "tokens.toml", TOKENS)
    service = start_server(tmp / "audit.db", dev=False, tokens=str(tokens))
    admin = AuditClient(service.endpoint, token=ADMIN.value)
    own = tmp / "console.token"
    own.write_text(CONSOLE.value + "\n")
    args = ["--token-file", str(own)] if own_token else []
    try:
        console = spawn_console(service.endpoint, *args, *console_args)
    except BaseException:
        admin.close()
        service.close()
        raise
    try:
        yield Deployment(service, console, admin, tmp)
    finally:
        console.stop()
        admin.close()
        service.close()


def _user(who: str, name: str = "") -> Source:
    return Source(kind="user", id=who, name=name)


def seed(deploy: Deployment) -> dict[str, str]:
    """The events the console tests look at; returns the ids of the named ones.

    Entities ``svc-0000`` .. ``svc-1149`` one second apart (the last is the newest), by
    alice (even) or bob (odd), every tenth a delete; a few events of every other tab; runs of
    both members; an entity full of markup, the newest of all.
    """
    base = datetime.now(UTC) - timedelta(hours=6)
    events: list[Event] = []
    for i in range(ENTITIES):
        person = ("u-alice", "alice@example.com") if i % 2 == 0 else ("u-bob", "bob@example.com")
        events.append(
            Event(
                resource="entity",
                identifier=f"svc-{i:04}",
                blueprint="service" if i % 3 else "library",
                operation="delete" if i % 10 == 0 else "update",
                origin="ui" if i % 2 else "api",
                source=_user(*person),
                occurred_at=base + timedelta(seconds=i),
                before={"replicas": i % 5, "tier": "silver", "owner": "team-a"},
                after={"replicas": i % 5 + 1, "tier": "gold", "owner": "team-a"},
            )
        )
    later = base + timedelta(seconds=ENTITIES + 10)
    others = [
        Event(
            resource="blueprint",
            identifier="service",
            operation="update",
            origin="ui",
            source=_user("u-alice", "alice@example.com"),
            occurred_at=later,
        ),
        Event(
            resource="action",
            identifier="deploy",
            operation="create",
            origin="api",
            source=_user("u-bob"),
            occurred_at=later,
        ),
        Event(
            resource="automation",
            identifier="nightly-sync",
            operation="update",
            origin="port_automation",
            source=Source(kind="automation", id="nightly"),
            occurred_at=later,
        ),
        Event(
            resource="scorecard",
            identifier="production-readiness",
            operation="update",
            origin="port_internal",
            source=_user("u-alice"),
            occurred_at=later,
        ),
        Event(
            resource="integration",
            identifier="github",
            integration="github-acme",
            operation="update",
            origin="github_exporter",
            source=Source(kind="integration", id="github-acme"),
            status="failure",
            error="rate limited by GitHub",
            occurred_at=later,
        ),
        Event(
            resource="secret",
            identifier="db-password",
            operation="update",
            origin="ui",
            source=_user("u-alice"),
            occurred_at=later,
            before={"value": "hunter2"},
            after={"value": "correct horse"},
        ),
    ]
    runs = [
        (MEMBER.principal_id, "run_mia_1", "create", "success", ""),
        (MEMBER.principal_id, "run_mia_1", "update", "failure", "Deploy failed: rollout timed out"),
        (MEMBER.principal_id, "run_mia_2", "create", "success", ""),
        (OTHER_MEMBER.principal_id, "run_otto_1", "create", "success", ""),
        (OTHER_MEMBER.principal_id, "run_otto_1", "update", "success", ""),
    ]
    for n, (who, run_id, op, status, error) in enumerate(runs):
        others.append(
            Event(
                resource="run",
                identifier=run_id,
                run_id=run_id,
                operation=op,
                origin="gh_action",
                source=_user(who, who.split("@")[0].title()),
                status=status,
                error=error,
                occurred_at=later + timedelta(seconds=n),
                before={"status": "queued"} if op == "update" else None,
                after={"status": status, "secret": f"{run_id}-SNAPSHOT"},
            )
        )
    # Changes made by run_mia_1 on the Entities tab: "that run's own entries" include them.
    others.append(
        Event(
            resource="entity",
            identifier="payments-api",
            blueprint="service",
            run_id="run_mia_1",
            operation="update",
            origin="gh_action",
            source=_user(MEMBER.principal_id, "Mia"),
            occurred_at=later + timedelta(seconds=20),
            before={"image": "payments:1.0", "replicas": 2},
            after={"image": "payments:1.1", "replicas": 2},
        )
    )
    markup = Event(
        resource="entity",
        identifier=XSS,
        blueprint=XSS_IMG,
        operation="create",
        origin="api",
        status="failure",
        error=f"<b>bold</b> {XSS}",
        source=_user("u-mallory", XSS_IMG),
        context={"cluster": XSS},
        occurred_at=later + timedelta(seconds=30),
        before={},
        after={XSS: XSS_IMG, "note": "<i>hi</i>"},
    )
    no_snapshot = Event(
        resource="entity",
        identifier="no-snapshot",
        blueprint="service",
        operation="update",
        origin="api",
        source=_user("u-alice", "alice@example.com"),
        occurred_at=later + timedelta(seconds=25),
    )
    everything = [*events, *others, no_snapshot, markup]
    for n, event in enumerate(everything):
        event.idempotency_key = f"console-seed-{n}"  # so a retried stream stores each once
    results = deploy.admin.record_many(everything)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    ids = {
        "markup": results[-1].id,
        "no_snapshot": results[-2].id,
        "newest_entity_update": results[ENTITIES - 1].id,
        "secret": results[ENTITIES + 5].id,
        "otto_run": results[ENTITIES + 6 + 3].id,
        "mia_run": results[ENTITIES + 6].id,
        "mia_entity": results[-3].id,
    }
    deploy.seeded.update(ids)
    return ids


def wait_for_events(
    client: AuditClient, *filters: tuple[str, str, Any], count: int = 1, timeout: float = 10
) -> list[Event]:
    "Poll until at least ``count`` events match (sign-in events are recorded as they happen)."
    deadline = time.monotonic() + timeout
    while True:
        found = list(client.list(*filters))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)

"""The benchmark database: a SQLite file in the service's schema holding N realistic events
(1,000,000 by default), written fast through the storage layer's own row builder.

``scripts/bench generate --events 1000000 --out PATH`` writes one; ``list``, ``contains`` and
``retention`` call ``generate`` themselves (or take ``--db`` to reuse a file). The rows are
the ones ``SQLiteStorage.insert_batch`` writes (``storage.sqlite_rows.Rows``), in transactions of
10,000 events with ``synchronous=OFF`` (a generator, not the measured path), the secondary
indexes and the snapshot text index built once at the end, then the schema's fixed planner
statistics written again (dropping an index deletes its); then the file is checkpointed,
and the service opens it like any other.

What the events look like (seeded, so every run makes the same database):

- resource: ENTITY 55%, RUN 15%, INTEGRATION 6%, SIGN_IN 6%, ACTION 5%, AUTOMATION 5%,
  BLUEPRINT 3%, SCORECARD 3%, SECRET 2%; operations mostly UPDATE (sign-ins: READ);
- 3% failures, each with an error made from a dozen templates and the resource's name;
- identifiers from a pool of ``events / 10`` per resource type, 40 blueprints, 25
  integrations, 400 sources, 6 recording principals, 17 origins (K8S_EXPORTER and API
  commonest), context ``cluster`` (20 values), ``namespace`` (60) and sometimes ``repo``;
- snapshots of about 300 bytes (title, team, tier, image, labels, ...) on every change but
  sign-ins: CREATE has only ``after``, DELETE only ``before``;
- ``occurred_at`` spread evenly over ``days`` days ending at ``end_ns``, a few seconds before
  ``recorded_at``; ids are UUIDv7 of ``recorded_at``, in ``seq`` order.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from audit_service import models
from audit_service.models import NewEvent, Operation, Origin, ResourceType, SourceKind, Status
from audit_service.storage import sqlite as sqlite_storage
from audit_service.storage import sqlite_rows, sqlite_schema
from audit_service.storage.sqlite import SQLiteStorage

DESCRIPTION = "write the benchmark database: N realistic events in the service's schema"

DEFAULT_EVENTS = 1_000_000
QUICK_EVENTS = 200_000
DEFAULT_DAYS = 60.0
TXN_EVENTS = 10_000
DAY_NS = 86_400 * 1_000_000_000

RESOURCES = (
    (ResourceType.ENTITY, 55), (ResourceType.RUN, 15), (ResourceType.INTEGRATION, 6),
    (ResourceType.SIGN_IN, 6), (ResourceType.ACTION, 5), (ResourceType.AUTOMATION, 5),
    (ResourceType.BLUEPRINT, 3), (ResourceType.SCORECARD, 3), (ResourceType.SECRET, 2),
)  # fmt: skip
OPERATIONS = (
    (Operation.UPDATE, 62), (Operation.CREATE, 22), (Operation.DELETE, 12),
    (Operation.TIMER_EXPIRED, 4),
)  # fmt: skip
ORIGINS = (
    (Origin.K8S_EXPORTER, 30), (Origin.API, 20), (Origin.UI, 12), (Origin.GITHUB_EXPORTER, 8),
    (Origin.TERRAFORM, 6), (Origin.AWS_EXPORTER, 5), (Origin.WEBHOOK, 4),
    (Origin.PORT_AUTOMATION, 4), (Origin.GH_ACTION, 3), (Origin.GITLAB_EXPORTER, 2),
    (Origin.GITHUB_GITOPS, 1), (Origin.BITBUCKET_EXPORTER, 1), (Origin.BITBUCKET_GITOPS, 1),
    (Origin.PULUMI, 1), (Origin.CODEFRESH, 1), (Origin.AGGREGATION_PROPERTY, 1),
    (Origin.PORT_INTERNAL, 1),
)  # fmt: skip
TEAMS = ("payments", "search", "identity", "platform", "data", "mobile", "growth", "infra")
TIERS = ("bronze", "silver", "gold", "platinum")
LANGUAGES = ("go", "python", "java", "typescript", "rust", "kotlin")
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1")
ERRORS = (
    "Deploy failed: timed out waiting for rollout of {name}",
    "permission denied: {user} may not change {name}",
    "webhook returned HTTP 502 Bad Gateway while syncing {name}",
    "quota exceeded in {region} for {name}",
    "validation error: property 'tier' of {name} must be one of bronze, silver, gold",
    "connection reset by peer while calling {region} API for {name}",
    "image pull back-off: registry.example.com/{team}/{name} not found",
    "Terraform apply failed: resource {name} already exists",
    "rate limited by upstream (429), retry later: {name}",
    "schema mismatch: blueprint {blueprint} has no property owner_team",
    "invalid credentials for integration {integration}",
    "run cancelled by {user}",
)
PRINCIPALS = ("k8s-collector", "git-collector", "aws-collector", "terraform-collector",
              "port-api", "admin@example.com")  # fmt: skip


@dataclass(frozen=True)
class Generated:
    path: Path
    events: int
    seconds: float
    end_ns: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the database file to write")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help=f"how many events (default {DEFAULT_EVENTS:,}; {QUICK_EVENTS:,} with --quick)",
    )
    parser.add_argument(
        "--days", type=float, default=DEFAULT_DAYS, help="the span of occurred_at, in days"
    )
    parser.add_argument(
        "--age-days",
        type=float,
        default=0.0,
        help="how long ago the newest event occurred (e.g. 200: every event is past the"
        " default 90-day retention)",
    )


def run(args: argparse.Namespace) -> int:
    events = args.events or (QUICK_EVENTS if args.quick else DEFAULT_EVENTS)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; the generator writes a new file")
    end_ns = time.time_ns() - int(args.age_days * DAY_NS)
    result = generate(args.out, events, end_ns=end_ns, days=args.days, progress=print)
    size = sum(p.stat().st_size for p in args.out.parent.glob(args.out.name + "*"))
    print(
        f"wrote {result.events:,} events to {result.path} in {result.seconds:.1f} s"
        f" ({result.events / result.seconds:,.0f} events/s; {size / 1e6:,.0f} MB)"
    )
    return 0


def generate(
    path: Path,
    events: int,
    *,
    end_ns: int,
    days: float = DEFAULT_DAYS,
    seed: int = 1,
    progress: Callable[[str], object] | None = None,
) -> Generated:
    "Write ``events`` events to a new database at ``path`` (see the module docstring)."
    start = time.perf_counter()
    SQLiteStorage(path, durability="NORMAL").close()  # the schema, as the service makes it
    conn = sqlite_storage.connect(path, "NORMAL")
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        # Bulk load: the secondary indexes and the snapshot text index are built once at the
        # end (sorting, not a million random inserts each), from the schema's own statements.
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name IN ('events', 'event_context')"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        maker = _EventMaker(random.Random(seed), events)
        span = int(days * DAY_NS)
        step = max(1, span // max(1, events))
        first_recorded = end_ns - span
        last_ms, counter = 0, 0
        rand = random.Random(seed + 1)
        for txn_start in range(0, events, TXN_EVENTS):
            rows = sqlite_rows.Rows()
            for i in range(txn_start, min(events, txn_start + TXN_EVENTS)):
                recorded_at = first_recorded + i * step
                event = maker.event(i, recorded_at - rand.randrange(0, 5_000_000_000))
                ms = recorded_at // 1_000_000
                if ms <= last_ms:
                    ms, counter = last_ms, counter + 1
                else:
                    counter = 0
                last_ms = ms
                rows.add(i + 1, _uuid7(ms, counter, rand.getrandbits(62)), recorded_at, event)
            conn.execute("BEGIN IMMEDIATE")
            rows.write(conn, index_snapshots=False)
            conn.execute("COMMIT")
            if progress is not None and (txn_start // TXN_EVENTS) % 20 == 19:
                progress(f"  generated {txn_start + TXN_EVENTS:,} events")
        conn.execute("BEGIN IMMEDIATE")
        for _, sql in indexes:
            conn.execute(sql)
        sqlite_rows.index_snapshots_of(conn, 1, events)
        # DROP INDEX deleted the indexes' planner statistics: the schema's fixed ones again.
        sqlite_schema.write_planner_stats(conn)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return Generated(path, events, time.perf_counter() - start, end_ns)


def _uuid7(ms: int, counter: int, rand_b: int) -> str:
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (counter & 0xFFF) << 64 | 0b10 << 62
    h = f"{value | rand_b:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _weighted(pairs: tuple[tuple[object, int], ...]) -> list[object]:
    return [value for value, weight in pairs for _ in range(weight)]


class _EventMaker:
    def __init__(self, rng: random.Random, events: int) -> None:
        self.rng = rng
        self.resources = _weighted(RESOURCES)  # type: ignore[arg-type]
        self.operations = _weighted(OPERATIONS)  # type: ignore[arg-type]
        self.origins = _weighted(ORIGINS)  # type: ignore[arg-type]
        self.pool = max(10, events // 10)  # identifiers per resource type
        self.blueprints = [f"bp-{name}" for name in (*TEAMS, *LANGUAGES)] + [
            f"blueprint{i:02d}" for i in range(26)
        ]
        self.integrations = [f"{kind}-{n}" for kind in ("k8s", "github", "aws", "tf", "gitlab")
                             for n in ("prod", "staging", "dev", "eu", "us")]  # fmt: skip
        self.users = [f"user{i:03d}@example.com" for i in range(300)]
        self.bots = [f"svc-bot-{i:02d}" for i in range(100)]

    def event(self, i: int, occurred_at: int) -> NewEvent:
        rng = self.rng
        resource: ResourceType = rng.choice(self.resources)  # type: ignore[assignment]
        n = rng.randrange(self.pool)
        team = TEAMS[n % len(TEAMS)]
        region = REGIONS[n % len(REGIONS)]
        blueprint = self.blueprints[n % len(self.blueprints)]
        name = f"{team}-{resource.value.lower()}-{n:06d}"
        if resource is ResourceType.SIGN_IN:
            user = rng.choice(self.users)
            failed = rng.random() < 0.05
            return NewEvent(
                resource=resource, identifier=user, operation=Operation.READ,
                origin=Origin.UI, occurred_at=occurred_at, recorded_by="audit-service",
                source=models.Source(SourceKind.USER, user, user.split("@")[0].title()),
                status=Status.FAILURE if failed else Status.SUCCESS,
                error="invalid credentials" if failed else "",
                context={"ip": f"10.{n % 256}.{i % 256}.7", "method": "password"},
            )  # fmt: skip
        operation: Operation = rng.choice(self.operations)  # type: ignore[assignment]
        origin: Origin = rng.choice(self.origins)  # type: ignore[assignment]
        if rng.random() < 0.5:
            user = rng.choice(self.users)
            source = models.Source(SourceKind.USER, user, user.split("@")[0].title())
        else:
            bot = rng.choice(self.bots)
            kind = (SourceKind.INTEGRATION, SourceKind.AUTOMATION, SourceKind.WEBHOOK,
                    SourceKind.SYSTEM)[n % 4]  # fmt: skip
            source = models.Source(kind, bot, bot.replace("-", " ").title())
        failed = rng.random() < 0.03
        error = ""
        if failed:
            error = rng.choice(ERRORS).format(
                name=name, user=source.id, region=region, team=team, blueprint=blueprint,
                integration=self.integrations[n % len(self.integrations)],
            )  # fmt: skip
        snapshot = {
            "title": f"{team.title()} {resource.value.lower()} {n}",
            "team": team,
            "tier": TIERS[(n + i) % len(TIERS)],
            "language": LANGUAGES[n % len(LANGUAGES)],
            "image": f"registry.example.com/{team}/{name}:1.{i % 40}.{n % 9}",
            "replicas": 1 + (i % 6),
            "on_call": (i % 3) == 0,
            "labels": {"env": ("prod", "staging", "dev")[n % 3], "region": region},
            "owner": f"{team}-owners@example.com",
        }
        after = dict(snapshot, tier=TIERS[(n + i + 1) % len(TIERS)], replicas=2 + (i % 6))
        context = {"cluster": f"{region}-{n % 4}", "namespace": f"{team}-{n % 60 // 8}"}
        if origin in (Origin.GITHUB_EXPORTER, Origin.GITHUB_GITOPS, Origin.GH_ACTION):
            context["repo"] = f"acme/{team}-{n % 50}"
        return NewEvent(
            resource=resource,
            identifier=name,
            operation=operation,
            origin=origin,
            occurred_at=occurred_at,
            recorded_by=PRINCIPALS[n % len(PRINCIPALS)],
            source=source,
            status=Status.FAILURE if failed else Status.SUCCESS,
            error=error,
            blueprint=blueprint if resource is ResourceType.ENTITY else "",
            integration=self.integrations[n % len(self.integrations)] if n % 5 < 2 else "",
            run_id=f"run_{i:08x}" if resource in (ResourceType.RUN, ResourceType.ACTION) else "",
            idempotency_key=f"gen-{i}" if i % 10 < 7 else "",
            before=None if operation is Operation.CREATE else snapshot,
            after=None if operation is Operation.DELETE else after,
            context=context,
        )


def connect_read_only(path: Path) -> sqlite3.Connection:
    "A connection for looking at a generated database (e.g. to pick query values)."
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)

"""What only the PostgreSQL backend has: monthly partitions, several processes on one database
(migrations, idempotency races, the sweep lock), and its start-up errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql

from audit_service import Settings, StartupError, create_server
from audit_service.models import ResourceType
from audit_service.retention import RetentionPolicy, sweep
from audit_service.storage import postgres_schema
from audit_service.storage.postgres import PostgresStorage, month_start, partition_name
from audit_service.storage.postgres_schema import SWEEP_LOCK
from audit_service.writer import GroupCommitWriter
from tests.postgres_cluster import PostgresServer
from tests.storage_contract.test_storage_contract import DAY, NOW, new_event


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStorage]:
    storage = PostgresStorage(pg_url)
    try:
        yield storage
    finally:
        storage.close()


def _partitions(url: str) -> dict[str, int]:
    "Each partition of events with its row count."
    with psycopg.connect(url, autocommit=True) as conn:
        names = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass"
        ).fetchall()
        counts: dict[str, int] = {}
        for (name,) in names:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            row = conn.execute(query).fetchone()
            assert row is not None
            counts[name] = row[0]
        return counts


def test_events_go_to_monthly_partitions_made_on_demand(pg: PostgresStorage, pg_url: str) -> None:
    this_month = partition_name(month_start(NOW))
    old = NOW - 400 * DAY
    pg.insert_batch([new_event(occurred_at=NOW), new_event(occurred_at=old)])
    parts = _partitions(pg_url)
    assert parts[this_month] == 1
    assert parts[partition_name(month_start(old))] == 1
    assert parts["events_default"] == 0
    assert len(parts) >= 4  # also next month's, made ahead at start


def test_retention_drops_whole_partitions_and_deletes_the_rest(
    pg: PostgresStorage, pg_url: str
) -> None:
    ages = [500, 400, 100, 95, 10]
    pg.insert_batch(
        [
            new_event(
                identifier=f"e{days}", occurred_at=NOW - days * DAY, idempotency_key=str(days)
            )
            for days in ages
            for _ in range(3)
        ]
    )
    old_months = {partition_name(month_start(NOW - d * DAY)) for d in (500, 400)}
    assert old_months <= set(_partitions(pg_url))
    writer = GroupCommitWriter(pg)
    try:
        removed = sweep(writer.storage, RetentionPolicy(90, {}), NOW, batch_size=2)
    finally:
        writer.close()
    assert removed == {ResourceType.ENTITY: 4}  # 500d, 400d, 100d, 95d (repeats were duplicates)
    parts = _partitions(pg_url)
    assert not old_months & set(parts), "the partitions past retention were dropped whole"
    assert sum(parts.values()) == 1
    with psycopg.connect(pg_url, autocommit=True) as conn:
        keys = conn.execute("SELECT idempotency_key FROM idempotency_keys").fetchall()
    assert keys == [("10",)]


def test_a_month_whose_partition_cannot_be_made_lives_in_the_default_partition(
    pg: PostgresStorage, pg_url: str
) -> None:
    pg.partition_lock_timeout_ms = 100
    old = NOW - 300 * DAY
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("LOCK TABLE events IN ACCESS SHARE MODE")  # CREATE ... PARTITION OF waits
        [first] = pg.insert_batch([new_event(identifier="first", occurred_at=old)])
        blocker.rollback()
    assert not first.duplicate
    assert _partitions(pg_url)["events_default"] == 1
    # Later batches of that month go on to the default partition: the stray row keeps the
    # month from getting a partition of its own.
    pg.insert_batch([new_event(identifier="second", occurred_at=old + 1)])
    parts = _partitions(pg_url)
    assert parts["events_default"] == 2
    assert partition_name(month_start(old)) not in parts
    assert pg.delete_expired(ResourceType.ENTITY, NOW - 200 * DAY, 10) == 2


def test_only_one_process_sweeps_at_a_time(pg_url: str) -> None:
    one, two = PostgresStorage(pg_url), PostgresStorage(pg_url)
    writer = GroupCommitWriter(two)
    try:
        with one.sweep_lock() as first:
            with two.sweep_lock() as second:
                assert first
                assert not second
            assert sweep(writer.storage, RetentionPolicy(), NOW) is None
        with two.sweep_lock() as after:
            assert after
        assert sweep(writer.storage, RetentionPolicy(), NOW) == {}
        # The lock is the database's: a plain session holding it stops every replica too.
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", [SWEEP_LOCK])
            assert sweep(writer.storage, RetentionPolicy(), NOW) is None
    finally:
        writer.close()
        one.close()
        two.close()


def test_replicas_racing_on_the_same_keys_store_each_key_once(pg_url: str) -> None:
    replicas = [PostgresStorage(pg_url) for _ in range(3)]
    keys = [f"key-{i}" for i in range(60)]
    start = threading.Barrier(6)

    def send(replica: PostgresStorage, turn: int) -> list[tuple[str, str, bool]]:
        order = keys[turn % 3 :] + keys[: turn % 3]
        if turn % 2:
            order.reverse()
        start.wait()
        results = []
        for i in range(0, len(order), 10):
            chunk = order[i : i + 10]
            outcomes = replica.insert_batch(
                [new_event(identifier=k, idempotency_key=k) for k in chunk]
            )
            results += [(k, o.id, o.duplicate) for k, o in zip(chunk, outcomes, strict=True)]
        return results

    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(send, replicas[t % 3], t) for t in range(6)]
            results = [r for f in futures for r in f.result()]
    finally:
        for replica in replicas:
            replica.close()
    ids: dict[str, set[str]] = {}
    firsts: dict[str, int] = {}
    for key, event_id, duplicate in results:
        ids.setdefault(key, set()).add(event_id)
        firsts[key] = firsts.get(key, 0) + (not duplicate)
    assert all(len(v) == 1 for v in ids.values()), "every sender got the first event's id"
    assert set(firsts.values()) == {1}, "exactly one sender stored each key"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        count = conn.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM events")
        assert count.fetchone() == (60, 60)


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        replicas = list(pool.map(lambda _: PostgresStorage(pg_url), range(4)))
    try:
        keys = {r.server_key().derive("k") for r in replicas}
        assert len(keys) == 1
        [outcome] = replicas[0].insert_batch([new_event()])
        assert all(r.get_event(outcome.id) is not None for r in replicas)
    finally:
        for replica in replicas:
            replica.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT name, value FROM auditlog_meta ORDER BY name").fetchall()
    values = {str(name): str(value) for name, value in rows}
    assert list(values) == ["fold_collation", "schema_version", "server_key"]
    assert values["schema_version"] == str(len(postgres_schema.MIGRATIONS))


def test_connections_cut_by_the_server_are_replaced(pg: PostgresStorage, pg_url: str) -> None:
    [before] = pg.insert_batch([new_event(identifier="before")])
    with psycopg.connect(pg_url, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert cut is not None
    assert cut[0] >= 1  # as a restart or failover would
    [after] = pg.insert_batch([new_event(identifier="after")])
    assert pg.get_event(before.id) is not None
    assert pg.get_event(after.id) is not None


def test_a_database_that_cannot_be_reached_is_a_startup_error(
    postgres_cluster: PostgresServer,
) -> None:
    url = postgres_cluster.url("no_such_db", password="hunter2")
    started = time.monotonic()
    with pytest.raises(StartupError) as caught:
        create_server(Settings(dev=True, listen="127.0.0.1:0", db=url))
    message = str(caught.value)
    assert "no_such_db" in message
    assert "hunter2" not in message
    assert time.monotonic() - started < 20

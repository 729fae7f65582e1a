"""The collector runtime in this process: the spool, the sender against a real audit-service,
the HTTP endpoint over real sockets, options, and the file follower on real files."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from clients import AuditClient, RetryPolicy, pb
from collectors.runtime import (
    BasicAuthFile,
    BearerTokenFile,
    Delivery,
    DeliverySettings,
    HmacSignature,
    HttpEndpoint,
    Request,
    Response,
    Spool,
    SpoolFull,
    StartupError,
    Stats,
)
from collectors.runtime.delivery import Backoff
from collectors.runtime.files import LineFollower, Position
from collectors.runtime.limits import OMITTED_KEY, fit_event
from collectors.runtime.options import Option, OptionError, add_options, resolve
from collectors.runtime.snapshots import NotASnapshot, encode_struct
from collectors.runtime.spool import SpoolError
from tests.collector_helpers import wait_until
from tests.helpers import TestServer, Token, event, list_all, start_server, write_tokens_file


def k8s_event(n: int, **overrides: Any) -> pb.AuditEvent:
    values: dict[str, Any] = {
        "identifier": f"default/cm-{n}",
        "blueprint": "configmaps",
        "origin": pb.ORIGIN_K8S_EXPORTER,
        "idempotency_key": f"k8s:test-{n}",
        "after": {"data": {"n": n}},
    }
    values.update(overrides)
    return event(**values)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.db", max_events=1000) as opened:
        yield opened


# -- the spool -------------------------------------------------------------------------------


def test_spool_keeps_events_in_order_until_settled_and_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "spool.db"
    with Spool(path) as spool:
        spool.add([k8s_event(n) for n in range(5)])
        assert spool.pending == 5
        head = spool.head(3)
        assert [item.key for item in head] == ["k8s:test-0", "k8s:test-1", "k8s:test-2"]
        assert pb.AuditEvent.FromString(head[0].data) == k8s_event(0)
        spool.settle(delivered=[head[0].seq, head[1].seq])
        assert spool.pending == 3
    with Spool(path) as again:
        assert again.pending == 3
        assert again.pending_bytes == sum(len(item.data) for item in again.head(10))
        assert [item.key for item in again.head(10)] == [f"k8s:test-{n}" for n in (2, 3, 4)]


def test_spool_keeps_one_copy_per_idempotency_key(spool: Spool) -> None:
    spool.add([k8s_event(1), k8s_event(2)])
    size = spool.pending_bytes
    spool.add([k8s_event(2), k8s_event(3)])
    assert spool.pending == 3
    assert spool.pending_bytes == size + len(k8s_event(3).SerializeToString())


def test_spool_refuses_events_without_an_idempotency_key(spool: Spool) -> None:
    with pytest.raises(ValueError, match="idempotency key"):
        spool.add([k8s_event(1, idempotency_key="")])
    assert spool.pending == 0


def test_a_full_spool_refuses_the_whole_transaction_state_included(tmp_path: Path) -> None:
    stats = Stats()
    with Spool(tmp_path / "s.db", max_events=3, stats=stats) as spool:
        spool.add([k8s_event(n) for n in range(5)])  # an empty spool takes any batch
        spool.settle(delivered=[item.seq for item in spool.head(3)])
        assert spool.pending == 2
        assert spool.has_room(1)
        assert not spool.has_room(2)

        def overfill() -> None:
            with spool.transaction() as tx:
                tx.set_state("test", "position", "42")
                tx.add(k8s_event(10))
                tx.add(k8s_event(11))

        with pytest.raises(SpoolFull):
            overfill()
        assert spool.get_state("test", "position") is None
        assert spool.pending == 2
        assert stats.get("rejected_full") == 2
        assert stats.get("received") == 5


def test_wait_for_room_wakes_when_delivery_frees_it(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_events=2) as spool:
        spool.add([k8s_event(0), k8s_event(1)])
        seqs = [item.seq for item in spool.head(2)]
        timer = threading.Timer(0.1, lambda: spool.settle(delivered=seqs))
        timer.start()
        started = time.monotonic()
        assert spool.wait_for_room(2, timeout=10)
        assert time.monotonic() - started < 5
        assert not spool.wait_for_room(5, timeout=0.01) or spool.pending == 0


def test_settle_dead_letters_with_the_reason_and_counts_attempts(spool: Spool) -> None:
    spool.add([k8s_event(n) for n in range(3)])
    first, second, third = spool.head(3)
    spool.settle(
        delivered=[first.seq],
        dead=[(second.seq, "INVALID_ARGUMENT: no")],
        failed=[(third.seq, "UNAVAILABLE")],
    )
    assert spool.pending == 1
    [left] = spool.head(5)
    assert left.key == third.key
    assert left.attempts == 1
    [dead] = spool.dead_letters()
    assert (dead.key, dead.reason) == (second.key, "INVALID_ARGUMENT: no")
    assert pb.AuditEvent.FromString(dead.data) == k8s_event(1)
    assert spool.dead_letter_count() == 1


def test_spool_state_is_written_with_the_events(spool: Spool) -> None:
    with spool.transaction() as tx:
        assert tx.get_state("k8s", "a") is None
        tx.set_state("k8s", "a", b"\x00one")
        assert tx.get_state("k8s", "a") == b"\x00one"
        tx.add(k8s_event(1))
    assert spool.get_state("k8s", "a") == b"\x00one"
    spool.set_state("k8s", "a", "two")
    assert spool.get_state("k8s", "a") == b"two"
    with spool.transaction() as tx:
        tx.delete_state("k8s", "a")
    assert spool.get_state("k8s", "a") is None


def test_a_file_that_is_not_a_spool_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database file at all" * 100)
    with pytest.raises(SpoolError):
        Spool(garbage)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SpoolError, match="newer collector"):
        Spool(newer)


# -- the sender --------------------------------------------------------------------------------


def make_delivery(
    spool: Spool, endpoint: str, token: str | None = None, token_file: Path | None = None
) -> tuple[Delivery, Stats]:
    stats = Stats()

    def connect() -> AuditClient:
        value = token_file.read_text().strip() if token_file is not None else token
        return AuditClient(endpoint, token=value, retry=RetryPolicy(attempts=1), timeout=10)

    settings = DeliverySettings(linger=0.01, initial_backoff=0.05, max_backoff=0.2)
    return Delivery(spool, connect, stats, settings), stats


def stored(server: TestServer, metadata: tuple[tuple[str, str], ...] = ()) -> list[pb.AuditEvent]:
    return list(list_all(server.stub, pb.ListRequest(page_size=1000), metadata))


def test_delivery_streams_everything_in_batches_and_empties_the_spool(
    server: TestServer, spool: Spool
) -> None:
    spool.add([k8s_event(n) for n in range(1000)])
    delivery, stats = make_delivery(spool, server.endpoint)
    delivery.start()
    try:
        wait_until(lambda: spool.pending == 0)
    finally:
        assert delivery.stop(drain_seconds=5) == 0
    assert stats.get("delivered") == 1000
    events = stored(server)
    assert len(events) == 1000
    assert {e.idempotency_key for e in events} == {f"k8s:test-{n}" for n in range(1000)}
    assert delivery.service_reachable is True


def test_delivery_dead_letters_what_the_service_refuses(server: TestServer, spool: Spool) -> None:
    spool.add(
        [
            k8s_event(1),
            k8s_event(2, blueprint=""),  # ENTITY without a blueprint: INVALID_ARGUMENT
            k8s_event(3),
        ]
    )
    delivery, stats = make_delivery(spool, server.endpoint)
    delivery.start()
    try:
        wait_until(lambda: spool.pending == 0)
    finally:
        delivery.stop(drain_seconds=5)
    assert stats.get("delivered") == 2
    assert stats.get("dead_lettered") == 1
    [dead] = spool.dead_letters()
    assert dead.key == "k8s:test-2"
    assert "event.blueprint" in dead.reason
    assert len(stored(server)) == 2


def test_a_recorder_token_for_other_origins_dead_letters_with_permission_denied(
    tmp_path: Path, spool: Spool
) -> None:
    wrong = Token("gh-exporter", "recorder", "tok-gh-1234567890", ("GITHUB_EXPORTER",))
    tokens = write_tokens_file(tmp_path / "tokens.toml", [wrong])
    server = start_server(tmp_path / "a.db", dev=False, tokens=str(tokens))
    try:
        spool.add([k8s_event(n) for n in range(3)])
        delivery, stats = make_delivery(spool, server.endpoint, token=wrong.value)
        delivery.start()
        try:
            wait_until(lambda: spool.pending == 0)
        finally:
            delivery.stop(drain_seconds=5)
        assert stats.get("dead_lettered") == 3
        assert all("PERMISSION_DENIED" in d.reason for d in spool.dead_letters())
        assert "K8S_EXPORTER" in spool.dead_letters()[0].reason
    finally:
        server.close()


def test_a_refused_token_keeps_events_and_a_new_token_file_is_picked_up(
    tmp_path: Path, spool: Spool
) -> None:
    good = Token("k8s", "recorder", "tok-k8s-1234567890", ("K8S_EXPORTER",))
    tokens = write_tokens_file(tmp_path / "tokens.toml", [good])
    server = start_server(tmp_path / "a.db", dev=False, tokens=str(tokens))
    token_file = tmp_path / "token"
    token_file.write_text("not-the-right-token\n")
    try:
        spool.add([k8s_event(n) for n in range(3)])
        delivery, stats = make_delivery(spool, server.endpoint, token_file=token_file)
        delivery.start()
        try:
            wait_until(lambda: stats.get("retried") >= 6)  # tried at least twice
            assert spool.pending == 3
            assert "UNAUTHENTICATED" in delivery.last_error
            token_file.write_text(good.value + "\n")  # rotated
            wait_until(lambda: spool.pending == 0)
        finally:
            delivery.stop(drain_seconds=5)
        assert stats.get("delivered") == 3
        assert stats.get("dead_lettered") == 0
    finally:
        server.close()


def test_backoff_grows_with_jitter_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    caps = [min(1.0, 0.1 * 2**n) for n in range(8)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 0.1


# -- the HTTP endpoint -------------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Iterator[HttpEndpoint]:
    served = HttpEndpoint("127.0.0.1:0")
    seen: list[Request] = []

    def echo(request: Request) -> Response:
        seen.append(request)
        return Response.json(200, {"bytes": len(request.body), "query": request.query})

    def full(_request: Request) -> Response:
        raise SpoolFull(10, 100, 10, 1000)

    def broken(_request: Request) -> Response:
        raise RuntimeError("bug")

    served.route("POST", "/echo", echo, max_body=1000)
    served.route("GET", "/echo", echo, receives_events=False)
    served.route("POST", "/full", full)
    served.route("POST", "/broken", broken)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def call(
    endpoint: HttpEndpoint,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def raw(endpoint: HttpEndpoint, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_endpoint_routes_and_refusals(endpoint: HttpEndpoint) -> None:
    assert call(endpoint, "POST", "/echo?x=1", b"abc")[0] == 200
    assert call(endpoint, "GET", "/nowhere")[0] == 404
    status, headers, _ = call(endpoint, "PUT", "/echo", b"")
    assert status == 405
    assert headers["Allow"] == "GET, POST"
    assert call(endpoint, "POST", "/echo", b"x" * 1001)[0] == 413
    status, headers, _ = call(endpoint, "POST", "/full", b"{}")
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert call(endpoint, "POST", "/broken", b"{}")[0] == 500


def test_endpoint_reads_chunked_bodies_within_the_cap(endpoint: HttpEndpoint) -> None:
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    answer = raw(endpoint, head + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"bytes": 7' in answer
    big = b"".join(b"190\r\n" + b"y" * 400 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    assert raw(endpoint, head + big).startswith(b"HTTP/1.1 413")
    no_length = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert raw(endpoint, no_length).startswith(b"HTTP/1.1 411")
    bad_length = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"
    assert raw(endpoint, bad_length).startswith(b"HTTP/1.1 400")


def test_endpoint_keeps_connections_alive(endpoint: HttpEndpoint) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
    try:
        for n in range(3):
            conn.request("POST", "/echo", body=b"z" * n)
            response = conn.getresponse()
            assert response.status == 200
            response.read()
    finally:
        conn.close()


def test_a_stopped_endpoint_stops_listening() -> None:
    stopping = HttpEndpoint("127.0.0.1:0")
    stopping.route("POST", "/in", lambda r: Response.json(200, {}))
    stopping.start()
    port = stopping.port
    stopping.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_bearer_token_file_accepts_any_listed_token_and_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotation: new first\nnew-token\nold-token\n")
    auth = BearerTokenFile(path)

    def request(header: str | None) -> Request:
        import email.message

        headers = email.message.Message()
        if header is not None:
            headers["Authorization"] = header
        return Request("POST", "/", {}, headers, b"", "127.0.0.1:1", None)

    assert auth.check(request("Bearer new-token"))
    assert auth.check(request("bearer old-token"))
    assert not auth.check(request("Bearer nope"))
    assert not auth.check(request("Basic new-token"))
    assert not auth.check(request(None))
    path.write_text("only-token-now\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert auth.check(request("Bearer only-token-now"))
    assert not auth.check(request("Bearer old-token"))
    path.write_text("")  # emptied mid-rotation: the last tokens stay
    os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    assert auth.check(request("Bearer only-token-now"))
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(StartupError, match="holds no token"):
        BearerTokenFile(empty)
    with pytest.raises(StartupError, match="cannot read"):
        BearerTokenFile(tmp_path / "missing")


# -- options -----------------------------------------------------------------------------------

OPTIONS = (
    Option("size", 10, "a number", "int"),
    Option("name", "default", "a text"),
    Option("where", None, "a path", "path"),
    Option("on", False, "a flag", "bool"),
    Option("map", {}, "a mapping", "mapping"),
)


def parse(argv: list[str], environ: dict[str, str]) -> Any:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_options(parser, "test", OPTIONS)
    return resolve(OPTIONS, parser.parse_args(argv), environ)


def test_options_come_from_flag_then_environment_then_config_then_default(
    tmp_path: Path,
) -> None:
    config = tmp_path / "conf" / "c.toml"
    config.parent.mkdir()
    config.write_text('size = 30\nname = "from-config"\nwhere = "rel/spool.db"\n[map]\na = "1"\n')
    values = parse(["--config", str(config), "--size", "50"], {"AUDIT_COLLECTOR_NAME": "env"})
    assert values.integer("size") == 50
    assert values.text("name") == "env"
    assert values.path("where") == config.parent / "rel" / "spool.db"
    assert values.mapping("map") == {"a": "1"}
    assert values.flag("on") is False
    values = parse(["--map", "x=1", "--map", "y=2", "--on"], {"AUDIT_COLLECTOR_SIZE": "7"})
    assert values.mapping("map") == {"x": "1", "y": "2"}
    assert values.integer("size") == 7
    assert values.flag("on") is True
    assert values.path("where") is None
    env = {"AUDIT_COLLECTOR_MAP": "apps/deployments=service, pods=pod", "AUDIT_COLLECTOR_ON": "yes"}
    values = parse([], env)
    assert values.mapping("map") == {"apps/deployments": "service", "pods": "pod"}
    assert values.flag("on") is True


def test_option_errors_name_the_option_and_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="--size"):
        parse(["--size", "ten"], {})
    with pytest.raises(OptionError, match=r"\$AUDIT_COLLECTOR_MAP"):
        parse([], {"AUDIT_COLLECTOR_MAP": "novalue"})
    config = tmp_path / "c.toml"
    config.write_text("sise = 3\n")
    with pytest.raises(OptionError, match="unknown keys sise"):
        parse(["--config", str(config)], {})


# -- fitting events under the service's limits -------------------------------------------------


def test_fit_event_drops_snapshots_over_a_mebibyte_but_keeps_the_event() -> None:
    big = {"blob": "x" * 700_000}
    message = k8s_event(1, before=big, after=big, error="e" * 5000)
    fitted = fit_event(message)
    assert fitted.ByteSize() <= 1024 * 1024
    assert not fitted.HasField("before")
    assert fitted.HasField("after")
    assert "before" in fitted.context[OMITTED_KEY]
    assert len(fitted.error.encode()) <= 4096
    huge = fit_event(k8s_event(2, after={"blob": "y" * 1_100_000}))
    assert not huge.HasField("after")


# -- following a file --------------------------------------------------------------------------


def take(follower: LineFollower) -> list[bytes]:
    "Everything readable now, committed batch by batch."
    out: list[bytes] = []
    while (batch := follower.read()) is not None:
        out.extend(batch[0])
        follower.commit(batch[1])
    return out


def test_follower_hands_out_only_complete_lines_and_repeats_until_commit(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"n":1}\n\n{"n":2}\n{"n":')
    follower = LineFollower(path, max_lines=10)
    first = follower.read()
    assert first is not None
    assert first[0] == [b'{"n":1}', b'{"n":2}']
    assert follower.read() == first  # not committed: the same again
    follower.commit(first[1])
    assert follower.read() is None  # half a line
    with path.open("ab") as out:
        out.write(b"3}\n")
    assert take(follower) == [b'{"n":3}']
    follower.close()


def rotate(path: Path, name: str) -> None:
    path.rename(path.with_name(name))
    path.touch()


def test_follower_reads_rotated_files_in_order_even_several_between_reads(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    (tmp_path / "audit-policy.yaml").write_text("not a log\n")
    path.write_text("a1\n")
    follower = LineFollower(path)
    assert take(follower) == [b"a1"]
    with path.open("a") as out:
        out.write("a2\na3-no-newline")
    rotate(path, "audit-2026-01-01T00-00-01.000.log")
    path.write_text("b1\n")
    rotate(path, "audit-2026-01-01T00-00-02.000.log")
    rotate(path, "audit-2026-01-01T00-00-03.000.log")  # empty
    path.write_text("d1\n")
    (tmp_path / "audit-2026-01-01T00-00-00.000.log.gz").write_text("compressed, skipped\n")
    assert take(follower) == [b"a2", b"a3-no-newline", b"b1", b"d1"]
    follower.close()


def test_follower_resumes_from_a_saved_position_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("1\n2\n")
    follower = LineFollower(path, max_lines=1)
    batch = follower.read()
    assert batch is not None
    assert batch[0] == [b"1"]
    saved = batch[1]
    follower.close()  # stopped after storing line 1
    with path.open("a") as out:
        out.write("3\n")
    rotate(path, "audit.log.1")  # logrotate's naming
    path.write_text("4\n")
    resumed = LineFollower(path, Position.loads(saved.dumps()))
    assert take(resumed) == [b"2", b"3", b"4"]
    resumed.close()


def test_follower_whose_saved_file_is_gone_reads_what_came_after(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("old\n")
    follower = LineFollower(path)
    batch = follower.read()
    assert batch is not None
    follower.commit(batch[1])
    follower.close()
    time.sleep(0.01)
    rotate(path, "audit-2.log")
    (tmp_path / "audit-2.log").unlink()  # the old file, removed by retention
    path.write_text("new\n")
    later = tmp_path / "audit-3.log"
    later.write_text("x\n")
    os.utime(later, ns=(batch[1].mtime_ns + 10**9, batch[1].mtime_ns + 10**9))
    resumed = LineFollower(path, batch[1])
    assert take(resumed) == [b"x", b"new"]
    resumed.close()


def test_follower_starts_over_on_a_file_truncated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("one\ntwo\n")
    follower = LineFollower(path)
    assert take(follower) == [b"one", b"two"]
    path.write_text("three\n")  # copy-truncate, then a new line
    assert take(follower) == [b"three"]
    follower.close()


# -- snapshots as Struct bytes -------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_encode_struct_matches_struct_update(obj: dict[str, Any]) -> None:
    expected = struct_pb2.Struct()
    expected.update(obj)
    encoded = struct_pb2.Struct()
    encoded.MergeFromString(encode_struct(obj))
    assert encoded == expected


def test_encode_struct_refuses_what_the_service_would() -> None:
    from audit_service.validation import depth

    nested: dict[str, Any] = {"leaf": [1]}
    while depth(nested) < 32:
        nested = {"x": nested}
    assert depth(nested) == 32
    encode_struct(nested)  # the deepest the service takes
    with pytest.raises(NotASnapshot, match="deeper than 32"):
        encode_struct({"x": nested})
    with pytest.raises(NotASnapshot, match="set"):
        encode_struct({"x": {1, 2}})


# -- the runtime's health ------------------------------------------------------------------


def test_a_worker_that_fails_makes_healthz_fail(tmp_path: Path, spool: Spool) -> None:
    from collectors.runtime import Runtime
    from collectors.runtime.app import _health
    from collectors.runtime.options import Values

    delivery, stats = make_delivery(spool, "127.0.0.1:1")
    runtime = Runtime(
        "test",
        Values({"service": "127.0.0.1:1"}),
        spool,
        HttpEndpoint("127.0.0.1:0"),
        stats,
        delivery,
    )
    delivery.start()

    def broken(stop: threading.Event) -> None:
        raise RuntimeError("the source went away")

    def patient(stop: threading.Event) -> None:
        stop.wait()

    runtime.add_worker("broken", broken)
    runtime.add_worker("patient", patient)
    runtime.count("seen", 2)
    runtime._start_workers()
    try:
        wait_until(lambda: _health(runtime).status == 503)
        answer = _health(runtime)
        assert json.loads(answer.body)["problems"] == ["worker broken stopped by an error"]
        document = runtime.stats_document()
        assert document["test"] == {"seen": 2}
        assert document["service"]["reachable"] is None
    finally:
        runtime._stop_workers(wait=5)
        delivery.stop(drain_seconds=0)
    assert "the delivery thread stopped" in _health(runtime).body.decode()


def test_signatures_over_the_body_and_tokens_in_other_headers(tmp_path: Path) -> None:
    import hashlib
    import hmac

    secrets_file = tmp_path / "github.secret"
    secrets_file.write_text("s3cret\n")
    gitlab_file = tmp_path / "gitlab.token"
    gitlab_file.write_text("gl-token\n")
    served = HttpEndpoint("127.0.0.1:0")
    echo = lambda r: Response.json(200, {"bytes": len(r.body)})  # noqa: E731
    served.route("POST", "/github", echo, max_body=100, auth=[HmacSignature(secrets_file)])
    served.route(
        "POST",
        "/gitlab",
        echo,
        auth=[BearerTokenFile(gitlab_file, header="X-Gitlab-Token", scheme="")],
    )
    assert not served.open_event_routes()  # authenticated: may listen beyond loopback
    served.start()
    try:
        body = b'{"zen": "Keep it logically awesome."}'
        good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert call(served, "POST", "/github", body, {"X-Hub-Signature-256": good})[0] == 200
        for bad in ("sha256=" + "0" * 64, good[7:], ""):
            headers = {"X-Hub-Signature-256": bad} if bad else {}
            assert call(served, "POST", "/github", body, headers)[0] == 401, bad
        tampered = body.replace(b"awesome", b"terrible")
        assert call(served, "POST", "/github", tampered, {"X-Hub-Signature-256": good})[0] == 401
        assert call(served, "POST", "/github", b"x" * 101, {"X-Hub-Signature-256": good})[0] == 413
        assert call(served, "POST", "/gitlab", b"{}", {"X-Gitlab-Token": "gl-token"})[0] == 200
        assert call(served, "POST", "/gitlab", b"{}", {"X-Gitlab-Token": "nope"})[0] == 401
    finally:
        served.stop()


def test_basic_auth_from_a_file_of_user_password_lines(tmp_path: Path) -> None:
    import base64

    path = tmp_path / "terraform.credentials"
    path.write_text("# user:password\nterraform:pa55:word\n")
    served = HttpEndpoint("127.0.0.1:0")
    served.route("POST", "/state", lambda r: Response.json(200, {}), auth=[BasicAuthFile(path)])
    served.start()

    def basic(text: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}

    try:
        assert call(served, "POST", "/state", b"{}", basic("terraform:pa55:word"))[0] == 200
        assert call(served, "POST", "/state", b"{}", basic("terraform:wrong"))[0] == 401
        assert call(served, "POST", "/state", b"{}", {"Authorization": "Basic %%%"})[0] == 401
        assert call(served, "POST", "/state", b"{}")[0] == 401
    finally:
        served.stop()


def test_prefix_routes_answer_every_path_under_them() -> None:
    served = HttpEndpoint("127.0.0.1:0")

    def where(request: Request) -> Response:
        return Response.json(200, {"path": request.path, "method": request.method})

    served.route("GET", "/state/", where, prefix=True)
    served.route("LOCK", "/state/", where, prefix=True)
    served.route("GET", "/state/special", lambda r: Response.json(200, {"exact": True}))
    with pytest.raises(ValueError, match="ends in '/'"):
        served.route("GET", "/nested", where, prefix=True)
    assert [r.path for r in served.open_event_routes()].count("/state/") == 2
    served.start()
    try:
        status, _, body = call(served, "GET", "/state/prod/lock?x=1")
        assert (status, json.loads(body)) == (200, {"path": "/state/prod/lock", "method": "GET"})
        assert json.loads(call(served, "LOCK", "/state/dev", b"{}")[2])["method"] == "LOCK"
        assert json.loads(call(served, "GET", "/state/special")[2]) == {"exact": True}
        assert call(served, "GET", "/state/")[0] == 404  # the prefix itself is not under it
        status, headers, _ = call(served, "POST", "/state/prod", b"{}")
        assert (status, headers["Allow"]) == (405, "GET, LOCK")
    finally:
        served.stop()

"""Events built as bytes: what the Kubernetes collector spools without parsing its snapshots
into a message is the message the message path builds; the spool's serialized inserts; the
snapshot encoder's caches keep types apart."""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from clients import pb
from collectors.kubernetes import history
from collectors.kubernetes.mapping import Mapped, Mapper, MappingConfig, Redactor
from collectors.runtime import Spool
from collectors.runtime.limits import OMITTED_KEY, fit_event, fit_serialized
from collectors.runtime.snapshots import encode_struct
from tests.collector_helpers import audit_event, config_map
from tests.helpers import event


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.db", durable=False) as opened:
        yield opened


def both_ways(base: pb.AuditEvent, before: Any, after: Any) -> tuple[pb.AuditEvent, bytes]:
    "``fit_event`` of the whole message, and ``fit_serialized`` of the same parts."
    before_bytes = None if before is None else encode_struct(before)
    after_bytes = None if after is None else encode_struct(after)
    whole = copy.deepcopy(base)
    if before_bytes is not None:
        whole.before.MergeFromString(before_bytes)
    if after_bytes is not None:
        whole.after.MergeFromString(after_bytes)
    return fit_event(whole), fit_serialized(copy.deepcopy(base), before_bytes, after_bytes)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, None),
        (None, {"spec": {"replicas": 2}}),
        ({"spec": {"replicas": 1}}, {"spec": {"replicas": 2}}),
        ({}, None),  # an empty snapshot is still a snapshot
        ({"blob": "x" * 700_000}, {"blob": "y" * 700_000}),  # before dropped
        ({"blob": "x" * 100}, {"blob": "y" * 1_100_000}),  # both dropped
    ],
)
def test_fit_serialized_is_fit_event_as_bytes(before: Any, after: Any) -> None:
    base = event(
        idempotency_key="k8s:1",
        error="e\x00" * 3000,
        identifier="ns/" + "n" * 600,
        context={"verb": "patch", "user_agent": "u" * 2000},
    )
    expected, data = both_ways(base, before, after)
    assert pb.AuditEvent.FromString(data) == expected
    assert len(data) == expected.ByteSize()
    assert len(data) <= 1024 * 1024


def test_fit_serialized_says_which_snapshots_it_dropped() -> None:
    _, data = both_ways(event(idempotency_key="k"), {"a": "x" * 700_000}, {"a": "y" * 700_000})
    fitted = pb.AuditEvent.FromString(data)
    assert not fitted.HasField("before")
    assert fitted.HasField("after")
    assert fitted.context[OMITTED_KEY].startswith("before: the event was")


def test_fit_serialized_refuses_an_event_with_snapshots_of_its_own() -> None:
    with pytest.raises(ValueError, match="snapshots of its own"):
        fit_serialized(event(after={"a": 1}), None, encode_struct({"a": 2}))


# -- the Kubernetes history, as bytes and as messages ------------------------------------------


def mapper() -> Mapper:
    return Mapper(MappingConfig(cluster="prod"), Redactor(b"k" * 32))


def changes() -> list[dict[str, Any]]:
    "Creates, patches (one arriving late), a forbidden update, a delete and a Secret."
    uid = "6f1c0b4e-0000-4000-8000-000000000001"

    def cm(version: int, data: dict[str, str]) -> dict[str, Any]:
        return config_map("app", data, uid=uid, resource_version=version)

    def event_of(verb: str, obj: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
        return audit_event(
            verb=verb, resource="configmaps", name="app", uid=uid, response_object=obj, **more
        )

    secret = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "token", "namespace": "default", "uid": "s-1"},
        "data": {"password": "aHVudGVyMg=="},
    }
    return [
        event_of("create", cm(10, {"a": "1"})),
        event_of("patch", cm(12, {"a": "2"})),
        event_of("patch", cm(11, {"a": "late"})),  # after a newer change
        event_of("update", None, code=403, status={"code": 403, "message": "forbidden"}),
        event_of("delete", None),
        audit_event(verb="create", resource="secrets", name="token", response_object=secret),
    ]


def resolved_both_ways(spool: Spool) -> tuple[list[pb.AuditEvent], list[bytes]]:
    items = changes()
    messages: list[pb.AuditEvent] = []
    serialized: list[bytes] = []
    for into, raw_items in ((messages, copy.deepcopy(items)), (serialized, items)):
        for raw in raw_items:  # one batch each, so each change sees the one before
            found = mapper().map(raw)
            assert isinstance(found, Mapped), found
            with spool.transaction() as tx:
                [resolved] = history.resolve_batch(tx, [found])
                if into is messages:
                    messages.append(resolved.message())
                else:
                    serialized.append(resolved.serialized())
        with spool.transaction() as tx:  # the second pass starts from the same history
            tx.delete_states(history.SCOPE, ["/configmaps/default/app", "/secrets/default/token"])
    return messages, serialized


def test_the_history_as_bytes_is_the_history_as_messages(spool: Spool) -> None:
    messages, serialized = resolved_both_ways(spool)
    assert [pb.AuditEvent.FromString(data) for data in serialized] == messages
    assert [len(data) for data in serialized] == [m.ByteSize() for m in messages]
    created, patched, late, forbidden, deleted, secret = messages
    assert created.HasField("after")
    assert not created.HasField("before")
    assert patched.HasField("before")
    assert patched.HasField("after")
    assert not late.HasField("after")
    assert OMITTED_KEY in late.context
    assert not forbidden.HasField("after")
    assert deleted.HasField("before")
    assert not deleted.HasField("after")
    assert "aHVudGVyMg==" not in str(secret.after)


# -- the spool ---------------------------------------------------------------------------------


def test_add_serialized_spools_the_bytes_as_given(spool: Spool) -> None:
    data = event(idempotency_key="k8s:raw").SerializeToString()
    with spool.transaction() as tx:
        tx.add_serialized("k8s:raw", data)
        with pytest.raises(ValueError, match="idempotency key"):
            tx.add_serialized("", data)
    [spooled] = spool.head(10)
    assert (spooled.key, spooled.data) == ("k8s:raw", data)
    assert spool.pending_bytes == len(data)


def test_a_transaction_of_many_rows_keeps_one_per_key(spool: Spool) -> None:
    "Rows go in many to a statement: repeats within one, and across them, are kept once."
    spool.add([event(idempotency_key=f"k{n}") for n in range(3)])
    keys = [f"k{n % 450}" for n in range(700)]  # 450 distinct, 3 of them spooled already
    with spool.transaction() as tx:
        for key in keys:
            tx.add(event(idempotency_key=key, identifier=key))
    spooled = spool.head(1000)
    assert [s.key for s in spooled] == [f"k{n}" for n in range(450)]
    assert spool.pending == 450
    assert spool.pending_bytes == sum(len(s.data) for s in spooled)


# -- the snapshot encoder's caches -------------------------------------------------------------


def test_cached_entries_keep_equal_values_of_different_types_apart() -> None:
    "1 == True == 1.0 and 0 == -0.0 as dictionary keys; on the wire they differ."
    for obj in ({"n": 1}, {"n": True}, {"n": 1.0}, {"n": "1"}, {"n": 0}, {"n": -0.0}) * 2:
        decoded = struct_pb2.Struct()
        decoded.MergeFromString(encode_struct(obj))
        expected = struct_pb2.Struct()
        expected.update(obj)
        assert decoded == expected
        assert decoded["n"].__class__ is expected["n"].__class__
        if isinstance(obj["n"], float):
            sign = struct.pack("<d", decoded["n"])[-1] & 0x80
            assert sign == (struct.pack("<d", obj["n"])[-1] & 0x80)
    assert encode_struct({"n": True}) != encode_struct({"n": 1})
    assert encode_struct({"n": -0.0}) != encode_struct({"n": 0})

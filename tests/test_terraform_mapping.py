"""The Terraform collector's parts without processes: reading state v4 and lock info, redacting
sensitive values, and turning two states into events. (The real terraform binary drives the
whole collector in tests/test_collector_terraform.py; these pin down the cases it does not
reach cheaply: deposed objects, data sources, paths Terraform may write, long addresses.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from clients import AuditClient, pb
from clients._values import struct_to_dict
from collectors.runtime import Delivery, HttpEndpoint, Runtime, Spool, Stats, Values
from collectors.runtime.limits import OMITTED_KEY
from collectors.terraform.backend import Spooler
from collectors.terraform.mapping import Mapper, MappingConfig, Write
from collectors.terraform.redact import FINGERPRINT_PREFIX, Redactor
from collectors.terraform.state import (
    StateError,
    TerraformState,
    address,
    parse_lock,
    parse_state,
)
from collectors.terraform.store import StateStore

SECRET = "hunter2-very-secret"
KEY = b"k" * 32


def get_attr(name: str) -> dict[str, Any]:
    return {"type": "get_attr", "value": name}


def index(key: int | str) -> dict[str, Any]:
    return {
        "type": "index",
        "value": {"value": key, "type": "number" if isinstance(key, int) else "string"},
    }


def instance(
    attributes: dict[str, Any], *sensitive: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        **extra,
        "schema_version": 0,
        "attributes": attributes,
        "sensitive_attributes": list(sensitive),
    }


def resource(
    type_: str, name: str, *instances: dict[str, Any], mode: str = "managed", **extra: Any
) -> dict[str, Any]:
    return {
        **extra,
        "mode": mode,
        "type": type_,
        "name": name,
        "provider": 'provider["terraform.io/builtin/terraform"]',
        "instances": list(instances),
    }


def state(*resources: dict[str, Any], serial: int = 1, **outputs: Any) -> dict[str, Any]:
    return {
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": serial,
        "lineage": "0d1f6a7e-2b1c-4b8e-9a55-6c1e2f3a4b5c",
        "outputs": outputs,
        "resources": list(resources),
        "check_results": None,
    }


def parsed(document: dict[str, Any]) -> TerraformState:
    return parse_state(json.dumps(document).encode())


def mapper(**config: Any) -> Mapper:
    return Mapper(MappingConfig(**config), Redactor(KEY))


WRITE = Write(workspace="prod", version=7, stored_at=1_767_225_600.25, who="alice@laptop")


def ops(events: list[pb.AuditEvent]) -> list[tuple[str, str]]:
    return [(pb.Operation.Name(e.operation)[10:], e.identifier) for e in events]


# -- state v4 ------------------------------------------------------------------------------


def test_addresses_are_the_ones_terraform_prints() -> None:
    document = state(
        resource("terraform_data", "plain", instance({"id": "1"})),
        resource("terraform_data", "counted", instance({"id": "2"}, index_key=0)),
        resource(
            "terraform_data",
            "keyed",
            instance({"id": "3"}, index_key='a "quoted" key'),
            module='module.net["eu"].module.sub',
        ),
        resource("terraform_remote_state", "shared", instance({"id": "4"}), mode="data"),
        resource(
            "terraform_data",
            "replacing",
            instance({"id": "new"}),
            instance({"id": "old"}, deposed="00000001"),
        ),
    )
    assert list(parsed(document).instances) == [
        "terraform_data.plain",
        "terraform_data.counted[0]",
        'module.net["eu"].module.sub.terraform_data.keyed["a \\"quoted\\" key"]',
        "data.terraform_remote_state.shared",
        "terraform_data.replacing",  # the deposed object is not an instance of its own
    ]
    assert parsed(document).instances["terraform_data.replacing"].attributes == {"id": "new"}
    assert address("", "managed", "t", "n", None) == "t.n"


def test_a_state_upgraded_from_terraform_0_11_has_flat_attributes() -> None:
    document = state(resource("aws_instance", "web", {"attributes_flat": {"id": "i-1"}}))
    assert parsed(document).instances["aws_instance.web"].attributes == {"id": "i-1"}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"version": 3}, "expected Terraform state version 4, got 3"),
        ({"version": True}, "expected Terraform state version 4, got True"),
        ({"serial": -1}, "serial must be a whole number of at least 0"),
        ({"lineage": 5}, "lineage must be a non-empty string"),
        ({"terraform_version": None}, "terraform_version must be a string"),
        ({"outputs": []}, "outputs must be an object"),
        ({"outputs": {"o": {"type": "string"}}}, "outputs.o must be an object with a value"),
        ({"outputs": {"o": {"value": 1, "sensitive": "yes"}}}, "outputs.o.sensitive"),
        ({"resources": [1]}, "resources[0] is not an object"),
        ({"resources": [{"mode": "other"}]}, "resources[0].mode must be managed or data"),
        ({"resources": [{"mode": "managed", "type": "", "name": "n"}]}, "resources[0].type"),
        (
            {"resources": [resource("t", "n", instance({}, index_key=[1]))]},
            "resources[0].instances[0].index_key must be a number or a string",
        ),
        (
            {"resources": [resource("t", "n", {"attributes": {}, "sensitive_attributes": {}})]},
            "resources[0].instances[0].sensitive_attributes must be a list",
        ),
    ],
)
def test_what_terraform_could_not_have_written_is_refused_by_name(
    change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(StateError) as refused:
        parsed({**state(), **change})
    assert problem in str(refused.value)


def test_lock_info_needs_an_id() -> None:
    body = (
        b'{"ID":"1f27","Operation":"OperationTypeApply","Info":"","Who":"a@b",'
        b'"Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}'
    )
    lock = parse_lock(body)
    assert (lock.id, lock.who, lock.operation, lock.raw) == (
        "1f27",
        "a@b",
        "OperationTypeApply",
        body,
    )
    for bad in (b"", b"[]", b'{"ID": 5}', b'{"ID": "  "}', b'{"ID": "' + b"x" * 600 + b'"}'):
        with pytest.raises(StateError):
            parse_lock(bad)


# -- redaction -----------------------------------------------------------------------------


def test_sensitive_paths_are_followed_through_lists_maps_and_dynamic_values() -> None:
    # terraform_data's input is of a dynamic type: stored wrapped in {"value", "type"}, and
    # the paths step through the wrapper.
    wrapped = {
        "value": ["a", SECRET, {"k": "inner-secret", "keep": "visible"}],
        "type": ["tuple", ["string", "string", ["object", {"k": "string", "keep": "string"}]]],
    }
    document = state(
        resource(
            "terraform_data",
            "l",
            instance(
                {"id": "1", "input": wrapped, "output": copy.deepcopy(wrapped)},
                [get_attr("input"), index(1)],
                [get_attr("input"), index(2), get_attr("k")],
            ),
        ),
        resource(
            "aws_db_instance",
            "db",
            instance(
                {"id": "db-1", "password": "pw-secret", "tags": {"a b": "tag-secret", "c": "d"}},
                [get_attr("password")],
                [get_attr("tags"), index("a b")],
            ),
        ),
    )
    events = mapper().events(None, parsed(document), WRITE)
    first, second = (struct_to_dict(e.after) for e in events)
    for attribute in ("input", "output"):  # output: terraform_data copied them unmarked
        values = first[attribute]["value"]
        assert values[0] == "a"
        assert values[1].startswith(FINGERPRINT_PREFIX)
        assert values[2]["k"].startswith(FINGERPRINT_PREFIX)
        assert values[2]["keep"] == "visible"
        assert first[attribute]["type"] == wrapped["type"]
    assert second["password"].startswith(FINGERPRINT_PREFIX)
    assert second["tags"] == {"a b": second["tags"]["a b"], "c": "d"}
    assert second["tags"]["a b"].startswith(FINGERPRINT_PREFIX)
    text = json.dumps([first, second])
    for secret in (SECRET, "inner-secret", "pw-secret", "tag-secret"):
        assert secret not in text


def test_a_whole_dynamic_value_keeps_its_type_and_an_unfollowable_path_hides_more() -> None:
    document = state(
        resource(
            "terraform_data",
            "whole",
            instance(
                {"id": "1", "input": {"value": SECRET, "type": "string"}},
                [get_attr("input")],
            ),
        ),
        resource(
            "x_thing",
            "odd",
            instance(
                {"id": "2", "blob": {"nested": ["one", "two"]}, "name": "fine"},
                [get_attr("blob"), index(9)],  # no such element: all of blob is hidden
            ),
        ),
        resource(
            "x_thing",
            "future",
            instance({"id": "3", "name": "n"}, [{"type": "something_new"}]),  # unreadable
        ),
    )
    whole, odd, future = (
        struct_to_dict(e.after) for e in mapper().events(None, parsed(document), WRITE)
    )
    assert whole["input"]["type"] == "string"
    assert whole["input"]["value"].startswith(FINGERPRINT_PREFIX)
    assert odd["blob"].startswith(FINGERPRINT_PREFIX)
    assert odd["name"] == "fine"
    assert all(v.startswith(FINGERPRINT_PREFIX) for v in future.values())


def test_a_sensitive_value_is_hidden_wherever_it_appears_and_in_sensitive_outputs() -> None:
    document = state(
        resource("t", "marked", instance({"id": "1", "password": SECRET}, [get_attr("password")])),
        resource("t", "echo", instance({"id": "2", "connection": f"{SECRET}", "other": "x"})),
        plain={"value": SECRET, "type": "string"},
        secret_output={"value": {"nested": "value"}, "type": "string", "sensitive": True},
        visible={"value": "hello", "type": "string"},
    )
    events = mapper().events(None, parsed(document), WRITE)
    assert SECRET not in str([e.SerializeToString() for e in events])
    echo = struct_to_dict(events[1].after)
    assert echo["connection"] == struct_to_dict(events[0].after)["password"]
    assert echo["other"] == "x"
    outputs = struct_to_dict(events[2].after)
    assert outputs["plain"].startswith(FINGERPRINT_PREFIX)
    assert outputs["secret_output"].startswith(FINGERPRINT_PREFIX)
    assert outputs["visible"] == "hello"


def test_fingerprints_are_stable_per_key_and_show_a_change() -> None:
    one, other = Redactor(KEY), Redactor(b"another key")
    assert one.fingerprint("x") == Redactor(KEY).fingerprint("x")
    assert one.fingerprint("x") != other.fingerprint("x")
    assert one.fingerprint("x") != one.fingerprint("y")
    before = state(resource("t", "r", instance({"id": "1", "pw": "old"}, [get_attr("pw")])))
    after = state(
        resource("t", "r", instance({"id": "1", "pw": "new"}, [get_attr("pw")])), serial=2
    )
    [event] = mapper().events(parsed(before), parsed(after), WRITE)
    assert event.operation == pb.OPERATION_UPDATE
    old, new = struct_to_dict(event.before)["pw"], struct_to_dict(event.after)["pw"]
    assert old != new
    assert old.startswith(FINGERPRINT_PREFIX)


# -- the mapping ---------------------------------------------------------------------------


def test_create_update_replace_delete_and_nothing_for_unchanged() -> None:
    before = state(
        resource("t", "same", instance({"id": "s", "v": 1})),
        resource("t", "changed", instance({"id": "c", "v": 1})),
        resource("t", "replaced", instance({"id": "r-old", "v": 1})),
        resource("t", "gone", instance({"id": "g"})),
        resource("t", "noid", instance({"v": 1})),
    )
    after = state(
        resource("t", "same", instance({"id": "s", "v": 1})),
        resource("t", "changed", instance({"id": "c", "v": 2})),
        resource("t", "replaced", instance({"id": "r-new", "v": 1})),
        resource("t", "noid", instance({"v": 2})),
        resource("t", "new", instance({"id": "n"})),
        serial=2,
    )
    events = mapper().events(parsed(before), parsed(after), WRITE)
    assert ops(events) == [
        ("DELETE", "t.gone"),
        ("UPDATE", "t.changed"),
        ("DELETE", "t.replaced"),
        ("CREATE", "t.replaced"),
        ("UPDATE", "t.noid"),  # without an id, a change is an update
        ("CREATE", "t.new"),
    ]
    lineage = after["lineage"]
    assert [e.idempotency_key for e in events] == [
        f"terraform:{lineage}:2:t.gone",
        f"terraform:{lineage}:2:t.changed",
        f"terraform:{lineage}:2:t.replaced:replaced",
        f"terraform:{lineage}:2:t.replaced",
        f"terraform:{lineage}:2:t.noid",
        f"terraform:{lineage}:2:t.new",
    ]
    assert [e.context.get("replaced") for e in events[2:4]] == ["true", "true"]
    assert mapper().events(parsed(after), parsed(after), WRITE) == []


def test_the_event_fields() -> None:
    write = Write(
        workspace="prod",
        version=3,
        stored_at=1_767_225_600.25,
        who="alice@laptop",
        operation="OperationTypeApply",
        lock_id="1f27",
        backend_user="terraform",
    )
    document = state(resource("aws_instance", "web", instance({"id": "i-1"}), module="module.app"))
    [event] = mapper(blueprints={"aws_instance": "ec2-instance"}).events(
        None, parsed(document), write
    )
    assert event.resource == pb.RESOURCE_TYPE_ENTITY
    assert event.blueprint == "ec2-instance"
    assert event.identifier == "module.app.aws_instance.web"
    assert event.origin == pb.ORIGIN_TERRAFORM
    assert (event.source.kind, event.source.id) == (pb.SOURCE_KIND_USER, "alice@laptop")
    assert (event.occurred_at.seconds, event.occurred_at.nanos) == (1_767_225_600, 250_000_000)
    assert dict(event.context) == {
        "workspace": "prod",
        "lineage": document["lineage"],
        "serial": "1",
        "terraform_version": "1.11.4",
        "operation": "OperationTypeApply",
        "lock_id": "1f27",
        "state_version": "3",
        "provider": 'provider["terraform.io/builtin/terraform"]',
        "backend_user": "terraform",
    }
    anonymous = Write(workspace="w", version=1, stored_at=1.0, backend_user="ci")
    [event] = mapper().events(None, parsed(document), anonymous)
    assert (event.source.kind, event.source.id) == (pb.SOURCE_KIND_USER, "ci")
    [event] = mapper().events(
        None, parsed(document), Write(workspace="w", version=1, stored_at=1.0)
    )
    assert (event.source.kind, event.source.id) == (pb.SOURCE_KIND_SYSTEM, "terraform")


def test_data_sources_are_recorded_unless_skipped() -> None:
    document = state(
        resource("t", "managed", instance({"id": "1"})),
        resource("t", "read", instance({"id": "2"}), mode="data"),
    )
    assert ops(mapper().events(None, parsed(document), WRITE)) == [
        ("CREATE", "t.managed"),
        ("CREATE", "data.t.read"),
    ]
    assert ops(mapper(data_sources=False).events(None, parsed(document), WRITE)) == [
        ("CREATE", "t.managed")
    ]


def test_outputs_are_one_event_for_the_workspace() -> None:
    empty = parsed(state())
    one = parsed(state(color={"value": "blue", "type": "string"}))
    two = parsed(state(color={"value": "green", "type": "string"}, serial=2))
    [created] = mapper().events(empty, one, WRITE)
    assert (created.operation, created.identifier, created.blueprint) == (
        pb.OPERATION_CREATE,
        "prod",
        "terraform.outputs",
    )
    assert created.idempotency_key.endswith(":1:outputs")
    [updated] = mapper().events(one, two, WRITE)
    assert updated.operation == pb.OPERATION_UPDATE
    assert struct_to_dict(updated.before) == {"color": "blue"}
    assert struct_to_dict(updated.after) == {"color": "green"}
    [deleted] = mapper().events(two, empty, WRITE)
    assert deleted.operation == pb.OPERATION_DELETE
    assert not deleted.HasField("after")


def test_keys_of_a_reused_serial_carry_the_version_and_long_ones_are_hashed() -> None:
    document = state(resource("t", "r", instance({"id": "1"})))
    reused = Write(workspace="prod", version=12, stored_at=1.0, reused_serial=True)
    [event] = mapper().events(None, parsed(document), reused)
    assert event.idempotency_key == f"terraform:{document['lineage']}:1~12:t.r"
    long_key = "k" * 600
    document = state(resource("t", "r", instance({"id": "1"}, index_key=long_key)))
    [event] = mapper().events(None, parsed(document), WRITE)
    assert event.identifier.startswith('t.r["kkk')
    assert len(event.idempotency_key) < 100
    assert event.idempotency_key.startswith("terraform:sha256:")
    [again] = mapper().events(None, parsed(document), WRITE)
    assert again.idempotency_key == event.idempotency_key


def test_attributes_nested_too_deep_cost_the_snapshot_not_the_event() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"d": deep}
    document = state(resource("t", "deep", instance({"id": "1", "tree": deep})))
    [event] = mapper().events(None, parsed(document), WRITE)
    assert event.operation == pb.OPERATION_CREATE
    assert not event.HasField("after")
    assert event.context[OMITTED_KEY] == "the attributes nest deeper than 32 levels"


def test_a_body_nesting_past_any_state_is_refused_not_crashed_on() -> None:
    with pytest.raises(StateError, match="it nests too deep"):
        parse_state(b"[" * 100_000 + b"]" * 100_000)
    for levels in (40, 900):  # past the service's limit; near what JSON parsing takes
        deep = parsed(state(deep=deep_output(levels)))
        [event] = mapper().events(None, deep, WRITE)
        assert not event.HasField("after")
        assert event.context[OMITTED_KEY] == "the outputs nest deeper than 32 levels"


def deep_output(levels: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return {"value": value, "type": "dynamic"}


# -- spooling the events of stored versions (a real spool and state database, in process) ---


def test_events_wait_in_the_state_database_for_room_and_are_made_again_after_a_restart(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=2)
    store = StateStore(tmp_path / "state.db")
    stats = Stats()
    runtime = Runtime(
        "terraform",
        Values({"service": "127.0.0.1:1"}),
        spool,
        HttpEndpoint("127.0.0.1:0"),
        stats,
        Delivery(spool, lambda: AuditClient("127.0.0.1:1"), stats),  # never started
    )
    spool.add([pb.AuditEvent(idempotency_key="someone-else", identifier="x")])
    spooler = Spooler(runtime, store, mapper())
    body = json.dumps(
        state(
            resource("t", "a", instance({"id": "1"})),
            resource("t", "b", instance({"id": "2"})),
        )
    ).encode()
    with store.transaction("prod") as tx:
        version = tx.add_version(
            previous=None,
            lineage="L",
            serial=1,
            terraform_version="1.11.4",
            sha256="x",
            body=body,
            who="alice@laptop",
            operation="OperationTypeApply",
            lock_id="1f27",
            backend_user="",
            reused_serial=False,
        )
    made = spooler.events(version)
    spooler.offer(version.id, made)
    assert spooler.flush() is False  # 1 + 2 events: over the cap of 2
    assert spooler.counts()["versions_not_spooled"] == 1
    [waiting] = spool.head(10)
    spool.settle(delivered=[waiting.seq])  # delivery made room
    assert spooler.flush() is True
    assert [e.key for e in spool.head(10)] == [e.idempotency_key for e in made]
    assert stats.get("terraform.recovered_versions") == 0  # the events made at first were used
    assert spooler.counts()["versions_not_spooled"] == 0

    # Delivered; then a restart finds the mark gone (a crash between the two commits): the
    # same events, made again from the stored states, with the same keys (the service answers
    # duplicate for them).
    spool.settle(delivered=[e.seq for e in spool.head(10)])
    spool.set_state("terraform", "spooled-through", "0")
    again = Spooler(runtime, store, mapper())
    assert again.flush() is True
    assert stats.get("terraform.recovered_versions") == 1
    assert [e.key for e in spool.head(10)] == [e.idempotency_key for e in made]
    store.close()
    spool.close()

"""``audit-collector terraform`` end to end: the real ``terraform`` binary (see
tests/terraform_helpers.py) using the collector as its ``http`` state backend on loopback, a
real collector process, a real audit-service (with a tokens file: the collector records with a
recorder token limited to TERRAFORM), and what the service stored, read back over gRPC. The
configurations need no provider download: ``terraform_data`` resources, a local module,
outputs, sensitive values, count and for_each. Direct HTTP requests cover what Terraform
never sends (malformed bodies, wrong credentials, stale lock IDs)."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from clients import pb
from clients._values import struct_to_dict, value_to_python
from collectors import terraform
from collectors.runtime.app import COMMON_OPTIONS
from collectors.runtime.options import CONFIG_OPTION, Option
from collectors.terraform.mapping import CONTEXT_KEYS
from tests.collector_helpers import (
    CollectorProcess,
    HttpAnswer,
    free_port,
    run_collector,
    spawn_collector,
    wait_until,
)
from tests.helpers import REPO, TestServer, Token, list_all, start_server, write_tokens_file
from tests.terraform_helpers import Terraform, http_backend, terraform_binary
from tests.test_collector_cli import option_row

RECORDER = Token("terraform-collector", "recorder", "rec-" + secrets.token_hex(16), ("TERRAFORM",))
ADMIN = Token("admin@example.com", "admin", "adm-" + secrets.token_hex(16))
TF_USER = "terraform"
TF_PASSWORD = "pw-" + secrets.token_hex(12)
BEARER = "tok-" + secrets.token_hex(16)
SECRET = "s3cr3t-" + secrets.token_hex(8)  # a sensitive value in the configurations
WHO = f"{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}"  # Terraform's lock Who


@dataclass
class Rig:
    """A service (restartable at the same address), a collector, and terraform directories."""

    tmp: Path
    port: int = field(default_factory=free_port)
    server: TestServer | None = None
    collector: CollectorProcess | None = None

    def __post_init__(self) -> None:
        self.tokens = write_tokens_file(self.tmp / "tokens.toml", [RECORDER, ADMIN])
        self.recorder_token = self.tmp / "recorder.token"
        self.recorder_token.write_text(RECORDER.value + "\n")
        self.basic_auth = self.tmp / "terraform.credentials"
        self.basic_auth.write_text(f"# user:password\n{TF_USER}:{TF_PASSWORD}\n")
        self.bearer = self.tmp / "bearer.token"
        self.bearer.write_text(BEARER + "\n")
        self.spool = self.tmp / "spool.db"
        self.state_db = self.tmp / "state.db"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_service(self) -> TestServer:
        assert self.server is None
        self.server = start_server(
            self.tmp / "audit.db", dev=False, tokens=str(self.tokens), listen=self.endpoint
        )
        return self.server

    def stop_service(self) -> None:
        assert self.server is not None
        self.server.close()
        self.server = None

    def start_collector(self, *extra: str) -> CollectorProcess:
        self.collector = spawn_collector(
            "terraform",
            "--service",
            self.endpoint,
            "--token-file",
            str(self.recorder_token),
            "--spool",
            str(self.spool),
            "--state-db",
            str(self.state_db),
            "--listen",
            "127.0.0.1:0",
            "--basic-auth-file",
            str(self.basic_auth),
            "--bearer-token-file",
            str(self.bearer),
            "--max-backoff",
            "0.5",
            "--linger-ms",
            "20",
            *extra,
            log_path=self.tmp / "collector.log",
        )
        return self.collector

    @property
    def url(self) -> str:
        assert self.collector is not None
        return self.collector.url

    def terraform(self, name: str, workspace: str, config: str, **backend: Any) -> Terraform:
        "A terraform directory using the collector's backend for ``workspace``."
        tf = Terraform(self.tmp / name)
        backend.setdefault("username", TF_USER)
        backend.setdefault("password", TF_PASSWORD)
        tf.write(http_backend(self.url, workspace, **backend) + config)
        return tf

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        auth: str | None = "basic",
        headers: dict[str, str] | None = None,
    ) -> HttpAnswer:
        assert self.collector is not None
        sent = dict(headers or {})
        if auth == "basic":
            sent["Authorization"] = (
                "Basic " + base64.b64encode(f"{TF_USER}:{TF_PASSWORD}".encode()).decode()
            )
        elif auth == "bearer":
            sent["Authorization"] = f"Bearer {BEARER}"
        return self.collector.request(method, path, body, sent)

    def stats(self) -> dict[str, Any]:
        assert self.collector is not None
        return self.collector.stats()

    def stored(self) -> list[pb.AuditEvent]:
        "Every TERRAFORM event, in the order the service stored them."
        assert self.server is not None
        request = pb.ListRequest(
            filters=[pb.Filter(field="origin", op=pb.FILTER_OP_EQUALS, values=["TERRAFORM"])],
            order_by="recorded_at asc",
            page_size=1000,
            include_snapshots=True,
        )
        return list(list_all(self.server.stub, request, ADMIN.metadata))

    def events(self, count: int, timeout: float = 20) -> list[pb.AuditEvent]:
        "Wait until the service holds ``count`` TERRAFORM events (fails if it holds more)."

        def enough() -> list[pb.AuditEvent] | None:
            events = self.stored()
            assert len(events) <= count, f"{len(events)} events stored; expected {count}"
            return events if len(events) == count else None

        return wait_until(enough, timeout=timeout, interval=0.05)

    def diff(self, event_id: str) -> pb.GetDiffResponse:
        assert self.server is not None
        response: pb.GetDiffResponse = self.server.stub.GetDiff(
            pb.GetDiffRequest(id=event_id), metadata=ADMIN.metadata
        )
        return response

    def close(self) -> None:
        if self.collector is not None and self.collector.process.poll() is None:
            self.collector.kill()
        if self.server is not None:
            self.stop_service()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    terraform_binary()  # fail first, and clearly, without terraform
    setup = Rig(tmp_path)
    try:
        yield setup
    finally:
        setup.close()


def snapshot(struct: Any) -> dict[str, Any]:
    return struct_to_dict(struct)


def patched(diff: pb.GetDiffResponse) -> dict[str, Any]:
    "``before`` with the diff's RFC 6902 patch applied."
    operations = []
    for op in diff.patch:
        item: dict[str, Any] = {"op": op.op, "path": op.path}
        if op.HasField("value"):
            item["value"] = value_to_python(op.value)
        operations.append(item)
    result: dict[str, Any] = jsonpatch.apply_patch(snapshot(diff.before), operations)
    return result


def said(result: subprocess.CompletedProcess[str]) -> str:
    "What terraform printed, on one line (it wraps long messages)."
    return " ".join((result.stdout + result.stderr).split())


def summary(events: list[pb.AuditEvent]) -> list[tuple[str, str]]:
    return [
        (pb.Operation.Name(e.operation).removeprefix("OPERATION_"), e.identifier) for e in events
    ]


LIFECYCLE = """
variable "color" {
  type    = string
  default = "blue"
}
variable "replicas" {
  type    = number
  default = 2
}
variable "token" {
  type      = string
  default   = "@SECRET@"
  sensitive = true
}
resource "terraform_data" "app" {
  input = { color = var.color }
}
resource "terraform_data" "worker" {
  count = var.replicas
  input = { index = count.index, token = var.token }
}
module "net" {
  source = "./net"
}
output "color" {
  value = terraform_data.app.output.color
}
output "token" {
  value     = var.token
  sensitive = true
}
""".replace("@SECRET@", SECRET)

NET_MODULE = """
resource "terraform_data" "subnet" {
  for_each = toset(["a", "b"])
  input    = "10.0.${each.key == "a" ? 1 : 2}.0/24"
}
"""

APP = "terraform_data.app"
WORKERS = ["terraform_data.worker[0]", "terraform_data.worker[1]"]
SUBNETS = ['module.net.terraform_data.subnet["a"]', 'module.net.terraform_data.subnet["b"]']


def test_init_apply_update_replace_remove_destroy_each_recorded(rig: Rig) -> None:
    rig.start_service()
    rig.start_collector()
    tf = rig.terraform("prod", "prod", LIFECYCLE)
    tf.write(NET_MODULE, "net/main.tf")
    tf.init()
    version = tf.binary.version

    # apply: everything is created
    tf.apply()
    created = rig.events(6)
    assert summary(created) == [
        ("CREATE", APP),
        *[("CREATE", w) for w in WORKERS],
        *[("CREATE", s) for s in SUBNETS],
        ("CREATE", "prod"),
    ]
    state = rig.call("GET", "/state/prod").json()
    assert state["serial"] == 1
    for event in created:
        assert event.resource == pb.RESOURCE_TYPE_ENTITY
        assert event.origin == pb.ORIGIN_TERRAFORM
        assert event.status == pb.STATUS_SUCCESS
        assert (event.source.kind, event.source.id, event.source.name) == (
            pb.SOURCE_KIND_USER,
            WHO,
            WHO,
        )
        assert event.recorded_by == RECORDER.principal_id
        context = dict(event.context)
        assert context["workspace"] == "prod"
        assert context["lineage"] == state["lineage"]
        assert context["serial"] == "1"
        assert context["terraform_version"] == version
        assert context["operation"] == "OperationTypeApply"
        assert context["backend_user"] == TF_USER
        address = "outputs" if event.blueprint == "terraform.outputs" else event.identifier
        assert event.idempotency_key == f"terraform:{state['lineage']}:1:{address}"
    app, worker0 = created[0], created[1]
    assert app.blueprint == "terraform.terraform_data"
    assert created[-1].blueprint == "terraform.outputs"
    assert not app.HasField("before")
    assert patched(rig.diff(app.id)) == snapshot(app.after)  # from nothing to the object
    after = snapshot(app.after)
    assert after["input"]["value"] == {"color": "blue"}
    assert after["id"] == state["resources"][0]["instances"][0]["attributes"]["id"]
    # The token is sensitive: fingerprinted where Terraform marked it (input) and where
    # terraform_data copied it unmarked (output).
    worker = snapshot(worker0.after)
    assert worker["input"]["value"]["token"].startswith("hmac-sha256:")
    assert worker["output"]["value"]["token"] == worker["input"]["value"]["token"]
    assert worker["input"]["value"]["index"] == 0
    outputs = snapshot(created[-1].after)
    assert outputs["color"] == "blue"
    assert outputs["token"].startswith("hmac-sha256:")

    # change an input: an in-place update, and the outputs changed
    tf.apply("-var", "color=green")
    updated = rig.events(8)[6:]
    assert summary(updated) == [("UPDATE", APP), ("UPDATE", "prod")]
    diff = rig.diff(updated[0].id)
    assert diff.available
    assert snapshot(diff.before)["input"]["value"] == {"color": "blue"}
    assert patched(diff)["input"]["value"] == {"color": "green"}
    assert patched(diff) == snapshot(diff.after)
    assert snapshot(rig.diff(updated[1].id).after)["color"] == "green"
    assert updated[0].context["serial"] == "2"

    # -replace: the old object deleted, then a new one (a new id) created
    tf.apply("-var", "color=green", f"-replace={APP}")
    replaced = rig.events(10)[8:]
    assert summary(replaced) == [("DELETE", APP), ("CREATE", APP)]
    old_id = snapshot(replaced[0].before)["id"]
    new_id = snapshot(replaced[1].after)["id"]
    assert old_id != new_id
    assert not replaced[0].HasField("after")
    assert [e.context["replaced"] for e in replaced] == ["true", "true"]
    assert replaced[0].idempotency_key.endswith(":replaced")
    delete_diff = rig.diff(replaced[0].id)
    assert patched(delete_diff) == {}  # the patch empties the object

    # remove an instance: deleted
    tf.apply("-var", "color=green", "-var", "replicas=1")
    removed = rig.events(11)[10:]
    assert summary(removed) == [("DELETE", WORKERS[1])]
    assert snapshot(removed[0].before)["input"]["value"]["index"] == 1
    assert patched(rig.diff(removed[0].id)) == {}

    # destroy: everything left is deleted, and the outputs are gone
    tf.destroy()
    destroyed = rig.events(16)[11:]
    assert summary(destroyed) == [
        ("DELETE", APP),
        ("DELETE", WORKERS[0]),
        *[("DELETE", s) for s in SUBNETS],
        ("DELETE", "prod"),
    ]
    assert destroyed[0].context["operation"] == "OperationTypeApply"
    outputs_gone = rig.diff(destroyed[-1].id)
    assert snapshot(outputs_gone.before)["color"] == "green"
    assert patched(outputs_gone) == {}

    # every version was kept; the last is the current state
    listing = rig.call("GET", "/state/prod/versions").json()["versions"]
    serials = [v["serial"] for v in listing]
    assert serials == sorted(serials)
    assert len(serials) == len(set(serials)) >= 5
    assert [v["current"] for v in listing] == [False] * (len(listing) - 1) + [True]
    first = rig.call("GET", f"/state/prod?version={listing[0]['version']}")
    assert first.status == 200
    assert json.loads(first.body)["serial"] == 1
    assert rig.call("GET", "/state/prod").json()["resources"] == []

    # the secret is in the states (Terraform needs it back) and nowhere else
    assert SECRET.encode() in first.body
    for event in rig.stored():
        assert SECRET.encode() not in event.SerializeToString()
        assert SECRET.encode() not in rig.diff(event.id).SerializeToString()
    assert rig.collector is not None
    assert SECRET not in rig.collector.logs()
    for path in rig.tmp.glob("spool.db*"):
        assert SECRET.encode() not in path.read_bytes()
    stats = rig.stats()["terraform"]
    assert stats["events_spooled"] == 16
    assert stats["backend"]["versions"] == len(listing)
    assert stats["backend"]["locked"] == 0


SLOW = """
resource "terraform_data" "slow" {
  input = "first"
  provisioner "local-exec" {
    command = "i=0; while [ ! -e gate ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done"
  }
}
"""

OTHER = """
resource "terraform_data" "other" {
  input = "second"
}
"""


def test_a_second_apply_fails_on_the_lock_records_nothing_and_force_unlock_works(
    rig: Rig,
) -> None:
    rig.start_service()
    rig.start_collector()
    first = rig.terraform("first", "shared", SLOW)
    first.init()
    second = rig.terraform("second", "shared", OTHER)
    second.init()
    running = first.popen("apply", "-auto-approve", "-input=false")
    try:
        held = wait_until(
            lambda: (a := rig.call("GET", "/state/shared/lock")).status == 200 and a.json()
        )
        assert held["Who"] == WHO
        assert held["Operation"] == "OperationTypeApply"

        failed = second.apply("-lock-timeout=0s", check=False)
        assert failed.returncode == 1
        output = said(failed)
        assert "Error acquiring the state lock" in output
        assert f"HTTP remote state already locked: ID={held['ID']}" in output

        # The first terraform dies while holding the lock: the lock stays.
        os.killpg(running.pid, signal.SIGKILL)
        running.wait(timeout=10)
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
            running.wait(timeout=10)
        assert running.stdout is not None
        running.stdout.close()
    assert rig.call("GET", "/state/shared/lock").json()["ID"] == held["ID"]
    assert rig.call("GET", "/state/shared").status == 404  # nothing was written
    stats = rig.stats()["terraform"]
    assert stats.get("state_writes", 0) == 0
    assert stats["lock_conflicts"] == 1
    assert rig.stored() == []

    unlocked = second.run("force-unlock", "-force", held["ID"])
    assert "Terraform state has been successfully unlocked" in said(unlocked)
    assert rig.call("GET", "/state/shared/lock").status == 404
    second.apply()
    [event] = rig.events(1)
    assert summary([event]) == [("CREATE", "terraform_data.other")]
    assert event.context["lock_id"] != held["ID"]
    assert rig.stats()["terraform"]["force_unlocks"] == 1

    # The dead run's lock ID no longer lets anyone write.
    state = rig.call("GET", "/state/shared").body
    stale = rig.call(
        "POST", f"/state/shared?ID={held['ID']}", state.replace(b'"serial": 1', b'"serial": 9')
    )
    assert stale.status == 409
    assert "not held any more" in stale.json()["error"]
    assert rig.call("GET", "/state/shared").body == state


GITLAB_STYLE = """
resource "terraform_data" "thing" {
  input = "x"
}
"""


@pytest.mark.parametrize(
    ("lock_method", "unlock_method", "update_method"),
    [("POST", "DELETE", "POST"), ("PUT", "DELETE", "PUT"), ("LOCK", "UNLOCK", "PUT")],
)
def test_other_lock_and_update_methods_through_tf_http_variables(
    rig: Rig, lock_method: str, unlock_method: str, update_method: str
) -> None:
    rig.start_service()
    rig.start_collector()
    workspace = f"ws-{lock_method.lower()}"
    tf = Terraform(rig.tmp / workspace)
    tf.write('terraform {\n  backend "http" {}\n}\n' + GITLAB_STYLE)
    address = f"{rig.url}/state/{workspace}"
    tf.env.update(
        TF_HTTP_ADDRESS=address,
        TF_HTTP_UPDATE_METHOD=update_method,
        TF_HTTP_LOCK_ADDRESS=f"{address}/lock",
        TF_HTTP_LOCK_METHOD=lock_method,
        TF_HTTP_UNLOCK_ADDRESS=f"{address}/lock",
        TF_HTTP_UNLOCK_METHOD=unlock_method,
        TF_HTTP_USERNAME=TF_USER,
        TF_HTTP_PASSWORD=TF_PASSWORD,
    )
    tf.init()
    # Someone else holds the lock: terraform is refused with the holder's ID.
    other = json.dumps({"ID": "held-elsewhere", "Who": "bob@ci", "Operation": "x"}).encode()
    assert rig.call(lock_method, f"/state/{workspace}/lock", other).status == 200
    refused = tf.apply("-lock-timeout=0s", check=False)
    assert refused.returncode == 1
    assert "HTTP remote state already locked: ID=held-elsewhere" in said(refused)
    assert rig.call(unlock_method, f"/state/{workspace}/lock", other).status == 200

    tf.apply()
    [event] = rig.events(1)
    assert event.identifier == "terraform_data.thing"
    assert event.source.id == WHO
    stats = rig.stats()["terraform"]
    assert (stats["locks"], stats["unlocks"], stats["state_writes"]) == (2, 2, 1)
    assert rig.call("GET", f"/state/{workspace}/lock").status == 404


def test_wrong_credentials_get_401(rig: Rig) -> None:
    rig.start_service()
    rig.start_collector()
    tf = rig.terraform("wrong", "prod", GITLAB_STYLE, password="not-the-password")
    refused = tf.run("init", "-input=false", check=False)
    assert refused.returncode == 1
    assert "HTTP remote state endpoint requires auth" in said(refused)
    for auth in (None, "Basic " + base64.b64encode(b"terraform:nope").decode(), "Bearer nope"):
        headers = {"Authorization": auth} if auth else {}
        for method, path in (("GET", "/state/prod"), ("LOCK", "/state/prod")):
            answer = rig.call(method, path, b"{}", auth=None, headers=headers)
            assert answer.status == 401, (auth, method)
            assert answer.json() == {"error": "not authenticated"}
    assert rig.call("GET", "/state/prod", auth="bearer").status == 404
    assert rig.call("GET", "/state/prod", auth="basic").status == 404
    assert rig.call("GET", "/healthz", auth=None).status == 200  # probes carry no credentials


def corrupt_bodies(good: bytes) -> list[tuple[bytes, str]]:
    state = json.loads(good)

    def variant(**changes: Any) -> bytes:
        return json.dumps({**state, **changes}).encode()

    attributes_list = json.loads(good)
    attributes_list["resources"][0]["instances"][0]["attributes"] = []
    return [
        (b"this is not json", "the body is not Terraform state JSON"),
        (b'{"version": "\xff"}', "not UTF-8"),
        (good[: len(good) // 2], "the body is not Terraform state JSON"),
        (b"[1, 2]", "expected a Terraform state object, got JSON list"),
        (variant(version=3), "expected Terraform state version 4, got 3"),
        (variant(serial="7"), "serial must be a whole number"),
        (variant(lineage=""), "lineage must be a non-empty string"),
        (variant(resources={"a": 1}), "resources must be a list"),
        (json.dumps(attributes_list).encode(), "resources[0].instances[0].attributes"),
        (b'{"ID": "abc", "Operation": "OperationTypeApply"}', "this is lock info, not a state"),
        (b"[" * 5_000 + b"]" * 5_000, "it nests too deep"),
    ]


def test_a_corrupt_state_gets_400_and_changes_nothing(rig: Rig) -> None:
    rig.start_service()
    rig.start_collector("--max-state-bytes", "20000")
    tf = rig.terraform("prod", "prod", GITLAB_STYLE)
    tf.init()
    tf.apply()
    rig.events(1)
    good = rig.call("GET", "/state/prod").body
    versions = rig.call("GET", "/state/prod/versions").json()
    for body, problem in corrupt_bodies(good):
        answer = rig.call("POST", "/state/prod", body)
        assert answer.status == 400, (body[:40], answer)
        assert problem in answer.json()["error"], answer.json()
        assert "the state is unchanged" in answer.json()["error"]
    too_big = rig.call("POST", "/state/prod", b" " * 20001)
    assert too_big.status == 413
    assert rig.call("GET", "/state/prod").body == good
    assert rig.call("GET", "/state/prod/versions").json() == versions
    assert rig.stats()["terraform"]["states_refused"] == len(corrupt_bodies(good))
    assert tf.run("plan", "-detailed-exitcode").returncode == 0
    assert len(rig.stored()) == 1
    assert rig.call("GET", "/healthz", auth=None).status == 200


def lock_body(lock_id: str, who: str = "alice@laptop") -> bytes:
    return json.dumps(
        {
            "ID": lock_id,
            "Operation": "OperationTypeApply",
            "Info": "",
            "Who": who,
            "Version": "1.11.4",
            "Created": "2026-01-31T12:00:00.123456789Z",
            "Path": "",
        }
    ).encode()


def state_body(serial: int, lineage: str = "5d4c1b8e-0000-4000-8000-000000000001") -> bytes:
    return json.dumps(
        {
            "version": 4,
            "terraform_version": "1.11.4",
            "serial": serial,
            "lineage": lineage,
            "outputs": {"region": {"value": f"eu-{serial}", "type": "string"}},
            "resources": [],
            "check_results": None,
        },
        indent=2,
    ).encode()


def test_lock_semantics_over_http(rig: Rig) -> None:
    rig.start_service()
    rig.start_collector()
    ws = "/state/locks"
    assert rig.call("LOCK", ws, lock_body("one")).status == 200
    assert rig.call("LOCK", ws, lock_body("one")).status == 200  # the same ID again: a retry
    taken = rig.call("LOCK", ws, lock_body("two", "bob@ci"))
    assert taken.status == 423
    assert taken.body == lock_body("one")  # the holder's lock info, as it sent it
    assert rig.call("LOCK", ws, b"{}").status == 400
    assert "needs an ID" in rig.call("LOCK", ws, b'{"ID": ""}').json()["error"]

    garbled = rig.call("POST", f"{ws}?ID=one", state_body(1), headers={"Content-MD5": "AAAA"})
    assert garbled.status == 400
    assert "Content-MD5" in garbled.json()["error"]
    assert rig.call("POST", ws, state_body(1)).status == 423  # no ID
    assert rig.call("POST", f"{ws}?ID=two", state_body(1)).status == 423  # another's ID
    written = rig.call("POST", f"{ws}?ID=one", state_body(1))
    assert written.status == 200
    assert written.json()["events"] == 1
    assert rig.call("DELETE", ws).status == 423  # locked by another
    again = rig.call("POST", f"{ws}?ID=one", state_body(1))  # Terraform's retry: no new version
    assert again.json() == {"version": written.json()["version"], "unchanged": True}

    assert rig.call("UNLOCK", ws, lock_body("two")).status == 423
    assert rig.call("GET", f"{ws}/lock").json()["ID"] == "one"
    assert rig.call("UNLOCK", ws, lock_body("one")).status == 200
    assert rig.call("UNLOCK", ws, lock_body("one")).json() == {
        "unlocked": False,
        "reason": "not locked",
    }
    assert rig.call("POST", f"{ws}?ID=one", state_body(2)).status == 409  # a stale holder
    assert rig.call("POST", ws, state_body(2)).status == 200  # locking disabled: accepted

    # delete: no state any more, every version kept
    assert rig.call("DELETE", ws).status == 200
    assert rig.call("GET", ws).status == 404
    assert rig.call("DELETE", ws).status == 404
    versions = rig.call("GET", f"{ws}/versions").json()["versions"]
    assert [v["serial"] for v in versions] == [1, 2]
    assert not any(v["current"] for v in versions)
    # the same lineage and serial pushed again after the delete: its own events
    assert rig.call("POST", ws, state_body(2)).status == 200
    events = rig.events(3)
    assert summary(events) == [("CREATE", "locks"), ("UPDATE", "locks"), ("CREATE", "locks")]
    assert len({e.idempotency_key for e in events}) == 3
    assert events[2].idempotency_key.endswith(f":2~{versions[-1]['version'] + 1}:outputs")
    assert events[0].source.id == "alice@laptop"
    assert events[1].source.id == TF_USER  # no lock: the basic-auth user

    # paths and methods
    assert rig.call("GET", "/state/bad%20name").status == 400
    assert rig.call("GET", "/state/../etc").status == 400
    assert rig.call("GET", "/state/ws/nothing").status == 404
    assert rig.call("PATCH", ws, b"{}").status == 405
    assert rig.call("GET", f"{ws}?version=x").status == 400
    assert rig.call("GET", f"{ws}?version=999").status == 404


def test_a_crash_or_an_outage_loses_no_version_and_duplicates_no_event(rig: Rig) -> None:
    listen = ("--listen", f"127.0.0.1:{free_port()}")  # the same address after each restart
    collector = rig.start_collector(*listen)  # the service is down
    tf = rig.terraform("prod", "prod", LIFECYCLE.replace("default = 2", "default = 1"))
    tf.write(NET_MODULE, "net/main.tf")
    tf.init()
    tf.apply()  # answered once the version and its events are durable
    tf.apply("-var", "color=red")
    wait_until(lambda: collector.stats()["spooled"] == 7)
    collector.kill()
    rig.start_service()
    collector = rig.start_collector(*listen)
    events = rig.events(7)
    assert summary(events)[-2:] == [("UPDATE", APP), ("UPDATE", "prod")]
    assert len({e.idempotency_key for e in events}) == 7
    collector.stop()

    # A crash between storing a version and spooling its events: the events are made again
    # from the stored versions at the next start, with the same keys. (The crash is made by
    # taking the spool's mark of the last version spooled back to none while the collector
    # is down.)
    with sqlite3.connect(rig.spool) as db:
        db.execute("DELETE FROM state WHERE scope = 'terraform' AND key = 'spooled-through'")
    collector = rig.start_collector(*listen)
    stats = wait_until(lambda: (s := collector.stats())["delivered"] == 7 and s)
    assert stats["duplicates"] == 7
    assert stats["terraform"]["recovered_versions"] == 2
    assert len(rig.stored()) == 7
    assert tf.run("plan", "-detailed-exitcode", "-var", "color=red").returncode == 0


def test_a_full_spool_answers_503_and_terraform_keeps_its_state(rig: Rig) -> None:
    collector = rig.start_collector("--spool-max-events", "2")  # the service is down
    tf = rig.terraform("prod", "prod", OTHER)
    tf.env["TF_HTTP_RETRY_MAX"] = "0"
    tf.init()
    tf.apply()  # into an empty spool: always accepted
    failed = tf.apply("-replace=terraform_data.other", check=False)
    assert failed.returncode == 1
    # A 503 is one Terraform's HTTP client retries (after Retry-After); here it may not.
    assert "Failed to upload state" in said(failed)
    assert "giving up after 1 attempt(s)" in said(failed)
    assert (tf.workdir / "errored.tfstate").exists()
    assert json.loads(rig.call("GET", "/state/prod").body)["serial"] == 1
    assert collector.stats()["rejected_full"] == 2
    rig.start_service()
    rig.events(1)
    wait_until(lambda: collector.stats()["spooled"] == 0)
    tf.run("state", "push", "errored.tfstate")
    assert summary(rig.events(3)[1:]) == [
        ("DELETE", "terraform_data.other"),
        ("CREATE", "terraform_data.other"),
    ]


def test_without_credentials_configured_it_listens_on_loopback_only(tmp_path: Path) -> None:
    refused = run_collector(
        "terraform",
        "--listen",
        "0.0.0.0:0",
        "--spool",
        str(tmp_path / "spool.db"),
        "--state-db",
        str(tmp_path / "state.db"),
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in refused.stderr
    (tmp_path / "junk.db").write_text("not a database " * 100)
    junk = run_collector(
        "terraform",
        "--listen",
        "127.0.0.1:0",
        "--spool",
        str(tmp_path / "spool.db"),
        "--state-db",
        str(tmp_path / "junk.db"),
    )
    assert junk.returncode == 2
    assert "cannot be used as a Terraform state database" in junk.stderr
    collector = spawn_collector(
        "terraform",
        "--listen",
        "127.0.0.1:0",
        "--spool",
        str(tmp_path / "spool.db"),
        "--state-db",
        str(tmp_path / "state.db"),
        log_path=tmp_path / "collector.log",
    )
    try:
        assert "listening on loopback only" in collector.logs()
        assert collector.request("GET", "/state/open").status == 404
    finally:
        collector.stop()


# -- the docs, kept honest ------------------------------------------------------------------

DOC = (REPO / "docs" / "terraform-collector.md").read_text()


def doc_blocks(language: str) -> list[str]:
    "The doc's fenced blocks in ``language`` ('' for those without one)."
    blocks: list[str] = []
    opened: str | None = None  # the language of the block being read
    lines: list[str] = []
    for line in DOC.splitlines(keepends=True):
        if not line.startswith("```"):
            lines.append(line)
        elif opened is None:
            opened, lines = line[3:].strip(), []
        else:
            if opened == language:
                blocks.append("".join(lines))
            opened = None
    return blocks


@pytest.mark.parametrize("option", terraform.OPTIONS, ids=lambda o: o.name)
def test_the_doc_has_a_row_for_every_option(option: Option) -> None:
    row = option_row(option)
    assert row in DOC, f"docs/terraform-collector.md needs this row:\n{row}"


def test_the_doc_has_no_stale_option_rows_and_explains_every_counter_and_context_key() -> None:
    documented = set(re.findall(r"^\| `(--[a-z-]+)` \| `AUDIT_COLLECTOR_", DOC, re.MULTILINE))
    assert documented == {o.flag for o in terraform.OPTIONS}
    for name in terraform.COUNTERS:
        assert f"| `{name}` |" in DOC, name
    for key in CONTEXT_KEYS:
        assert f"| `{key}` |" in DOC, key


def test_help_lists_every_option_and_its_environment_variable() -> None:
    result = run_collector("terraform", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in (CONFIG_OPTION, *COMMON_OPTIONS, *terraform.OPTIONS):
        assert option.flag in text
        assert option.env in text


def test_the_docs_backend_block_and_tf_http_variables_work(rig: Rig) -> None:
    rig.start_service()
    rig.start_collector()
    [block] = [b for b in doc_blocks("hcl") if 'backend "http"' in b]
    documented = rig.terraform("documented", "unused", "")
    documented.write(block.replace("http://127.0.0.1:8650", rig.url) + GITLAB_STYLE)
    documented.env.update(TF_HTTP_USERNAME=TF_USER, TF_HTTP_PASSWORD=TF_PASSWORD)
    documented.init()
    documented.apply()
    [event] = rig.events(1)
    assert (event.identifier, event.context["workspace"]) == ("terraform_data.thing", "prod")

    [exports] = [b for b in doc_blocks("") if "TF_HTTP_LOCK_METHOD" in b]
    variables = Terraform(rig.tmp / "variables")
    variables.write('terraform {\n  backend "http" {}\n}\n' + GITLAB_STYLE)
    for line in exports.splitlines():
        if line.startswith("export "):
            for pair in line.removeprefix("export ").split():
                name, _, value = pair.partition("=")
                variables.env[name] = value.replace("http://127.0.0.1:8650", rig.url)
    assert variables.env["TF_HTTP_LOCK_ADDRESS"] == f"{rig.url}/state/prod/lock"
    variables.env.update(TF_HTTP_USERNAME=TF_USER, TF_HTTP_PASSWORD=TF_PASSWORD)
    variables.init()
    plan = variables.run("plan", "-detailed-exitcode")  # the same state, through /lock
    assert plan.returncode == 0
    assert rig.stats()["terraform"]["locks"] == 2

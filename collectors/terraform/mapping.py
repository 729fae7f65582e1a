"""One accepted state write -> audit events: what changed between the previous state and this
one. docs/terraform-collector.md has the table; in short:

- per resource instance (module, mode, type, name, index key: its address): added CREATE,
  changed attributes UPDATE, removed DELETE, a new ``id`` (replaced) DELETE then CREATE;
- ``before``/``after`` the instance's attributes, sensitive values fingerprinted
  (``collectors.terraform.redact``);
- output changes as one event for the workspace (blueprint ``terraform.outputs``, identifier
  the workspace);
- resource ENTITY, blueprint ``terraform.<type>`` (remappable), identifier the address,
  source the lock's ``Who`` (USER), origin TERRAFORM, context workspace, lineage, serial,
  terraform_version and the lock's Operation;
- idempotency key ``terraform:<lineage>:<serial>:<address>``: the same write mapped again
  (after a crash, say) gives the same keys, so nothing is stored twice.

The events of a write depend only on the two stored states and what was recorded with the
write (``Write``), so they can be made again, identically, from the state database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from clients import pb
from collectors.runtime.limits import MAX_SNAPSHOT_DEPTH, OMITTED_KEY, fit_event, fits_as_snapshot
from collectors.runtime.snapshots import NotASnapshot, encode_struct
from collectors.terraform.redact import Redactor, sensitive_strings
from collectors.terraform.state import Instance, TerraformState

OUTPUTS_BLUEPRINT = "terraform.outputs"
OUTPUTS_KEY = "outputs"  # no dot: never a resource address
REPLACED_SUFFIX = ":replaced"
MAX_KEY_CHARS = 500
UNKNOWN_SOURCE = "terraform"

# Every context key an event may carry (docs/terraform-collector.md has the table).
CONTEXT_KEYS = (
    "workspace",
    "lineage",
    "serial",
    "terraform_version",
    "operation",
    "lock_id",
    "state_version",
    "provider",
    "backend_user",
    "replaced",
    OMITTED_KEY,
)

Change = Literal["CREATE", "UPDATE", "DELETE"]
OPERATIONS: dict[Change, pb.Operation.ValueType] = {
    "CREATE": pb.OPERATION_CREATE,
    "UPDATE": pb.OPERATION_UPDATE,
    "DELETE": pb.OPERATION_DELETE,
}


@dataclass(frozen=True)
class Write:
    "What the backend recorded with one accepted state write."

    workspace: str
    version: int  # the state version's number in the state database
    stored_at: float  # time.time() when it was stored
    who: str = ""  # the lock's Who ("user@host")
    operation: str = ""  # the lock's Operation ("OperationTypeApply")
    lock_id: str = ""
    backend_user: str = ""  # the basic-auth user name, when that is how it authenticated
    reused_serial: bool = False  # lineage + serial were stored before (a forced push)


@dataclass(frozen=True)
class MappingConfig:
    blueprints: Mapping[str, str] = field(default_factory=dict)  # resource type -> blueprint
    data_sources: bool = True


def idempotency_key(state: TerraformState, write: Write, address: str, suffix: str = "") -> str:
    """``terraform:<lineage>:<serial>:<address>``. A lineage + serial stored before (a state
    pushed with -force over a newer one, or again after its workspace was deleted) gets the
    state version beside it, so its events are not taken for the earlier ones."""
    serial = f"{state.serial}~{write.version}" if write.reused_serial else str(state.serial)
    key = f"terraform:{state.lineage}:{serial}:{address}{suffix}"
    if len(key) > MAX_KEY_CHARS:
        key = "terraform:sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def _changed(before: Instance, after: Instance) -> bool:
    return before.attributes != after.attributes or before.sensitive_paths != after.sensitive_paths


def _replaced(before: Instance, after: Instance) -> bool:
    old, new = before.attributes.get("id"), after.attributes.get("id")
    return old is not None and new is not None and old != new


class Mapper:
    def __init__(self, config: MappingConfig, redactor: Redactor) -> None:
        self.config = config
        self.redactor = redactor

    def blueprint(self, type_: str) -> str:
        return self.config.blueprints.get(type_, f"terraform.{type_}")

    def events(
        self, previous: TerraformState | None, current: TerraformState, write: Write
    ) -> list[pb.AuditEvent]:
        """The events of writing ``current`` over ``previous`` (None: no state before), in
        order: removals (in the previous state's order), then creations and changes (in this
        state's order; a replacement's DELETE just before its CREATE), then the outputs."""
        secrets = sensitive_strings((previous, current))
        before_all = self._kept(previous.instances if previous is not None else {})
        after_all = self._kept(current.instances)
        out: list[pb.AuditEvent] = []
        for address, before in before_all.items():
            if address not in after_all:
                out.append(self._event("DELETE", current, write, before, None, secrets))
        for address, after in after_all.items():
            before_or_none = before_all.get(address)
            if before_or_none is None:
                out.append(self._event("CREATE", current, write, None, after, secrets))
            elif _replaced(before_or_none, after):
                out.append(
                    self._event("DELETE", current, write, before_or_none, None, secrets, True)
                )
                out.append(self._event("CREATE", current, write, None, after, secrets, True))
            elif _changed(before_or_none, after):
                out.append(self._event("UPDATE", current, write, before_or_none, after, secrets))
        outputs = self._outputs_event(previous, current, write, secrets)
        if outputs is not None:
            out.append(outputs)
        return out

    def _kept(self, instances: Mapping[str, Instance]) -> dict[str, Instance]:
        if self.config.data_sources:
            return dict(instances)
        return {a: i for a, i in instances.items() if i.mode == "managed"}

    def _base(
        self,
        change: Change,
        state: TerraformState,
        write: Write,
        key: str,
        identifier: str,
        blueprint: str,
    ) -> pb.AuditEvent:
        who = write.who or write.backend_user
        source = (
            pb.Source(kind=pb.SOURCE_KIND_USER, id=who, name=who)
            if who
            else pb.Source(kind=pb.SOURCE_KIND_SYSTEM, id=UNKNOWN_SOURCE, name=UNKNOWN_SOURCE)
        )
        event = pb.AuditEvent(
            idempotency_key=key,
            resource=pb.RESOURCE_TYPE_ENTITY,
            identifier=identifier,
            blueprint=blueprint,
            operation=OPERATIONS[change],
            source=source,
            origin=pb.ORIGIN_TERRAFORM,
            status=pb.STATUS_SUCCESS,
        )
        seconds = int(write.stored_at)
        event.occurred_at.seconds = seconds
        event.occurred_at.nanos = int((write.stored_at - seconds) * 1e9)
        context = event.context
        context["workspace"] = write.workspace
        context["lineage"] = state.lineage
        context["serial"] = str(state.serial)
        context["terraform_version"] = state.terraform_version
        if write.operation:
            context["operation"] = write.operation
        if write.lock_id:
            context["lock_id"] = write.lock_id
        context["state_version"] = str(write.version)
        if write.backend_user:
            context["backend_user"] = write.backend_user
        return event

    def _event(
        self,
        change: Change,
        state: TerraformState,
        write: Write,
        before: Instance | None,
        after: Instance | None,
        secrets: set[str],
        replaced: bool = False,
    ) -> pb.AuditEvent:
        instance = after if after is not None else before
        assert instance is not None
        suffix = REPLACED_SUFFIX if replaced and change == "DELETE" else ""
        event = self._base(
            change,
            state,
            write,
            idempotency_key(state, write, instance.address, suffix),
            instance.address,
            self.blueprint(instance.type),
        )
        if instance.provider:
            event.context["provider"] = instance.provider
        if replaced:
            event.context["replaced"] = "true"
        snapshots = (
            (event.before, before),
            (event.after, after),
        )
        for target, source in snapshots:
            if source is None:
                continue
            if not fits_as_snapshot(source.attributes):
                event.context[OMITTED_KEY] = (
                    f"the attributes nest deeper than {MAX_SNAPSHOT_DEPTH} levels"
                )
                continue
            self._snapshot(event, target, self.redactor.attributes(source, secrets))
        return fit_event(event)

    def _snapshot(self, event: pb.AuditEvent, target: Any, value: dict[str, Any]) -> None:
        try:
            data = encode_struct(value)
        except NotASnapshot as exc:
            event.context[OMITTED_KEY] = f"the attributes cannot be a snapshot: {exc}"
            return
        target.SetInParent()  # an empty object is still a snapshot
        target.MergeFromString(data)

    def _outputs_event(
        self,
        previous: TerraformState | None,
        current: TerraformState,
        write: Write,
        secrets: set[str],
    ) -> pb.AuditEvent | None:
        old = previous.outputs if previous is not None else {}
        new = current.outputs
        if old == new:
            return None
        change: Change = "UPDATE"
        if not old:
            change = "CREATE"
        elif not new:
            change = "DELETE"
        event = self._base(
            change,
            current,
            write,
            idempotency_key(current, write, OUTPUTS_KEY),
            write.workspace,
            OUTPUTS_BLUEPRINT,
        )
        for target, state in ((event.before, previous), (event.after, current)):
            if state is None or not state.outputs:
                continue
            values = {name: output.value for name, output in state.outputs.items()}
            if not fits_as_snapshot(values):
                event.context[OMITTED_KEY] = (
                    f"the outputs nest deeper than {MAX_SNAPSHOT_DEPTH} levels"
                )
                continue
            self._snapshot(event, target, self.redactor.outputs(state, secrets))
        return fit_event(event)

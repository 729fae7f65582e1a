"""Terraform's documents, read and checked: state v4 JSON (what the backend stores and the
mapping compares) and the lock info Terraform sends with LOCK and UNLOCK.

State v4 (what ``terraform`` 0.12 and later write)::

    {"version": 4, "terraform_version": "1.11.4", "serial": 3, "lineage": "<uuid>",
     "outputs": {"name": {"value": ..., "type": ..., "sensitive": true}},
     "resources": [{"module": "module.net", "mode": "managed", "type": "terraform_data",
                    "name": "a", "provider": "provider[...]",
                    "instances": [{"index_key": 0, "schema_version": 0, "attributes": {...},
                                   "sensitive_attributes": [[{"type": "get_attr", ...}]],
                                   "deposed": "...", "dependencies": [...]}]}]}

``parse_state`` refuses (``StateError``, naming the place) what Terraform could not have
written: anything that is not such an object, with the right types where the mapping reads.
Keys it does not read (``check_results``, ``dependencies``, ...) are kept in the stored body
as sent and otherwise ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

STATE_VERSION = 4
MAX_LOCK_ID_CHARS = 512
MODES = ("managed", "data")


class StateError(ValueError):
    "The body is not what Terraform sends here; the message says what is wrong, and where."


@dataclass(frozen=True)
class Output:
    value: Any
    sensitive: bool


@dataclass(frozen=True)
class Instance:
    "One resource instance (a deposed object is not one: see ``parse_state``)."

    address: str  # module.net.terraform_data.a["k"]
    module: str  # module.net, or ""
    mode: str  # managed | data
    type: str
    name: str
    index_key: int | str | None
    provider: str
    attributes: dict[str, Any]
    sensitive_paths: tuple[Any, ...]  # as the state has them: lists of path steps


@dataclass(frozen=True)
class TerraformState:
    lineage: str
    serial: int
    terraform_version: str
    outputs: dict[str, Output]
    instances: dict[str, Instance]  # by address, in the state's order


@dataclass(frozen=True)
class LockInfo:
    "Terraform's lock info (``statemgr.LockInfo``); ``raw`` is the body as sent."

    id: str
    operation: str
    who: str
    version: str
    created: str
    raw: bytes


def _load(body: bytes, what: str) -> Any:
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise StateError(f"the body is not UTF-8 {what} JSON") from None
    except ValueError as exc:
        raise StateError(f"the body is not {what} JSON: {exc}") from None
    except RecursionError:  # Python's JSON parser stops near 1,000 levels
        raise StateError(f"the body is not {what} JSON: it nests too deep") from None
    return document


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def format_index(key: int | str | None) -> str:
    'The index part of an address: ``[0]`` or ``["k"]`` (quoted as Terraform does), or none.'
    if key is None:
        return ""
    if isinstance(key, int):
        return f"[{key}]"
    return "[" + json.dumps(key, ensure_ascii=False) + "]"


def address(module: str, mode: str, type_: str, name: str, index_key: int | str | None) -> str:
    "The resource instance address Terraform prints: ``module.m.data.t.n[0]``."
    parts = [module] if module else []
    if mode == "data":
        parts.append("data")
    parts += [type_, name]
    return ".".join(parts) + format_index(index_key)


def looks_like_lock_info(document: Any) -> bool:
    return isinstance(document, dict) and "ID" in document and "version" not in document


def parse_state(body: bytes) -> TerraformState:
    """``body`` as Terraform state v4.

    :raises StateError: not JSON, not state v4, or a part of it has the wrong shape.
    """
    document = _load(body, "Terraform state")
    if not isinstance(document, dict):
        raise StateError(f"expected a Terraform state object, got JSON {type(document).__name__}")
    if looks_like_lock_info(document):
        raise StateError(
            "this is lock info, not a state: lock with the LOCK method, or send lock_method"
            " requests to /state/<workspace>/lock"
        )
    version = document.get("version")
    if not _is_int(version) or version != STATE_VERSION:
        raise StateError(f"expected Terraform state version {STATE_VERSION}, got {version!r}")
    serial = document.get("serial")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise StateError(f"serial must be a whole number of at least 0, got {serial!r}")
    lineage = document.get("lineage")
    if not isinstance(lineage, str) or not lineage:
        raise StateError(f"lineage must be a non-empty string, got {lineage!r}")
    terraform_version = document.get("terraform_version")
    if not isinstance(terraform_version, str):
        raise StateError(f"terraform_version must be a string, got {terraform_version!r}")
    return TerraformState(
        lineage=lineage,
        serial=serial,
        terraform_version=terraform_version,
        outputs=_outputs(document.get("outputs", {})),
        instances=_instances(document.get("resources", [])),
    )


def _outputs(raw: Any) -> dict[str, Output]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StateError("outputs must be an object")
    outputs: dict[str, Output] = {}
    for name, output in raw.items():
        if not isinstance(output, dict) or "value" not in output:
            raise StateError(f"outputs.{name} must be an object with a value")
        sensitive = output.get("sensitive", False)
        if not isinstance(sensitive, bool):
            raise StateError(f"outputs.{name}.sensitive must be true or false")
        outputs[name] = Output(output["value"], sensitive)
    return outputs


def _text(resource: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = resource.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise StateError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _instances(raw: Any) -> dict[str, Instance]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise StateError("resources must be a list")
    instances: dict[str, Instance] = {}
    for r, resource in enumerate(raw):
        where = f"resources[{r}]"
        if not isinstance(resource, dict):
            raise StateError(f"{where} is not an object")
        mode = resource.get("mode")
        if mode not in MODES:
            raise StateError(f"{where}.mode must be managed or data, got {mode!r}")
        type_ = _text(resource, "type", where)
        name = _text(resource, "name", where)
        module = _text(resource, "module", where, required=False)
        provider = _text(resource, "provider", where, required=False)
        objects = resource.get("instances", [])
        if not isinstance(objects, list):
            raise StateError(f"{where}.instances must be a list")
        for i, obj in enumerate(objects):
            here = f"{where}.instances[{i}]"
            if not isinstance(obj, dict):
                raise StateError(f"{here} is not an object")
            index_key = obj.get("index_key")
            if index_key is not None and not (_is_int(index_key) or isinstance(index_key, str)):
                raise StateError(f"{here}.index_key must be a number or a string")
            attributes = obj.get("attributes")
            if attributes is None:
                attributes = obj.get("attributes_flat", {})  # states upgraded from 0.11
            if not isinstance(attributes, dict):
                raise StateError(f"{here}.attributes is not an object")
            paths = obj.get("sensitive_attributes")
            if paths is None:
                paths = []
            if not isinstance(paths, list):
                raise StateError(f"{here}.sensitive_attributes must be a list")
            deposed = obj.get("deposed")
            if deposed is not None and not isinstance(deposed, str):
                raise StateError(f"{here}.deposed must be a string")
            if deposed:
                # The old object of a create-before-destroy replacement, waiting to be
                # destroyed: its replacement is the instance itself (whose id changed).
                continue
            key = address(module, mode, type_, name, index_key)
            if key in instances:
                continue  # Terraform never writes one twice; the first one counts
            instances[key] = Instance(
                address=key,
                module=module,
                mode=mode,
                type=type_,
                name=name,
                index_key=index_key,
                provider=provider,
                attributes=attributes,
                sensitive_paths=tuple(paths),
            )
    return instances


def parse_lock(body: bytes) -> LockInfo:
    """Terraform's lock info: ``{"ID", "Operation", "Info", "Who", "Version", "Created",
    "Path"}``; only ``ID`` is required.

    :raises StateError: not a JSON object with a non-empty string ID.
    """
    document = _load(body, "lock info")
    if not isinstance(document, dict):
        raise StateError(f"expected a lock info object, got JSON {type(document).__name__}")
    lock_id = document.get("ID")
    if not isinstance(lock_id, str) or not lock_id.strip():
        raise StateError("the lock info needs an ID (a non-empty string)")
    if len(lock_id) > MAX_LOCK_ID_CHARS:
        raise StateError(f"the lock ID is longer than {MAX_LOCK_ID_CHARS} characters")

    def text(key: str) -> str:
        value = document.get(key)
        return value if isinstance(value, str) else ""

    return LockInfo(
        id=lock_id,
        operation=text("Operation"),
        who=text("Who"),
        version=text("Version"),
        created=text("Created"),
        raw=body,
    )

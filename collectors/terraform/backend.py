"""Terraform's ``http`` state backend, on the collector's endpoint.

Paths (``<workspace>``: letters, digits, ``.``, ``_`` and ``-``; one path segment):

- ``GET /state/<ws>``: the current state (404 when none); ``?version=N`` a stored version.
- ``POST`` or ``PUT /state/<ws>[?ID=<lock id>]``: 200 once the state is stored and its
  events spooled; 400 when the body is not state v4 JSON; 423 (the holder's lock info) when
  it is locked and ``ID`` is not the lock's; 409 when ``ID`` names a lock no longer held.
- ``DELETE /state/<ws>``: the workspace has no state any more (its versions stay).
- ``LOCK /state/<ws>``, or ``LOCK``/``POST``/``PUT``/``PATCH /state/<ws>/lock``: 200 locked
  (or locked already with this ID); 423 with the holder's lock info.
- ``UNLOCK /state/<ws>``, or ``UNLOCK``/``DELETE /state/<ws>/lock``: 200 unlocked (or not
  locked); 423 when the body's ID is not the holder's. Without a body (what
  ``terraform force-unlock`` sends) any lock is released.
- ``GET /state/<ws>/lock``: the lock info held (404 when none); ``GET /state/<ws>/versions``:
  every stored version, oldest first.

A state write is committed to the state database before its events are spooled, and Terraform
is answered after both; a crash between them is made good at the next start (``Spooler``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from clients import pb
from collectors.runtime import Request, Response, Runtime, SpoolFull
from collectors.terraform.mapping import Mapper, Write
from collectors.terraform.state import (
    LockInfo,
    StateError,
    TerraformState,
    parse_lock,
    parse_state,
)
from collectors.terraform.store import StateStore, StoredVersion, Transaction

PREFIX = "/state/"
MAX_LOCK_BYTES = 64 * 1024
WORKSPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
STATE_METHODS = ("GET", "POST", "PUT", "DELETE", "LOCK", "UNLOCK")
LOCK_METHODS = ("LOCK", "POST", "PUT", "PATCH")
UNLOCK_METHODS = ("UNLOCK", "DELETE")
# Every method any path under /state/ takes (one route each).
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "LOCK", "UNLOCK")


@dataclass(frozen=True)
class Target:
    workspace: str
    sub: str  # "", "lock" or "versions"


def parse_target(path: str) -> Target | Response:
    rest = path[len(PREFIX) :]
    workspace, _, sub = rest.partition("/")
    if not WORKSPACE.fullmatch(workspace):
        return Response.error(
            HTTPStatus.BAD_REQUEST,
            f"{workspace!r} is not a workspace name: up to 128 letters, digits, '.', '_' and"
            " '-', not starting with '.' or '-'",
        )
    if sub not in ("", "lock", "versions"):
        return Response.error(
            HTTPStatus.NOT_FOUND,
            f"no such path: {path} (/state/<workspace>, /state/<workspace>/lock,"
            " /state/<workspace>/versions)",
        )
    return Target(workspace, sub)


def basic_auth_user(request: Request) -> str:
    "The user name of an ``Authorization: Basic`` header ('' if there is none)."
    scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, ValueError):
        return ""
    return decoded.partition(":")[0]


def check_md5(request: Request) -> None:
    """Terraform sends ``Content-MD5`` (base64) with every body: a body changed on the way
    is refused. :raises StateError:"""
    sent = (request.headers.get("Content-MD5") or "").strip()
    if not sent:
        return
    digest = hashlib.md5(request.body, usedforsecurity=False).digest()
    if base64.b64encode(digest).decode() != sent:
        raise StateError("the body does not match its Content-MD5 header (changed on the way?)")


def _locked(holder: bytes) -> Response:
    "423 with the holder's lock info as the body: Terraform reads the ID from it."
    return Response(HTTPStatus.LOCKED, holder)


def _query_id(request: Request) -> str:
    values = request.query.get("ID") or []
    return values[0] if values else ""


class ParsedStates:
    "The states of the last few stored versions, parsed: the next write's previous one."

    def __init__(self, size: int = 2) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._states: dict[int, TerraformState] = {}

    def get(self, version_id: int, body: bytes) -> TerraformState:
        with self._lock:
            found = self._states.get(version_id)
        if found is None:
            found = parse_state(body)
            self.put(version_id, found)
        return found

    def put(self, version_id: int, state: TerraformState) -> None:
        with self._lock:
            self._states[version_id] = state
            while len(self._states) > self._size:
                del self._states[next(iter(self._states))]


SCOPE = "terraform"
SPOOLED_THROUGH = "spooled-through"  # spool state: the last version whose events it holds


class Spooler:
    """Puts the events of stored versions into the spool, in order of version, each spool
    transaction with the mark of the last version it holds; the backend calls it after each
    write, and its worker goes on when the spool was full, and at start for what a crash left
    behind."""

    def __init__(self, runtime: Runtime, store: StateStore, mapper: Mapper) -> None:
        self.runtime = runtime
        self.store = store
        self.mapper = mapper
        self.log = runtime.logger("backend")
        self.parsed = ParsedStates()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._made: dict[int, list[pb.AuditEvent]] = {}  # events made by the backend, by version
        self._made_lock = threading.Lock()
        self._waiting = False  # for room in the spool (logged once)
        mark = runtime.spool.get_state(SCOPE, SPOOLED_THROUGH)
        self.spooled_through = int(mark) if mark else 0

    def events(self, version: StoredVersion) -> list[pb.AuditEvent]:
        "The events of ``version``, made from the stored bodies."
        previous = None
        if version.previous is not None:
            body = self.store.body(version.previous)
            previous = self.parsed.get(version.previous, body) if body is not None else None
        current = self.parsed.get(version.id, version.body)
        return self.mapper.events(previous, current, write_of(version))

    def offer(self, version_id: int, events: list[pb.AuditEvent]) -> None:
        "The events of a version just stored, made already: ``flush`` need not make them again."
        with self._made_lock:
            self._made[version_id] = events

    def _take(self, version: StoredVersion) -> list[pb.AuditEvent]:
        with self._made_lock:
            events = self._made.pop(version.id, None)
        if events is None:
            events = self.events(version)
            self.runtime.count("recovered_versions")
        return events

    def flush(self, wait: float = 0) -> bool:
        """Spool the events of every version not spooled yet, oldest first. True when none is
        left; False when the spool stayed full for ``wait`` seconds (the worker goes on)."""
        with self._lock:
            while pending := self.store.pending(self.spooled_through):
                for version in pending:
                    events = self._take(version)
                    if not self._spool(version, events, wait):
                        self.offer(version.id, events)
                        self._wake.set()
                        if not self._waiting:
                            self.log.warning(
                                "spool full: stored state versions wait for room for their events",
                                version=version.id,
                            )
                        self._waiting = True
                        return False
                    self.spooled_through = version.id
                    self.runtime.count("events_spooled", len(events))
                    if self._waiting:
                        self.log.info("events of stored state versions spooled again")
                        self._waiting = False
            return True

    def _spool(self, version: StoredVersion, events: list[pb.AuditEvent], wait: float) -> bool:
        "Spool ``events`` with the mark of ``version``; False: no room (for ``wait`` s)."
        if events and not self.runtime.spool.wait_for_room(len(events), wait):
            return False
        try:
            with self.runtime.spool.transaction() as tx:
                for event in events:
                    tx.add(event)
                tx.set_state(SCOPE, SPOOLED_THROUGH, str(version.id))
        except SpoolFull:
            return False
        return True

    def counts(self) -> dict[str, int]:
        "The state database's counts, for /stats."
        return self.store.counts(self.spooled_through)

    def run(self, stop: threading.Event) -> None:
        "The worker: what the backend could not spool at once, spooled as room appears."
        self._wake.set()  # a crash may have left some
        while not stop.is_set():
            if self._wake.wait(0.5):
                self._wake.clear()
                self.flush(wait=0.5)
        self.flush()
        self.store.close()


def write_of(version: StoredVersion) -> Write:
    return Write(
        workspace=version.workspace,
        version=version.id,
        stored_at=version.stored_at,
        who=version.who,
        operation=version.operation,
        lock_id=version.lock_id,
        backend_user=version.backend_user,
        reused_serial=version.reused_serial,
    )


class StateBackend:
    "The handler of every path under /state/."

    def __init__(self, runtime: Runtime, store: StateStore, spooler: Spooler) -> None:
        self.runtime = runtime
        self.store = store
        self.spooler = spooler
        self.log = runtime.logger("backend")

    def __call__(self, request: Request) -> Response:
        target = parse_target(request.path)
        if isinstance(target, Response):
            return target
        handler = self._handler(target, request.method)
        if handler is None:
            allowed = {
                "": STATE_METHODS,
                "lock": ("GET", *LOCK_METHODS, *UNLOCK_METHODS),
                "versions": ("GET",),
            }[target.sub]
            return Response.error(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{request.path} takes {', '.join(allowed)}",
                Allow=", ".join(allowed),
            )
        return handler(target, request)

    def _handler(self, target: Target, method: str) -> Callable[[Target, Request], Response] | None:
        if target.sub == "":
            return {
                "GET": self.get,
                "POST": self.write,
                "PUT": self.write,
                "DELETE": self.delete,
                "LOCK": self.lock,
                "UNLOCK": self.unlock,
            }.get(method)
        if target.sub == "lock":
            if method == "GET":
                return self.get_lock
            if method in LOCK_METHODS:
                return self.lock
            if method in UNLOCK_METHODS:
                return self.unlock
            return None
        return self.get_versions if method == "GET" else None

    # -- reading -------------------------------------------------------------------------

    def get(self, target: Target, request: Request) -> Response:
        wanted = (request.query.get("version") or [""])[0]
        if wanted:
            if not wanted.isdigit():
                return Response.error(HTTPStatus.BAD_REQUEST, f"version={wanted!r}: a number")
            version = self.store.version(target.workspace, int(wanted))
            if version is None:
                return Response.error(
                    HTTPStatus.NOT_FOUND, f"workspace {target.workspace} has no version {wanted}"
                )
        else:
            version = self.store.head(target.workspace)
            if version is None:
                return Response.error(
                    HTTPStatus.NOT_FOUND, f"workspace {target.workspace} has no state"
                )
        self.runtime.count("state_reads")
        return Response(HTTPStatus.OK, version.body, headers={"X-State-Version": str(version.id)})

    def get_lock(self, target: Target, _request: Request) -> Response:
        holder = self.store.lock(target.workspace)
        if holder is None:
            return Response.error(
                HTTPStatus.NOT_FOUND, f"workspace {target.workspace} is not locked"
            )
        return Response(HTTPStatus.OK, holder)

    def get_versions(self, target: Target, _request: Request) -> Response:
        head, versions = self.store.versions(target.workspace)
        if not versions:
            return Response.error(
                HTTPStatus.NOT_FOUND, f"workspace {target.workspace} has no versions"
            )
        return Response.json(
            HTTPStatus.OK,
            {"workspace": target.workspace, "versions": [v.summary(head) for v in versions]},
        )

    # -- writing -------------------------------------------------------------------------

    def _refusal(self, tx: Transaction, lock_id: str, what: str) -> tuple[Response | None, Any]:
        "Whether the lock lets a request with ``lock_id`` write; and the holder's lock."
        holder = tx.lock()
        if holder is None:
            if lock_id:
                self.runtime.count("writes_refused_lock")
                return Response.error(
                    HTTPStatus.CONFLICT,
                    f"{what} refused: the lock {lock_id} is not held any more (was it"
                    " force-unlocked?); the state is unchanged",
                ), None
            return None, None
        lock = parse_lock(holder)
        if lock_id != lock.id:
            self.runtime.count("writes_refused_lock")
            self.log.warning(
                f"{what} refused: locked by another",
                workspace=tx.workspace,
                holder=lock.who,
                holder_lock_id=lock.id,
                lock_id=lock_id,
            )
            return _locked(holder), lock
        return None, lock

    def write(self, target: Target, request: Request) -> Response:
        try:
            return self._write(target, request)
        except StateError as exc:  # nothing was stored
            self.runtime.count("states_refused")
            self.log.warning(
                "state refused", workspace=target.workspace, client=request.client, reason=str(exc)
            )
            return Response.error(HTTPStatus.BAD_REQUEST, f"{exc}; the state is unchanged")

    def _write(self, target: Target, request: Request) -> Response:
        ":raises StateError: not a state (before anything is stored)."
        check_md5(request)
        state = parse_state(request.body)
        digest = hashlib.sha256(request.body).hexdigest()
        lock_id = _query_id(request)
        user = basic_auth_user(request)
        with self.store.transaction(target.workspace) as tx:
            refusal, lock = self._refusal(tx, lock_id, "state write")
            if refusal is not None:
                return refusal
            head = tx.head()
            if head is not None and head.sha256 == digest:
                self.runtime.count("states_unchanged")
                return Response.json(HTTPStatus.OK, {"version": head.id, "unchanged": True})
            previous = self.spooler.parsed.get(head.id, head.body) if head is not None else None
            version = tx.add_version(
                previous=head.id if head is not None else None,
                lineage=state.lineage,
                serial=state.serial,
                terraform_version=state.terraform_version,
                sha256=digest,
                body=request.body,
                who=lock.who if lock is not None else "",
                operation=lock.operation if lock is not None else "",
                lock_id=lock.id if lock is not None else "",
                backend_user=user,
                reused_serial=tx.serial_stored_before(state.lineage, state.serial),
            )
            try:
                events = self.spooler.mapper.events(previous, state, write_of(version))
            except RecursionError:  # values nesting nearly as deep as JSON parsing allows
                raise StateError("the state nests too deep to compare") from None
            self.runtime.spool.ensure_room(len(events))  # full: 503, and nothing stored
        self.spooler.parsed.put(version.id, state)
        # The version is durable; its events go to the spool before Terraform hears back
        # (or, the spool having filled meanwhile, as soon as it has room: they are made
        # again from the stored version).
        self.runtime.count("state_writes")
        self.spooler.offer(version.id, events)
        self.spooler.flush()
        self.log.info(
            "state stored",
            workspace=target.workspace,
            version=version.id,
            serial=state.serial,
            events=len(events),
            who=version.who or user,
        )
        return Response.json(
            HTTPStatus.OK, {"version": version.id, "serial": state.serial, "events": len(events)}
        )

    def delete(self, target: Target, request: Request) -> Response:
        with self.store.transaction(target.workspace) as tx:
            refusal, _lock = self._refusal(tx, _query_id(request), "delete")
            if refusal is not None:
                return refusal
            head = tx.head()
            if head is None:
                return Response.error(
                    HTTPStatus.NOT_FOUND, f"workspace {target.workspace} has no state"
                )
            tx.clear_head()
        self.runtime.count("workspaces_deleted")
        self.log.warning(
            "workspace state deleted (its versions are kept)",
            workspace=target.workspace,
            version=head.id,
            client=request.client,
            backend_user=basic_auth_user(request),
        )
        return Response.json(HTTPStatus.OK, {"deleted": target.workspace, "version": head.id})

    # -- locking -------------------------------------------------------------------------

    def lock(self, target: Target, request: Request) -> Response:
        if len(request.body) > MAX_LOCK_BYTES:
            return Response.error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"lock info over {MAX_LOCK_BYTES} bytes"
            )
        try:
            wanted = parse_lock(request.body)
        except StateError as exc:
            return Response.error(HTTPStatus.BAD_REQUEST, str(exc))
        with self.store.transaction(target.workspace) as tx:
            holder = tx.lock()
            if holder is None:
                tx.set_lock(wanted.raw)
            elif (held := parse_lock(holder)).id != wanted.id:
                self.runtime.count("lock_conflicts")
                self.log.info(
                    "lock refused: held by another",
                    workspace=target.workspace,
                    holder=held.who,
                    holder_lock_id=held.id,
                    who=wanted.who,
                )
                return _locked(holder)
        if holder is None:
            self.runtime.count("locks")
            self.log.info(
                "locked",
                workspace=target.workspace,
                lock_id=wanted.id,
                who=wanted.who,
                operation=wanted.operation,
            )
        return Response(HTTPStatus.OK, holder or wanted.raw)

    def unlock(self, target: Target, request: Request) -> Response:
        if len(request.body) > MAX_LOCK_BYTES:
            return Response.error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"lock info over {MAX_LOCK_BYTES} bytes"
            )
        lock_id = _query_id(request)
        if request.body.strip():
            try:
                lock_id = parse_lock(request.body).id
            except StateError as exc:
                return Response.error(HTTPStatus.BAD_REQUEST, str(exc))
        held: LockInfo | None = None
        with self.store.transaction(target.workspace) as tx:
            holder = tx.lock()
            if holder is not None:
                held = parse_lock(holder)
                if lock_id and lock_id != held.id:
                    self.runtime.count("lock_conflicts")
                    return _locked(holder)
                tx.set_lock(None)
        if held is None:
            return Response.json(HTTPStatus.OK, {"unlocked": False, "reason": "not locked"})
        if lock_id:
            self.runtime.count("unlocks")
            self.log.info("unlocked", workspace=target.workspace, lock_id=held.id, who=held.who)
        else:
            # Terraform's force-unlock sends no lock info: whoever held it loses it.
            self.runtime.count("force_unlocks")
            self.log.warning(
                "lock force-released",
                workspace=target.workspace,
                holder=held.who,
                holder_lock_id=held.id,
                client=request.client,
                backend_user=basic_auth_user(request),
            )
        return Response.json(HTTPStatus.OK, {"unlocked": True, "lock_id": held.id})

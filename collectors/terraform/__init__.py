"""``audit-collector terraform``: a Terraform ``http`` state backend that records every
resource change.

Terraform keeps its state at ``http://HOST:PORT/state/<workspace>`` (GET, POST, DELETE, LOCK,
UNLOCK); every version is kept in the collector's state database, and each accepted write
becomes ENTITY events with origin TERRAFORM: one per resource instance created, changed,
replaced or removed, and one for the outputs. docs/terraform-collector.md describes the
backend, the mapping and the options.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from collectors.runtime import BasicAuthFile, Option, Plugin, Runtime, StartupError
from collectors.terraform.backend import METHODS, PREFIX, Spooler, StateBackend
from collectors.terraform.mapping import Mapper, MappingConfig
from collectors.terraform.redact import Redactor
from collectors.terraform.store import StateStore, StoreError

# This collector's counters in /stats (docs/terraform-collector.md explains each).
COUNTERS = (
    "state_reads",
    "state_writes",
    "states_unchanged",
    "states_refused",
    "writes_refused_lock",
    "workspaces_deleted",
    "locks",
    "lock_conflicts",
    "unlocks",
    "force_unlocks",
    "events_spooled",
    "recovered_versions",
)

KEY_SCOPE = "terraform"  # the spool state's scope for this collector
REDACTION_KEY = "redaction-key"
DEFAULT_MAX_STATE_BYTES = 64 * 1024 * 1024

OPTIONS: tuple[Option, ...] = (
    Option(
        "state_db",
        None,
        "the backend's database of state versions and locks (SQLite; default"
        " ./var/terraform-state.db)",
        "path",
        metavar="PATH",
    ),
    Option(
        "basic_auth_file",
        None,
        "file with the user:password lines Terraform's username and password must match",
        "path",
        metavar="PATH",
    ),
    Option(
        "bearer_token_file",
        None,
        "file with bearer token(s) other clients may present instead, one per line",
        "path",
        metavar="PATH",
    ),
    Option(
        "max_state_bytes",
        DEFAULT_MAX_STATE_BYTES,
        "largest state accepted (bigger ones get 413)",
        "int",
        metavar="N",
    ),
    Option(
        "blueprint",
        {},
        "use BLUEPRINT for resources of TYPE instead of terraform.TYPE,"
        " e.g. aws_instance=ec2-instance",
        "mapping",
        metavar="TYPE=BLUEPRINT",
    ),
    Option("skip_data_sources", False, "record managed resources only, not data sources", "bool"),
)


def redaction_key(runtime: Runtime) -> bytes:
    "This collector's key for fingerprints of sensitive values: made once, kept in the spool."
    key = runtime.spool.get_state(KEY_SCOPE, REDACTION_KEY)
    if key is None:
        key = secrets.token_bytes(32)
        runtime.spool.set_state(KEY_SCOPE, REDACTION_KEY, key)
    return key


def setup(runtime: Runtime) -> None:
    options = runtime.options
    if options.integer("max_state_bytes") < 1:
        raise StartupError("--max-state-bytes must be at least 1")
    auth = runtime.sender_auth(options.path("bearer_token_file"), "bearer token")
    basic = options.path("basic_auth_file")
    if basic is not None:
        auth = (BasicAuthFile(basic, "Terraform basic auth credentials"), *auth)
    try:
        store = StateStore(options.path("state_db") or Path("./var/terraform-state.db"))
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    mapper = Mapper(
        MappingConfig(
            blueprints=options.mapping("blueprint"),
            data_sources=not options.flag("skip_data_sources"),
        ),
        Redactor(redaction_key(runtime)),
    )
    spooler = Spooler(runtime, store, mapper)
    backend = StateBackend(runtime, store, spooler)
    for method in METHODS:
        runtime.http.route(
            method,
            PREFIX,
            backend,
            max_body=options.integer("max_state_bytes"),
            auth=auth,
            prefix=True,
        )
    runtime.add_worker("spooler", spooler.run)
    runtime.add_stats("backend", spooler.counts)


PLUGIN = Plugin(
    kind="terraform",
    description="A Terraform http state backend that records every resource change.",
    options=OPTIONS,
    setup=setup,
)

"""``audit-collector kubernetes``: Kubernetes API changes from the apiserver's audit webhook
and/or its audit log, as ENTITY events with origin K8S_EXPORTER.

docs/kubernetes-collector.md describes the mapping, the options and the deployment
(``deploy/kubernetes/``).
"""

from __future__ import annotations

import secrets

from collectors.kubernetes import webhook
from collectors.kubernetes.auditlog import AuditLogFollower
from collectors.kubernetes.ingest import Ingest
from collectors.kubernetes.mapping import Mapper, MappingConfig, Redactor
from collectors.runtime import Option, Plugin, Runtime, StartupError

# This collector's counters in /stats (docs/kubernetes-collector.md explains each).
COUNTERS = (
    "mapped",
    "ignored_stage",
    "ignored_verb",
    "ignored_no_object",
    "ignored_malformed",
    "webhook_batches",
    "audit_log_lines",
    "audit_log_bad_lines",
    "audit_log_paused",
)

KEY_SCOPE = "kubernetes"
REDACTION_KEY = "redaction-key"
DEFAULT_MAX_BODY = 32 * 1024 * 1024

OPTIONS: tuple[Option, ...] = (
    Option("cluster", "", "cluster name, put in every event's context", metavar="NAME"),
    Option(
        "webhook_token_file",
        None,
        "file with the bearer token(s) the apiserver's webhook must present, one per line",
        "path",
        metavar="PATH",
    ),
    Option(
        "no_webhook",
        False,
        f"do not receive the audit webhook at {webhook.PATH} (follow --audit-log only)",
        "bool",
    ),
    Option(
        "max_body_bytes",
        DEFAULT_MAX_BODY,
        "largest webhook body accepted (bigger ones get 413)",
        "int",
        metavar="N",
    ),
    Option(
        "audit_log",
        None,
        "follow this JSON-lines audit log (the apiserver's --audit-log-path)",
        "path",
        metavar="PATH",
    ),
    Option("include_reads", False, "record get, list and watch too, as READ events", "bool"),
    Option(
        "blueprint",
        {},
        "use BLUEPRINT for events of GROUP/RESOURCE (or RESOURCE for the core group)"
        " instead of that name, e.g. apps/deployments=service",
        "mapping",
        metavar="RESOURCE=BLUEPRINT",
    ),
)


def redaction_key(runtime: Runtime) -> bytes:
    "This collector's key for Secret fingerprints: made once, kept in the spool."
    key = runtime.spool.get_state(KEY_SCOPE, REDACTION_KEY)
    if key is None:
        key = secrets.token_bytes(32)
        runtime.spool.set_state(KEY_SCOPE, REDACTION_KEY, key)
    return key


def setup(runtime: Runtime) -> None:
    options = runtime.options
    config = MappingConfig(
        cluster=options.text("cluster"),
        include_reads=options.flag("include_reads"),
        blueprints=options.mapping("blueprint"),
    )
    ingest = Ingest(runtime, Mapper(config, Redactor(redaction_key(runtime))))
    audit_log = options.path("audit_log")
    if options.flag("no_webhook") and audit_log is None:
        raise StartupError("nothing to collect: --no-webhook without --audit-log")
    if not options.flag("no_webhook"):
        auth = runtime.sender_auth(options.path("webhook_token_file"), "webhook token")
        runtime.http.route(
            "POST",
            webhook.PATH,
            webhook.WebhookReceiver(ingest),
            max_body=options.integer("max_body_bytes"),
            auth=auth,
        )
    if audit_log is not None:
        runtime.add_worker("audit-log", AuditLogFollower(ingest, audit_log).run)


PLUGIN = Plugin(
    kind="kubernetes",
    description="Collect Kubernetes API changes from the apiserver's audit webhook and/or"
    " audit log.",
    options=OPTIONS,
    setup=setup,
)

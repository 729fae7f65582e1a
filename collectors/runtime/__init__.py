"""The collector runtime: what every ``audit-collector KIND`` shares.

A collector is a ``Plugin`` (kind, options, ``setup``); ``setup(runtime)`` gets a ``Runtime``
and registers HTTP routes (``runtime.http.route``) and background workers
(``runtime.add_worker``). Sources hand events to ``runtime.spool`` in a transaction; the
runtime streams them to the service, answers ``/healthz`` and ``/stats``, applies
back-pressure and stops gracefully. docs/collectors.md describes the seam; the Kubernetes
collector (``collectors.kubernetes``) is the worked example.

Modules: ``spool`` (the durable SQLite spool, dead letters, state), ``delivery`` (the sender),
``http`` (the endpoint, authenticators, requests and responses), ``options`` (options as
data), ``logs`` (structured logs), ``stats`` (counters), ``app`` (the runtime and ``run``),
``files`` (following a file across rotation), ``limits`` (fitting events under the service's
size limit).
"""

from collectors.runtime.app import COMMON_OPTIONS, Plugin, Runtime, run
from collectors.runtime.delivery import Delivery, DeliverySettings
from collectors.runtime.http import (
    Authenticator,
    BasicAuthFile,
    BearerTokenFile,
    ClientCertificate,
    HmacSignature,
    HttpEndpoint,
    Request,
    Response,
    SecretFile,
    StartupError,
)
from collectors.runtime.logs import FieldLogger, get_logger
from collectors.runtime.options import Option, Values
from collectors.runtime.spool import Spool, SpoolFull, SpoolTransaction
from collectors.runtime.stats import Stats

__all__ = [
    "COMMON_OPTIONS",
    "Authenticator",
    "BasicAuthFile",
    "BearerTokenFile",
    "ClientCertificate",
    "Delivery",
    "DeliverySettings",
    "FieldLogger",
    "HmacSignature",
    "HttpEndpoint",
    "Option",
    "Plugin",
    "Request",
    "Response",
    "Runtime",
    "SecretFile",
    "Spool",
    "SpoolFull",
    "SpoolTransaction",
    "StartupError",
    "Stats",
    "Values",
    "get_logger",
    "run",
]

"""The runtime every collector runs in: options, spool, sender, HTTP endpoint, workers, signals.

A collector is a ``Plugin``: its kind, its options, and a ``setup(runtime)`` that registers
HTTP routes and starts workers on the ``Runtime`` it is given. ``run(plugin, argv)`` does the
rest, in this order:

1. resolve the common options and the plugin's (flag, environment, config file, default);
2. open the spool, make the sender (the client library, with the recorder token read from
   ``--token-file``), add ``/healthz`` and ``/stats``;
3. call ``plugin.setup(runtime)``;
4. refuse to listen beyond loopback when an event route authenticates nobody (and say so when
   it listens on loopback without authentication);
5. serve, send, run the workers, and print ``audit-collector KIND listening on URL``;
6. on SIGTERM/SIGINT: answer 503 to new requests, finish requests in progress, stop the
   workers, send what can be sent within ``--drain-seconds``, close the spool.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from clients import TLS, AuditClient, InsecureTokenWarning, RetryPolicy
from collectors.runtime import logs
from collectors.runtime.delivery import MAX_BATCH, Delivery, DeliverySettings
from collectors.runtime.http import (
    Authenticator,
    BearerTokenFile,
    ClientCertificate,
    HttpEndpoint,
    ListenerTLS,
    Response,
    StartupError,
    is_loopback_host,
)
from collectors.runtime.options import (
    CONFIG_OPTION,
    Option,
    OptionError,
    Values,
    add_options,
    environment,
    resolve,
)
from collectors.runtime.spool import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_EVENTS,
    Spool,
    SpoolError,
)
from collectors.runtime.stats import RUNTIME_COUNTERS, Stats

DEFAULT_LISTEN = "127.0.0.1:8650"
GC_THRESHOLDS = (100_000, 20, 20)  # Python's defaults: (700, 10, 10)

COMMON_OPTIONS: tuple[Option, ...] = (
    Option("service", "127.0.0.1:50051", "the audit service, HOST:PORT", metavar="HOST:PORT"),
    Option(
        "token_file",
        None,
        "file holding this collector's recorder token (without one, only an audit-service"
        " --dev accepts its events)",
        "path",
        metavar="PATH",
    ),
    Option("tls", False, "reach the service over TLS, trusting the system's CAs", "bool"),
    Option(
        "ca_file",
        None,
        "CA certificate(s) (PEM) to verify the service; implies --tls",
        "path",
        metavar="PATH",
    ),
    Option(
        "cert_file",
        None,
        "client certificate (PEM) for mutual TLS with the service; implies --tls",
        "path",
        metavar="PATH",
    ),
    Option("key_file", None, "private key (PEM) of --cert-file", "path", metavar="PATH"),
    Option(
        "server_name",
        "",
        "name to expect in the service's certificate, when it differs from the host of --service",
        metavar="NAME",
    ),
    Option(
        "spool",
        None,
        "spool file (SQLite; default ./var/audit-collector-KIND.db)",
        "path",
        metavar="PATH",
    ),
    Option(
        "spool_max_events",
        DEFAULT_MAX_EVENTS,
        "events the spool holds before senders get 503 and followers pause",
        "int",
        metavar="N",
    ),
    Option(
        "spool_max_bytes",
        DEFAULT_MAX_BYTES,
        "bytes of events the spool holds before senders get 503 and followers pause",
        "int",
        metavar="N",
    ),
    Option(
        "listen",
        DEFAULT_LISTEN,
        "address of the HTTP endpoint (webhooks, /healthz, /stats), HOST:PORT (PORT 0: any free)",
        metavar="HOST:PORT",
    ),
    Option(
        "listen_cert_file",
        None,
        "serve the endpoint over TLS with this certificate (PEM)",
        "path",
        metavar="PATH",
    ),
    Option(
        "listen_key_file", None, "private key (PEM) of --listen-cert-file", "path", metavar="PATH"
    ),
    Option(
        "listen_client_ca_file",
        None,
        "CA (PEM): senders may authenticate with a client"
        " certificate it signed (needs --listen-cert-file)",
        "path",
        metavar="PATH",
    ),
    Option(
        "batch_size",
        MAX_BATCH,
        f"events per RecordStream batch (at most {MAX_BATCH})",
        "int",
        metavar="N",
    ),
    Option(
        "linger_ms", 200, "milliseconds an event may wait for a fuller batch", "int", metavar="MS"
    ),
    Option(
        "max_backoff",
        30.0,
        "seconds between delivery attempts at most while the service is unreachable",
        "float",
        metavar="SECONDS",
    ),
    Option(
        "stream_timeout",
        120.0,
        "seconds one delivery round (one stream, up to 10,000 events) may take",
        "float",
        metavar="SECONDS",
    ),
    Option(
        "drain_seconds",
        10.0,
        "on SIGTERM, seconds to keep delivering what is spooled",
        "float",
        metavar="SECONDS",
    ),
    Option("log_level", "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Option("log_format", "logfmt", "log line format", choices=("logfmt", "json")),
)


@dataclass(frozen=True)
class Plugin:
    """A collector: ``audit-collector KIND`` runs ``setup(runtime)`` with ``options`` resolved.

    ``setup`` registers routes on ``runtime.http``, starts workers with
    ``runtime.add_worker``, and raises ``StartupError`` for a configuration it cannot run.
    """

    kind: str
    description: str
    options: tuple[Option, ...]
    setup: Callable[[Runtime], None]


Worker = Callable[[threading.Event], None]


class Runtime:
    """What a plugin's ``setup`` gets: the options, the spool, the endpoint, the counters."""

    def __init__(
        self,
        kind: str,
        values: Values,
        spool: Spool,
        http: HttpEndpoint,
        stats: Stats,
        delivery: Delivery,
    ) -> None:
        self.kind = kind
        self.options = values
        self.spool = spool
        self.http = http
        self.stats = stats
        self.delivery = delivery
        self.stopping = threading.Event()
        self._workers: list[tuple[str, Worker]] = []
        self._threads: list[threading.Thread] = []
        self._failed: list[str] = []
        self._stat_sections: dict[str, Callable[[], dict[str, Any]]] = {}

    def logger(self, name: str) -> logs.FieldLogger:
        "A structured logger named ``collector.<kind>.<name>``."
        return logs.get_logger(f"{self.kind}.{name}")

    def count(self, name: str, amount: int = 1) -> None:
        "Add to this collector's counter ``name`` (shown in /stats under the kind)."
        self.stats.add(f"{self.kind}.{name}", amount)

    def add_worker(self, name: str, target: Worker) -> None:
        """Run ``target(stop)`` in its own thread once the collector starts; it must return
        soon after ``stop`` is set. A worker that raises makes /healthz fail."""
        self._workers.append((name, target))

    def add_stats(self, name: str, section: Callable[[], dict[str, Any]]) -> None:
        "Show ``section()`` under ``name`` in /stats."
        self._stat_sections[name] = section

    def sender_auth(
        self, token_file: Path | None, what: str = "bearer token"
    ) -> tuple[Authenticator, ...]:
        """The ways senders of an event route may authenticate: a bearer token from
        ``token_file`` (when given) and a client certificate (when the listener asks for
        them). Empty: nobody is authenticated, and the endpoint stays on loopback.

        :raises StartupError: the token file cannot be read or holds no token.
        """
        auth: list[Authenticator] = []
        if token_file is not None:
            auth.append(BearerTokenFile(token_file, what))
        if self.http.tls is not None and self.http.tls.client_ca_file is not None:
            auth.append(ClientCertificate())
        return tuple(auth)

    # -- run by ``run`` ------------------------------------------------------------------

    def _start_workers(self) -> None:
        for name, target in self._workers:
            thread = threading.Thread(
                target=self._guard, args=(name, target), name=name, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _guard(self, name: str, target: Worker) -> None:
        try:
            target(self.stopping)
        except Exception:
            self._failed.append(name)
            logs.get_logger(self.kind).exception("worker stopped by an error", worker=name)

    def _stop_workers(self, wait: float) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=wait)

    def problems(self) -> list[str]:
        "What makes /healthz fail."
        found = [f"worker {name} stopped by an error" for name in self._failed]
        if not self.delivery.alive:
            found.append("the delivery thread stopped")
        return found

    def stats_document(self) -> dict[str, Any]:
        counts = self.stats.snapshot()
        document: dict[str, Any] = {
            "kind": self.kind,
            "spooled": self.spool.pending,
            "spooled_bytes": self.spool.pending_bytes,
            "spool_max_events": self.spool.max_events,
            "spool_max_bytes": self.spool.max_bytes,
        }
        document.update({name: counts.get(name, 0) for name in RUNTIME_COUNTERS})
        document["dead_letter_table"] = self.spool.dead_letter_count()
        document["service"] = {
            "target": self.options.text("service"),
            "reachable": self.delivery.service_reachable,
            "last_error": self.delivery.last_error,
        }
        prefix = f"{self.kind}."
        own: dict[str, Any] = {
            k[len(prefix) :]: v for k, v in sorted(counts.items()) if k.startswith(prefix)
        }
        for name, section in self._stat_sections.items():
            own[name] = section()
        document[self.kind] = own
        return document


def build_parser(plugin: Plugin) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"audit-collector {plugin.kind}",
        description=plugin.description,
        epilog="Every option can also be set in the environment (AUDIT_COLLECTOR_<NAME>) or in"
        " the --config file (keys as the option names). docs/collectors.md explains them.",
    )
    add_options(parser, "collector runtime", (CONFIG_OPTION, *COMMON_OPTIONS))
    add_options(parser, plugin.kind, plugin.options)
    return parser


def read_token(path: Path | None) -> str | None:
    ":raises StartupError: the file cannot be read or is empty."
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise StartupError(f"cannot read --token-file {path}: {exc.strerror}") from None
    if not token:
        raise StartupError(f"--token-file {path} is empty")
    return token


def service_tls(values: Values) -> TLS | None:
    ca, cert, key = values.path("ca_file"), values.path("cert_file"), values.path("key_file")
    if not (values.flag("tls") or ca or cert or key):
        return None
    if (cert is None) != (key is None):
        raise StartupError("--cert-file and --key-file go together")
    return TLS(
        root_certificates=ca,
        certificate_chain=cert,
        private_key=key,
        server_name=values.text("server_name") or None,
    )


def listener_tls(values: Values) -> ListenerTLS | None:
    cert, key = values.path("listen_cert_file"), values.path("listen_key_file")
    client_ca = values.path("listen_client_ca_file")
    if cert is None and key is None:
        if client_ca is not None:
            raise StartupError("--listen-client-ca-file needs --listen-cert-file")
        return None
    if cert is None or key is None:
        raise StartupError("--listen-cert-file and --listen-key-file go together")
    return ListenerTLS(cert, key, client_ca)


def client_factory(values: Values) -> Callable[[], AuditClient]:
    "Makes a client for each (re)connection, reading the token file each time."
    target = values.text("service")
    tls = service_tls(values)
    token_path = values.path("token_file")
    read_token(token_path)  # fail at start, not at the first delivery

    def connect() -> AuditClient:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureTokenWarning)  # warned once, at start
            return AuditClient(
                target,
                token=read_token(token_path),
                tls=tls,
                timeout=values.number("stream_timeout"),
                retry=RetryPolicy(attempts=1),  # the sender has its own, unending backoff
            )

    return connect


def _warn_plaintext_token(values: Values, log: logs.FieldLogger) -> None:
    from clients._channel import is_loopback

    if values.path("token_file") and service_tls(values) is None:
        target = values.text("service")
        if not is_loopback(target):
            log.warning("sending the token in plaintext; configure --tls", service=target)


def run(plugin: Plugin, argv: Sequence[str]) -> int:
    "``audit-collector KIND ARGV``: returns the exit status."
    parser = build_parser(plugin)
    parsed = parser.parse_args(argv)
    try:
        values = resolve((*COMMON_OPTIONS, *plugin.options), parsed, environment())
    except OptionError as exc:
        parser.error(str(exc))
    logs.configure(
        values.text("log_level"), "json" if values.text("log_format") == "json" else "logfmt"
    )
    log = logs.get_logger(plugin.kind)
    try:
        return _serve(plugin, values, log)
    except (StartupError, SpoolError, ValueError) as exc:
        print(f"audit-collector {plugin.kind}: {exc}", file=sys.stderr)
        return 2


def _serve(plugin: Plugin, values: Values, log: logs.FieldLogger) -> int:
    spool_path = values.path("spool") or Path(f"./var/audit-collector-{plugin.kind}.db")
    settings = DeliverySettings(
        batch_size=values.integer("batch_size"),
        linger=values.integer("linger_ms") / 1000,
        max_backoff=values.number("max_backoff"),
        stream_timeout=values.number("stream_timeout"),
    )
    connect = client_factory(values)
    http = HttpEndpoint(values.text("listen"), tls=listener_tls(values))
    stats = Stats()
    spool = Spool(
        spool_path,
        max_events=values.integer("spool_max_events"),
        max_bytes=values.integer("spool_max_bytes"),
        stats=stats,
    )
    try:
        delivery = Delivery(spool, connect, stats, settings)
        runtime = Runtime(plugin.kind, values, spool, http, stats, delivery)
        http.route("GET", "/healthz", lambda _r: _health(runtime), receives_events=False)
        http.route(
            "GET",
            "/stats",
            lambda _r: Response.json(200, runtime.stats_document()),
            receives_events=False,
        )
        plugin.setup(runtime)
        _check_loopback_rule(plugin.kind, http, log)
        _warn_plaintext_token(values, log)
        stop = _install_signal_handlers(log)
        # What start-up made (modules, gRPC, the spool) lives as long as the process: keep it
        # out of every later collection. A webhook body parses into tens of thousands of
        # short-lived, acyclic objects that reference counting frees; at Python's default
        # thresholds each 400-event EventList set off ~100 young collections that walked them
        # (about a third of the CPU a webhook POST took).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        http.start()
        delivery.start()
        runtime._start_workers()
        log.info(
            "started",
            spool=str(spool_path),
            pending=spool.pending,
            service=values.text("service"),
        )
        # One write, so no log line from another thread lands inside it.
        sys.stdout.write(f"audit-collector {plugin.kind} listening on {http.url}\n")
        sys.stdout.flush()
        stop.wait()
        http.stop()
        runtime._stop_workers(wait=10)
        left = delivery.stop(values.number("drain_seconds"))
        log.info("stopped", left_in_spool=left, **_totals(stats))
        return 0
    finally:
        spool.close()


def _totals(stats: Stats) -> dict[str, int]:
    counts = stats.snapshot()
    return {name: counts.get(name, 0) for name in RUNTIME_COUNTERS}


def _health(runtime: Runtime) -> Response:
    problems = runtime.problems()
    if problems:
        return Response.json(503, {"status": "failing", "problems": problems})
    return Response.json(200, {"status": "ok"})


def _check_loopback_rule(kind: str, http: HttpEndpoint, log: logs.FieldLogger) -> None:
    "No authentication for senders: loopback only, and said so."
    open_routes = http.open_event_routes()
    if not open_routes:
        return
    paths = ", ".join(sorted({r.path for r in open_routes}))
    if not is_loopback_host(http.host):
        raise StartupError(
            f"refusing to listen on {http.listen}: {paths} would accept events from anyone;"
            " configure sender authentication (a token file or --listen-client-ca-file),"
            " or listen on a loopback address"
        )
    log.warning("no sender authentication configured: listening on loopback only", paths=paths)


def _install_signal_handlers(log: logs.FieldLogger) -> threading.Event:
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping gracefully", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop

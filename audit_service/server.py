"""Building and running the gRPC server: the service, health and reflection on one port."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from audit_service.audit_log import AuditLog
from audit_service.auth import (
    Authenticator,
    DevAuthenticator,
    TokenAuthenticator,
)
from audit_service.config import Settings
from audit_service.errors import InvalidArgument
from audit_service.page_tokens import PageTokens
from audit_service.retention import RetentionConfigError, RetentionPolicy, RetentionScheduler
from audit_service.secrets_redaction import SecretFingerprinter
from audit_service.servicer import AuditServicer
from audit_service.sign_ins import SignInAuditor
from audit_service.storage import Storage, StorageError, open_storage
from audit_service.tokens_file import TokensFileError
from audit_service.wire import LazyRecordStreamRequest, decode
from audit_service.writer import GroupCommitWriter
from clients import pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditService"].full_name
MAX_RECEIVE_BYTES = 16 * 1024 * 1024  # one RecordStream batch; single events stop at 1 MiB


class StartupError(Exception):
    "The service cannot start with these settings."


@dataclass
class RunningService:
    """A started server and what it owns. ``stop`` is graceful and idempotent."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    writer: GroupCommitWriter
    storage: Storage
    audit_log: AuditLog
    authenticator: Authenticator
    retention: RetentionScheduler

    def __post_init__(self) -> None:
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def stop(self, grace: float | None = 10.0) -> None:
        """Stop taking calls, let in-flight ones finish (up to ``grace`` s), commit every
        queued write, then close the database."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.health.enter_graceful_shutdown()
            self.retention.shutdown()
            self.server.stop(grace).wait()
            self.writer.close()
            self.storage.close()
            self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def reload_tokens(self) -> bool:
        "Re-read the tokens file now (SIGHUP). False in --dev mode or when the file is broken."
        if isinstance(self.authenticator, TokenAuthenticator):
            return self.authenticator.reload()
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StartupError(f"listen address {address!r} is not HOST:PORT")
    return host, int(port)


def make_authenticator(settings: Settings) -> Authenticator:
    """The authenticator the settings call for (checked before anything is opened).

    :raises StartupError: no authentication on a non-loopback address, or a bad tokens file.
    """
    host, _ = split_address(settings.listen)
    if settings.tokens:
        try:
            return TokenAuthenticator(Path(settings.tokens))
        except TokensFileError as exc:
            raise StartupError(str(exc)) from None
    if not settings.dev:
        raise StartupError(
            "no authentication configured: pass --tokens FILE, or --dev for local development"
        )
    if not is_loopback(host):
        raise StartupError(
            f"refusing to listen on non-loopback address {host} without authentication:"
            " --dev serves loopback addresses only; configure --tokens"
        )
    return DevAuthenticator()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    "TLS (and mTLS with --tls-client-ca) credentials, or None for plaintext."
    if not (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise StartupError("TLS needs both --tls-cert and --tls-key")
    try:
        cert = Path(settings.tls_cert).read_bytes()
        key = Path(settings.tls_key).read_bytes()
        client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise StartupError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _unary(method: Callable[[Any, grpc.ServicerContext], Any], request_cls: Any) -> Any:
    def handler(data: bytes, context: grpc.ServicerContext) -> Any:
        try:
            request = decode(request_cls, data)
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        return method(request, context)

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=_serialize
    )


def _record_stream(servicer: AuditServicer) -> Any:
    def handler(requests: Iterable[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        def decoded() -> Iterator[Any]:
            for data in requests:
                yield decode(LazyRecordStreamRequest, data)  # InvalidArgument ends the stream

        yield from servicer.RecordStream(decoded(), context)

    return grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=_serialize
    )


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


def service_handler(servicer: AuditServicer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The AuditService's handlers, decoding requests themselves (see audit_service.wire)."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Record": _unary(servicer.Record, pb.RecordRequest),
            "RecordStream": _record_stream(servicer),
            "List": _unary(servicer.List, pb.ListRequest),
            "GetDiff": _unary(servicer.GetDiff, pb.GetDiffRequest),
        },
    )


def create_server(settings: Settings, address: str | None = None) -> RunningService:
    """Build and start the server on ``address`` (default ``settings.listen``; port 0 picks a
    free one, read back from ``.port``).

    :raises StartupError: settings the service refuses (e.g. no auth on a public address).
    """
    address = address or settings.listen
    settings = replace(settings, listen=address)
    try:
        policy = RetentionPolicy.from_settings(
            settings.retention_days, settings.retention_overrides
        )
    except RetentionConfigError as exc:
        raise StartupError(str(exc)) from None
    credentials = server_credentials(settings)
    authenticator = make_authenticator(settings)  # refuse before the database is touched
    try:  # a path means SQLite, a postgresql:// URL PostgreSQL
        storage = open_storage(settings.db, durability=settings.durability)  # type: ignore[arg-type]
    except StorageError as exc:
        raise StartupError(str(exc)) from None
    try:
        key = storage.server_key()  # SQLite: <db>.key beside the file; PostgreSQL: in the db
    except BaseException:
        storage.close()
        raise
    writer = GroupCommitWriter(storage, settings.max_group_events)
    if isinstance(authenticator, TokenAuthenticator):
        authenticator.observer = SignInAuditor(
            writer, failures_per_minute=settings.sign_in_failures_per_minute
        )
    audit_log = AuditLog(
        storage,
        writer,
        SecretFingerprinter(key.derive("secret-fingerprints")),
        PageTokens(key.derive("page-tokens")),
        retention=policy,
    )
    servicer = AuditServicer(audit_log, authenticator)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=settings.workers * 4,
    )
    server.add_generic_rpc_handlers((service_handler(servicer),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio >= 1.49 raises where older versions returned 0
        port = 0
    if port == 0:
        writer.close()
        storage.close()
        raise StartupError(f"cannot listen on {address} (in use, or not a local address)")
    retention = RetentionScheduler(writer.storage, policy, settings.retention_interval_minutes)
    server.start()
    retention.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningService(
        server, port, health_servicer, writer, storage, audit_log, authenticator, retention
    )

"""The collector's HTTP endpoint: a small threaded server (``http.server``) with registered routes.

A route is ``(method, path) -> handler(Request) -> Response`` with a body size cap and the
ways its senders may authenticate; a path ending in ``/`` registered with ``prefix=True``
answers every path under it (``/state/`` for ``/state/prod``), when no exact path matches.
The endpoint answers, before a handler runs:

- 404 for an unknown path, 405 for a method the path does not take;
- 401 when the route authenticates and the request passes none of its authenticators
  (checked on the headers before the body is read, except signatures over the body);
- 413 for a body over the route's cap (unread), 411 for a POST/PUT without a length,
  400 for a malformed length or chunk;
- 503 with ``Retry-After`` while stopping, and whenever a handler raises ``SpoolFull``
  (nothing was stored: the sender should try again later);
- 500 (logged) when a handler raises anything else.

Listener TLS (``ListenerTLS``) optionally asks for client certificates signed by a CA; they are
optional at the TLS layer so that probes without one can reach ``/healthz``, and the
``ClientCertificate`` authenticator requires one on the routes that receive events.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from collectors.runtime.logs import get_logger
from collectors.runtime.spool import SpoolFull

log = get_logger("http")

DEFAULT_MAX_BODY = 1024 * 1024
SPOOL_FULL_RETRY_AFTER = 5  # seconds
STOPPING_RETRY_AFTER = 2
READ_TIMEOUT = 60.0  # seconds a connection may sit idle or send its request


class _Throttle:
    "Lets a repeated log line through at most once per ``interval`` seconds, with a count."

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._held = 0

    def allow(self) -> int | None:
        "None: hold this one back; else how many were held back since the last one let through."
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            held, self._held = self._held, 0
            self._next = now + self.interval
            return held


_refusals = _Throttle()


class StartupError(Exception):
    "The endpoint cannot start as configured; the message says what to change."


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    client: str  # HOST:PORT of the peer
    client_certificate: dict[str, Any] | None  # verified by the listener's client CA

    def json(self) -> Any:
        "The body parsed as JSON. :raises ValueError: not JSON (or not UTF-8)."
        return json.loads(self.body)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, **headers: str) -> Response:
        body = json.dumps(data, sort_keys=False).encode() + b"\n"
        return cls(status, body, "application/json", dict(headers))

    @classmethod
    def error(cls, status: int, message: str, **headers: str) -> Response:
        'A JSON body ``{"error": message}`` with ``status``.'
        return cls.json(status, {"error": message}, **headers)


Handler = Callable[[Request], Response]


class Authenticator(Protocol):
    """One way a sender may prove who it is. ``check`` sees the headers, with an empty body,
    unless ``needs_body`` (a signature over the body): then it runs once the body is read."""

    description: str
    needs_body: bool

    def check(self, request: Request) -> bool: ...


class SecretFile:
    """Secrets from ``path``: one per line (blank lines and ``#`` comments skipped), so a new
    one can be added before the old one is removed. Read again when the file changes; an
    emptied file keeps the secrets read last (a rotation half written).

    :raises StartupError: the file cannot be read or holds no secret.
    """

    def __init__(self, path: Path, what: str = "secret") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._secrets: list[bytes] = []
        try:
            self._reload()
        except OSError as exc:
            raise StartupError(f"cannot read {path}: {exc.strerror}") from None
        if not self._secrets:
            raise StartupError(f"{path} holds no {what} (one per line)")

    def _reload(self) -> None:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        lines = [line.strip() for line in self.path.read_text().splitlines()]
        found = [line.encode() for line in lines if line and not line.startswith("#")]
        if found:
            self._secrets = found
        self._stamp = stamp

    def current(self) -> list[bytes]:
        with self._lock:
            with contextlib.suppress(OSError):  # unreadable now: keep the secrets read last
                self._reload()
            return list(self._secrets)


class BearerTokenFile:
    """A token from a ``SecretFile`` in a header: ``Authorization: Bearer <token>`` by default;
    another header, with or without a scheme, for senders that use one (GitLab's
    ``X-Gitlab-Token: <token>``: ``header="X-Gitlab-Token", scheme=""``). Compared as
    SHA-256 digests, in constant time, against every token (no early exit).

    :raises StartupError: the file cannot be read or holds no token.
    """

    needs_body = False

    def __init__(
        self,
        path: Path,
        what: str = "bearer token",
        *,
        header: str = "Authorization",
        scheme: str = "Bearer",
    ) -> None:
        self.description = f"{what} from {path}"
        self._tokens = SecretFile(path, "token")
        self._header = header
        self._scheme = scheme

    def check(self, request: Request) -> bool:
        value = request.headers.get(self._header) or ""
        if self._scheme:
            scheme, _, value = value.partition(" ")
            scheme_ok = scheme.lower() == self._scheme.lower()
        else:
            scheme_ok = True
        presented = hashlib.sha256(value.strip().encode()).digest()
        matched = False
        for token in self._tokens.current():
            matched |= hmac.compare_digest(presented, hashlib.sha256(token).digest())
        return matched and scheme_ok


class BasicAuthFile:
    """HTTP basic authentication (Terraform's HTTP backend: ``username`` and ``password``)
    against ``user:password`` lines of a ``SecretFile``, compared as SHA-256 digests in
    constant time.

    :raises StartupError: the file cannot be read or holds no credentials.
    """

    needs_body = False

    def __init__(self, path: Path, what: str = "basic auth credentials") -> None:
        self.description = f"{what} from {path}"
        self._credentials = SecretFile(path, "user:password line")

    def check(self, request: Request) -> bool:
        scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
        try:
            presented = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            presented = b""
        digest = hashlib.sha256(presented).digest()
        matched = False
        for line in self._credentials.current():
            matched |= hmac.compare_digest(digest, hashlib.sha256(line).digest())
        return matched and scheme.lower() == "basic" and b":" in presented


class HmacSignature:
    """A signature of the body in a header: the hex HMAC-SHA256 of the body keyed with a
    secret from a ``SecretFile``, after ``prefix`` (GitHub's and Bitbucket's
    ``X-Hub-Signature-256: sha256=<hex>``). Checked once the body is read (within the
    route's cap), in constant time against every secret.

    :raises StartupError: the file cannot be read or holds no secret.
    """

    needs_body = True

    def __init__(
        self,
        path: Path,
        what: str = "webhook secret",
        *,
        header: str = "X-Hub-Signature-256",
        prefix: str = "sha256=",
    ) -> None:
        self.description = f"{header} signed with the {what} from {path}"
        self._secrets = SecretFile(path, what)
        self._header = header
        self._prefix = prefix

    def check(self, request: Request) -> bool:
        value = (request.headers.get(self._header) or "").strip()
        if not value.startswith(self._prefix):
            return False
        presented = value[len(self._prefix) :].lower().encode()
        matched = False
        for secret in self._secrets.current():
            expected = hmac.new(secret, request.body, hashlib.sha256).hexdigest().encode()
            matched |= hmac.compare_digest(presented, expected)
        return matched


class ClientCertificate:
    "A TLS client certificate the listener's client CA verified."

    description = "TLS client certificate"
    needs_body = False

    def check(self, request: Request) -> bool:
        return bool(request.client_certificate)


@dataclass(frozen=True)
class ListenerTLS:
    "TLS for the endpoint: its certificate and key, and optionally a CA for client certificates."

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file is not None:
                context.load_verify_locations(cafile=str(self.client_ca_file))
                context.verify_mode = ssl.CERT_OPTIONAL  # required per route (ClientCertificate)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"listener TLS: {exc}") from None
        return context


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    max_body: int
    auth: tuple[Authenticator, ...]
    receives_events: bool  # a sender's endpoint (vs. /healthz, /stats): the loopback rule
    prefix: bool = False  # answers every path under ``path`` (which ends in "/")


def split_host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``. :raises StartupError:"""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise StartupError(f"{address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (what an empty host means)


def is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpEndpoint:
    "Routes on one listening address; ``start()`` binds and serves in a background thread."

    def __init__(self, listen: str, *, tls: ListenerTLS | None = None) -> None:
        self.listen = listen
        self.host, self.port = split_host_port(listen)
        self.tls = tls
        self._routes: dict[str, dict[str, Route]] = {}
        self._prefixes: dict[str, dict[str, Route]] = {}  # path prefix -> method -> route
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._active = 0
        self._idle = threading.Condition()

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        auth: Sequence[Authenticator] = (),
        receives_events: bool = True,
        prefix: bool = False,
    ) -> None:
        """Answer ``method path`` with ``handler``. ``auth``: a request must pass one of them
        (none given: open). ``max_body``: bytes, beyond which the answer is 413. ``prefix``:
        answer every path under ``path`` (which must end in ``/``) that has no route of its
        own; the handler reads ``request.path``."""
        if prefix and not path.endswith("/"):
            raise ValueError(f"a prefix route's path ends in '/': {path!r}")
        by_method = (self._prefixes if prefix else self._routes).setdefault(path, {})
        if method.upper() in by_method:
            raise ValueError(f"{method} {path} is registered twice")
        by_method[method.upper()] = Route(
            method.upper(), path, handler, max_body, tuple(auth), receives_events, prefix
        )

    def open_event_routes(self) -> list[Route]:
        "Routes that receive events and authenticate nobody."
        return [
            r
            for table in (self._routes, self._prefixes)
            for routes in table.values()
            for r in routes.values()
            if r.receives_events and not r.auth
        ]

    def start(self) -> None:
        ":raises StartupError: the address cannot be bound."
        context = self.tls.context() if self.tls is not None else None
        try:
            server = _Server((self.host, self.port), _handler_class(self), context)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.listen}: {exc.strerror}") from None
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
        )
        self._thread.start()

    def stop(self, wait: float = 10.0) -> None:
        "Answer 503 to new requests, stop accepting, and wait for requests in progress."
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=wait)

    # -- dispatch (called by request threads) -------------------------------------------

    def _find(self, method: str, path: str) -> Route | Response:
        routes = self._routes.get(path)
        if routes is None:
            under = [p for p in self._prefixes if path.startswith(p) and len(path) > len(p)]
            if under:
                routes = self._prefixes[max(under, key=len)]
        if routes is None:
            return Response.error(HTTPStatus.NOT_FOUND, f"no such path: {path}")
        route = routes.get(method)
        if route is None:
            allowed = ", ".join(sorted(routes))
            return Response.error(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {allowed}", Allow=allowed
            )
        return route

    def _enter(self) -> None:
        with self._idle:
            self._active += 1

    def _leave(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._context = context
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self._context is not None:
            # The handshake runs in the request's own thread (see _RequestHandler.setup), so a
            # slow or silent client cannot hold up the accepting thread.
            sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class BodyError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _handler_class(endpoint: HttpEndpoint) -> type[BaseHTTPRequestHandler]:
    class _RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "audit-collector"
        sys_version = ""
        timeout = READ_TIMEOUT

        def setup(self) -> None:
            super().setup()
            if isinstance(self.connection, ssl.SSLSocket):
                try:
                    self.connection.do_handshake()
                except (OSError, ssl.SSLError) as exc:
                    log.debug("TLS handshake failed", client=self._peer(), error=str(exc))
                    self.close_connection = True
                    raise ConnectionAbortedError from None

        def handle(self) -> None:
            try:
                super().handle()
            except (ConnectionError, TimeoutError, ssl.SSLError):
                self.close_connection = True

        def _peer(self) -> str:
            host, port = self.client_address[:2]
            return f"{host}:{port}"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http " + (format % args), client=self._peer())

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def do_PUT(self) -> None:
            self._dispatch()

        def do_DELETE(self) -> None:
            self._dispatch()

        def do_PATCH(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        def do_LOCK(self) -> None:  # Terraform's HTTP state backend locks with LOCK/UNLOCK
            self._dispatch()

        def do_UNLOCK(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            endpoint._enter()
            try:
                self._send(self._answer())
            finally:
                endpoint._leave()

        def _answer(self) -> Response:
            parsed = urllib.parse.urlsplit(self.path)
            found = endpoint._find(self.command, parsed.path)
            if isinstance(found, Response):
                self._discard_body()
                return found
            route = found
            if endpoint._stopping.is_set() and route.receives_events:
                self.close_connection = True
                return Response.error(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "the collector is stopping",
                    **{"Retry-After": str(STOPPING_RETRY_AFTER)},
                )
            certificate = None
            if isinstance(self.connection, ssl.SSLSocket):
                certificate = self.connection.getpeercert() or None
            request = Request(
                method=self.command,
                path=parsed.path,
                query=urllib.parse.parse_qs(parsed.query),
                headers=self.headers,
                body=b"",
                client=self._peer(),
                client_certificate=certificate,
            )
            passed = any(a.check(request) for a in route.auth if not a.needs_body)
            if route.auth and not passed and not any(a.needs_body for a in route.auth):
                return self._unauthenticated(request, route)
            try:
                body = self._read_body(route.max_body)
            except BodyError as exc:
                self.close_connection = True
                return exc.response
            request = replace(request, body=body)
            if (
                route.auth
                and not passed
                and not any(a.check(request) for a in route.auth if a.needs_body)
            ):
                return self._unauthenticated(request, route)
            try:
                return route.handler(request)
            except SpoolFull as exc:
                log.warning("request refused: spool full", client=request.client, reason=str(exc))
                return Response.error(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    str(exc),
                    **{"Retry-After": str(SPOOL_FULL_RETRY_AFTER)},
                )
            except Exception:
                log.exception("request failed", client=request.client, path=request.path)
                self.close_connection = True
                return Response.error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

        def _unauthenticated(self, request: Request, route: Route) -> Response:
            held = _refusals.allow()
            if held is not None:  # a flood of bad requests must not flood the log
                log.warning(
                    "request refused: not authenticated",
                    client=request.client,
                    path=request.path,
                    accepts=", ".join(a.description for a in route.auth),
                    not_logged_before=held,
                )
            self.close_connection = True
            return Response.error(
                HTTPStatus.UNAUTHORIZED,
                "not authenticated",
                **{"WWW-Authenticate": 'Bearer realm="audit-collector"'},
            )

        def _read_body(self, limit: int) -> bytes:
            encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
            if encoding == "chunked":
                return self._read_chunked(limit)
            if encoding:
                raise BodyError(
                    Response.error(HTTPStatus.NOT_IMPLEMENTED, f"transfer encoding {encoding}")
                )
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                if self.command in ("POST", "PUT", "PATCH"):
                    raise BodyError(
                        Response.error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
                    )
                return b""
            if not length_text.strip().isdigit():
                raise BodyError(Response.error(HTTPStatus.BAD_REQUEST, "malformed Content-Length"))
            length = int(length_text)
            if length > limit:
                raise BodyError(_too_large(length, limit))
            body = self.rfile.read(length)
            if len(body) < length:
                raise BodyError(Response.error(HTTPStatus.BAD_REQUEST, "body cut short"))
            return body

        def _read_chunked(self, limit: int) -> bytes:
            parts: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BodyError(
                        Response.error(HTTPStatus.BAD_REQUEST, "malformed chunk")
                    ) from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                total += size
                if total > limit:
                    raise BodyError(_too_large(total, limit))
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise BodyError(Response.error(HTTPStatus.BAD_REQUEST, "body cut short"))
                parts.append(chunk)
                self.rfile.readline(8)  # the chunk's CRLF

        def _discard_body(self) -> None:
            "Skip a small body of a request answered without reading it (404/405)."
            length_text = self.headers.get("Content-Length") or "0"
            if length_text.isdigit() and int(length_text) <= DEFAULT_MAX_BODY:
                self.rfile.read(int(length_text))
            else:
                self.close_connection = True

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

    return _RequestHandler


def _too_large(size: int, limit: int) -> Response:
    return Response.error(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {size} bytes; the limit is {limit}"
    )

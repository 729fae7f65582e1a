"""The web application: routes, sessions and cookies, CSRF, security headers.

Every read goes to the service with the signed-in user's own token, so the service decides
what a user may see; the console adds its own gate on top (members get "My runs" only) and
never shows more than the service returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clients import (
    AsyncAuditClient,
    AuditClientError,
    DeadlineExceeded,
    Diff,
    InvalidArgument,
    NotFound,
    Page,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from console import _pages
from console._diff import side_by_side
from console._sessions import AttemptLimiter, Session, SessionStore, token_prefix
from console._settings import ConsoleSettings
from console._signin import SignInAudit, SignInRefused, identify
from console._views import MEMBER_TAB, PAGE_SIZE, BadView, View, make_rule, time_value

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SWEEP_SECONDS = 30.0
# What the sign-in page may say when sent there (fixed texts: a link cannot put words there).
NOTES = {
    "signed-out": "Signed out.",
    "revoked": "The service no longer accepts your token; sign in again.",
}
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        b" connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    "Adds ``SECURITY_HEADERS`` to every response, and ``no-store`` to everything but assets."

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _safe_next(target: str | None) -> str:
    "Where to go after signing in: a path on this site only."
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


class Console:
    """The console's state: settings, sessions, the sign-in audit, the templates."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.sessions = SessionStore(
            idle=settings.session_idle_minutes * 60, max_age=settings.session_max_hours * 3600
        )
        self.limiter = AttemptLimiter(settings.sign_in_attempts_per_minute)
        self._secret = secrets.token_bytes(32)  # signs the sign-in form's CSRF token
        self._console_token = settings.console_token()
        self._tls = settings.service_tls()
        self._own: AsyncAuditClient | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        prefix = "__Host-" if settings.secure_cookies else ""
        self.session_cookie = f"{prefix}audit_console_session"
        self.sign_in_cookie = f"{prefix}audit_console_sign_in"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def audit(self) -> SignInAudit:
        assert self._own is not None, "the console has not started"
        return SignInAudit(self._own)

    def client(self, token: str | None) -> AsyncAuditClient:
        return AsyncAuditClient(
            self.settings.service, token=token, tls=self._tls, timeout=self.settings.timeout
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._own = self.client(self._console_token)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        try:
            yield
        finally:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            for session in self.sessions.drain():
                await session.client.close()
            await self._own.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for session in self.sessions.sweep():
                await self._end_expired(session)

    async def _end_expired(self, session: Session) -> None:
        await self.audit.expired(session)
        await session.client.close()

    # -- sessions and CSRF ----------------------------------------------------------------

    async def session(self, request: Request) -> Session | None:
        live, expired = self.sessions.get(request.cookies.get(self.session_cookie))
        if expired is not None:
            await self._end_expired(expired)
        return live

    def sign_in_csrf(self, nonce: str) -> str:
        "The sign-in form's CSRF token: bound to the nonce in the sign-in cookie."
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.settings.secure_cookies,
        )

    def clear_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(
            name, path="/", httponly=True, samesite="strict", secure=self.settings.secure_cookies
        )

    # -- rendering ------------------------------------------------------------------------

    def html(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("session", None)
        body = self.templates.get_template(template).render(**context)
        return HTMLResponse(body, status_code=status)

    def message(
        self, request: Request, session: Session | None, status: int, title: str, text: str
    ) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": text}, status_code=status)
        return self.html("message.html", status, session=session, title=title, text=text)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""


def _same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from this site's own pages, as far as the
    browser says (Sec-Fetch-Site, Origin); the CSRF token is checked as well."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


Handler = Callable[[Request], Awaitable[Response]]


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console as an ASGI app.

    :raises SettingsError: the console's own token file cannot be read.
    """
    console = Console(settings)

    def need_session(
        handler: Callable[[Request, Session], Awaitable[Response]],
    ) -> Handler:
        "Runs ``handler`` with the request's session; without one: sign in first."

        async def wrapper(request: Request) -> Response:
            session = await console.session(request)
            if session is not None:
                return await handler(request, session)
            if _wants_json(request) or request.method != "GET":
                return JSONResponse({"error": "sign in first"}, status_code=401)
            if request.headers.get("sec-fetch-site") == "cross-site" and "again" not in (
                request.query_params
            ):
                # A link followed from another site: the SameSite=Strict cookie was not sent.
                # Load the page once more from here, where the browser sends it.
                again = request.url.include_query_params(again="1")
                return console.html("reload.html", url=str(again.path) + "?" + again.query)
            target = request.url.path + ("?" + request.url.query if request.url.query else "")
            return RedirectResponse("/sign-in?" + urlencode({"next": target}), status_code=303)

        return wrapper

    async def service_failed(request: Request, session: Session, exc: AuditClientError) -> Response:
        "What every page does with a failure that is not about the request itself."
        if isinstance(exc, Unauthenticated):  # the token was revoked since sign-in
            console.sessions.pop(session.id)
            await session.client.close()
            if _wants_json(request):
                return JSONResponse({"error": "the service no longer accepts your token"}, 401)
            response = RedirectResponse(
                "/sign-in?note=revoked",
                status_code=303,
            )
            console.clear_cookie(response, console.session_cookie)
            return response
        if isinstance(exc, PermissionDenied):
            return console.message(
                request, session, 403, "Not allowed", "Your token may not read this."
            )
        if isinstance(exc, Unavailable | DeadlineExceeded):
            return console.message(
                request,
                session,
                503,
                "Service unavailable",
                "The audit service cannot be reached right now; try again shortly.",
            )
        log.warning("service call failed: %s", exc)
        return console.message(
            request, session, 502, "Service error", f"The audit service failed: {exc}"
        )

    def read_view(request: Request, session: Session) -> View | Response:
        params = dict(request.query_params)
        cols = request.query_params.getlist("col")
        if cols and "cols" not in params:  # the column chooser's form, without the script
            params["cols"] = ",".join(cols)
        default_tab = "entities" if session.identity.role == "admin" else MEMBER_TAB
        try:
            view = View.parse(params, request.query_params.getlist("f"), default_tab)
        except BadView as exc:
            return console.message(request, session, 400, "Cannot show this view", str(exc))
        if session.identity.role != "admin" and view.tab != MEMBER_TAB:
            return console.message(
                request,
                session,
                403,
                "Not allowed",
                "Members see their own runs only (My runs).",
            )
        return view

    async def list_page(session: Session, view: View) -> Page:
        return await session.client.list_page(
            *view.filters(), order_by=view.order_by, page_size=PAGE_SIZE, page_token=view.page
        )

    # -- routes ---------------------------------------------------------------------------

    async def index(request: Request) -> Response:
        session = await console.session(request)
        if session is None:
            return RedirectResponse("/sign-in", status_code=303)
        tab = "entities" if session.identity.role == "admin" else MEMBER_TAB
        return RedirectResponse(View(tab).url(), status_code=303)

    async def sign_in_form(request: Request) -> Response:
        session = await console.session(request)
        nxt = _safe_next(request.query_params.get("next"))
        if session is not None:
            return RedirectResponse(nxt, status_code=303)
        note = NOTES.get(request.query_params.get("note", ""), "")
        return sign_in_page(request, nxt, note, 200)

    def sign_in_page(request: Request, nxt: str, error: str, status: int) -> Response:
        nonce = request.cookies.get(console.sign_in_cookie) or secrets.token_urlsafe(32)
        response = console.html(
            "sign_in.html", status, next=nxt, error=error, csrf=console.sign_in_csrf(nonce)
        )
        console.set_cookie(response, console.sign_in_cookie, nonce, 3600)
        return response

    async def sign_in(request: Request) -> Response:
        form = await request.form()
        nxt = _safe_next(str(form.get("next") or ""))
        nonce = request.cookies.get(console.sign_in_cookie, "")
        presented = str(form.get("csrf") or "")
        if (
            not _same_origin(request)
            or not nonce
            or not hmac.compare_digest(presented, console.sign_in_csrf(nonce))
        ):
            return PlainTextResponse("CSRF check failed: reload the sign-in page", 403)
        peer = _peer(request)
        agent = request.headers.get("user-agent", "")
        if not console.limiter.allow(peer):
            return sign_in_page(
                request, nxt, "Too many sign-in attempts from your address; wait a minute.", 429
            )
        token = str(form.get("token") or "").strip() or None
        prefix = token_prefix(token)
        try:
            client = console.client(token)
        except ValueError:
            await console.audit.refused(prefix, peer, "malformed token", agent)
            return sign_in_page(request, nxt, "A token has no spaces or control characters.", 400)
        try:
            identity = await identify(client, prefix)
        except SignInRefused as refused:
            await client.close()
            await console.audit.refused(prefix, peer, refused.reason, agent)
            return sign_in_page(request, nxt, refused.reason, refused.status)
        session = console.sessions.create(identity, client, token, peer)
        try:
            await console.audit.signed_in(session, agent)
        except AuditClientError as exc:
            console.sessions.pop(session.id)
            await client.close()
            log.error("sign-in of %s not recorded, so refused: %s", identity.subject, exc)
            return sign_in_page(
                request,
                nxt,
                "Your sign-in could not be recorded in the audit log, so it is refused. The"
                " console needs its own recorder token (--token-file) for origin UI.",
                503,
            )
        log.info("signed in: %s (%s) from %s", identity.subject, identity.role, peer)
        response = RedirectResponse(nxt, status_code=303)
        console.set_cookie(
            response, console.session_cookie, session.id, int(console.sessions.max_age)
        )
        console.clear_cookie(response, console.sign_in_cookie)
        return response

    async def sign_out(request: Request) -> Response:
        session = await console.session(request)
        if session is None:
            return PlainTextResponse("not signed in", 403)
        form = await request.form()
        presented = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
        if not _same_origin(request) or not session.csrf_ok(presented):
            return PlainTextResponse("CSRF check failed: sign out from the console's page", 403)
        console.sessions.pop(session.id)
        await console.audit.signed_out(session, request.headers.get("user-agent", ""))
        await session.client.close()
        response = RedirectResponse("/sign-in?note=signed-out", status_code=303)
        console.clear_cookie(response, console.session_cookie)
        return response

    async def events(request: Request, session: Session) -> Response:
        view = read_view(request, session)
        if isinstance(view, Response):
            return view
        if request.query_params.getlist("col"):
            return RedirectResponse(view.url(), status_code=303)
        error = ""
        try:
            page = await list_page(session, view)
        except InvalidArgument as exc:
            page, error = Page([], ""), _pages.explain_list_error(exc, view)
        except AuditClientError as exc:
            return await service_failed(request, session, exc)
        role = session.identity.role
        next_url = (
            view.next_page(page.next_page_token, len(page.events)).url()
            if page.next_page_token
            else ""
        )
        return console.html(
            "events.html",
            400 if error else 200,
            session=session,
            view=view,
            title=_pages.tab_label(view, role),
            tabs=_pages.tabs(view, role),
            headers=_pages.header_cells(view),
            rows=_pages.rows(page.events, view),
            chips=_pages.rule_chips(view),
            clear_url=view.without_rules().url(),
            view_fields=_pages.view_fields(view),
            column_choices=_pages.column_choices(view),
            reset_columns_url=View(view.tab, view.rules, view.sort_field, view.sort_dir).url(),
            error=error,
            first=view.at + 1,
            last=view.at + len(page.events),
            newest_url=view.first_page().url() if view.page else "",
            next_url=next_url,
            page_size=PAGE_SIZE,
        )

    async def add_rule(request: Request, session: Session) -> Response:
        "The header's filter form: the view plus one rule, then back to the page."
        view = read_view(request, session)
        if isinstance(view, Response):
            return view
        q = request.query_params
        field = q.get("field", "")
        value = q.get("value", "")
        try:
            if field in ("occurred_at", "recorded_at") and value.strip():
                value = time_value(value, int(q.get("tzo") or 0))
            rule = make_rule(field, q.get("op", ""), value)
        except (BadView, ValueError) as exc:
            return console.message(request, session, 400, "Cannot add this rule", str(exc))
        return RedirectResponse(view.with_rule(rule).url(), status_code=303)

    async def diff(request: Request, session: Session) -> Response:
        event_id = request.path_params["id"]
        note, status, the_diff = "", 200, None
        try:
            the_diff = await session.client.get_diff(event_id)
        except NotFound:
            note, status = (
                "This event does not exist, or is not one you may see (it may have been"
                " removed by retention).",
                404,
            )
        except InvalidArgument:
            note, status = "That is not an event id.", 400
        except PermissionDenied:
            note, status = "Your token may not read diffs.", 403
        except (Unavailable, DeadlineExceeded):
            note, status = "The audit service cannot be reached right now; try again.", 503
        except AuditClientError as exc:
            return await service_failed(request, session, exc)
        context = diff_context(event_id, the_diff, note)
        if request.query_params.get("fragment") == "1":
            return console.html("diff.html", status, **context)
        return console.html("diff_page.html", status, session=session, title="Diff", **context)

    def diff_context(event_id: str, the_diff: Diff | None, note: str) -> dict[str, Any]:
        rows = (
            side_by_side(the_diff.before, the_diff.after) if the_diff and the_diff.available else []
        )
        if the_diff is not None and not the_diff.available:
            note = f"No diff for this event: {the_diff.reason}"
        changed = sum(1 for r in rows if r.change != "same")
        return {
            "event_id": event_id,
            "note": note,
            "rows": rows,
            "changed": changed,
            "patch": the_diff.patch if the_diff and the_diff.available else [],
        }

    async def api_events(request: Request, session: Session) -> Response:
        view = read_view(request, session)
        if isinstance(view, Response):
            return view
        try:
            page = await list_page(session, view)
        except InvalidArgument as exc:
            return JSONResponse({"error": _pages.explain_list_error(exc, view)}, 400)
        except AuditClientError as exc:
            return await service_failed(request, session, exc)
        return JSONResponse(
            {
                "tab": view.tab,
                "events": [e.to_dict() for e in page.events],
                "next_page_token": page.next_page_token,
            }
        )

    async def api_diff(request: Request, session: Session) -> Response:
        try:
            the_diff = await session.client.get_diff(request.path_params["id"])
        except NotFound:
            return JSONResponse({"error": "no such event, or not one you may see"}, 404)
        except InvalidArgument as exc:
            return JSONResponse({"error": exc.problem}, 400)
        except AuditClientError as exc:
            return await service_failed(request, session, exc)
        return JSONResponse(the_diff.to_dict())

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/sign-in", sign_in_form, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Route("/events", need_session(events)),
        Route("/events/rule", need_session(add_rule)),
        Route("/diff/{id}", need_session(diff)),
        Route("/api/events", need_session(api_events)),
        Route("/api/diff/{id}", need_session(api_diff)),
        Route("/healthz", healthz),
        Route("/favicon.ico", no_icon),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=console.lifespan)
    app.add_middleware(SecurityHeaders)
    app.state.console = console
    return app

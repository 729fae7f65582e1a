"""The web console's security, over plain HTTP (httpx) against the real console in a child
process and the real service with a tokens file: no session, wrong tokens, members forcing
admin pages and API endpoints, CSRF, cookies, markup in events, sign-in events, limits."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from clients import AuditClient
from tests.console_helpers import (
    ADMIN,
    EXPORTER,
    MEMBER,
    OTHER_MEMBER,
    XSS,
    XSS_IMG,
    Deployment,
    deployment,
    seed,
    wait_for_events,
)
from tests.helpers import Token

ADMIN_TABS = [
    "entities",
    "blueprints",
    "actions",
    "automations",
    "scorecards",
    "integrations",
    "secrets",
    "sign-ins",
]


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("console-security")
    with deployment(tmp, "--sign-in-attempts-per-minute", "1000") as running:
        seed(running)
        yield running


def browser(deploy: Deployment) -> httpx.Client:
    return httpx.Client(base_url=deploy.url, follow_redirects=False, timeout=10)


def sign_in_csrf(http: httpx.Client) -> str:
    page = http.get("/sign-in")
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


@contextmanager
def signed_in(deploy: Deployment, token: Token) -> Iterator[httpx.Client]:
    with browser(deploy) as http:
        response = http.post(
            "/sign-in", data={"csrf": sign_in_csrf(http), "token": token.value, "next": "/"}
        )
        assert response.status_code == 303, response.text
        yield http


def page_csrf(http: httpx.Client) -> str:
    page = http.get("/events", follow_redirects=True)
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None, page.text
    return match.group(1)


# -- no session ---------------------------------------------------------------------------------


def test_without_a_session_pages_redirect_and_the_api_answers_401(deploy: Deployment) -> None:
    entity = deploy.seeded["newest_entity_update"]
    with browser(deploy) as http:
        for path in ("/", "/events?tab=entities", f"/diff/{entity}", "/events/rule?tab=entities"):
            response = http.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/sign-in"), path
        target = http.get("/events?tab=secrets&f=identifier:eq:db-password")
        assert target.headers["location"] == (
            "/sign-in?next=%2Fevents%3Ftab%3Dsecrets%26f%3Didentifier%3Aeq%3Adb-password"
        )
        for path in ("/api/events?tab=entities", f"/api/diff/{entity}"):
            response = http.get(path)
            assert response.status_code == 401, path
            assert response.json() == {"error": "sign in first"}
        assert http.post("/sign-out").status_code == 403
        # A forged cookie is no session either.
        http.cookies.set("audit_console_session", "forged-session-id")
        assert http.get("/api/events").status_code == 401
        # Assets and health hold no data and need no session.
        assert http.get("/static/console.js").status_code == 200
        assert http.get("/healthz").text == "ok"


def test_a_shared_link_opened_from_another_site_is_loaded_again_from_the_console(
    deploy: Deployment,
) -> None:
    # A SameSite=Strict cookie is not sent on a navigation from another site; the console
    # answers with a page that loads the same URL again from itself, where it is sent.
    with browser(deploy) as http:
        response = http.get("/events?tab=runs", headers={"sec-fetch-site": "cross-site"})
        assert response.status_code == 200
        assert 'http-equiv="refresh"' in response.text
        assert "/events?tab=runs&amp;again=1" in response.text
        again = http.get("/events?tab=runs&again=1", headers={"sec-fetch-site": "cross-site"})
        assert again.status_code == 303


# -- signing in ---------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_recorded_as_a_failed_sign_in(deploy: Deployment) -> None:
    with browser(deploy) as http:
        response = http.post(
            "/sign-in", data={"csrf": sign_in_csrf(http), "token": "alog_wrong", "next": "/"}
        )
        assert response.status_code == 401
        assert "does not accept this token" in response.text
        assert "audit_console_session" not in response.headers.get("set-cookie", "")
        assert http.get("/api/events").status_code == 401
        recorder = http.post(
            "/sign-in", data={"csrf": sign_in_csrf(http), "token": EXPORTER.value, "next": "/"}
        )
        assert recorder.status_code == 403
        assert "may only record events" in recorder.text
    failures = wait_for_events(
        deploy.admin,
        ("resource", "=", "sign_in"),
        ("recorded_by", "=", "audit-console"),
        ("status", "=", "failure"),
        count=2,
    )
    reasons = {e.error for e in failures}
    assert "The audit service does not accept this token." in reasons
    wrong = next(e for e in failures if "does not accept" in e.error)
    assert wrong.operation == "CREATE"
    assert wrong.origin == "UI"
    assert wrong.context["peer"] == "127.0.0.1"
    assert wrong.identifier == f"token:{wrong.context['token_sha256_prefix']}"
    assert "alog_wrong" not in str(wrong.to_dict())


def test_a_session_cookie_is_httponly_strict_and_the_token_stays_on_the_server(
    deploy: Deployment,
) -> None:
    with browser(deploy) as http:
        form = http.get("/sign-in")
        assert "httponly" in form.headers["set-cookie"].lower()
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        response = http.post(
            "/sign-in", data={"csrf": csrf.group(1), "token": ADMIN.value, "next": "/events"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/events"
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if "audit_console_session=" in c
        )
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in attributes
        assert "samesite=strict" in attributes
        assert "path=/" in attributes
        assert ADMIN.value not in cookie
        page = http.get("/events?tab=entities")
        assert page.status_code == 200
        assert ADMIN.value not in page.text
        assert page.headers["cache-control"] == "no-store"
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"


def test_sign_in_goes_only_to_paths_on_the_console(deploy: Deployment) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        with browser(deploy) as http:
            response = http.post(
                "/sign-in", data={"csrf": sign_in_csrf(http), "token": ADMIN.value, "next": target}
            )
            assert response.headers["location"] == "/", target


# -- members ------------------------------------------------------------------------------------


def test_a_member_gets_403_for_every_admin_tab_page_and_api(deploy: Deployment) -> None:
    seeded_names = ["svc-0001", "db-password", "nightly-sync", "github-acme", "run_otto_1"]
    with signed_in(deploy, MEMBER) as http:
        assert http.get("/").headers["location"] == "/events?tab=runs"
        for tab in ADMIN_TABS:
            for path in (
                f"/events?tab={tab}",
                f"/api/events?tab={tab}",
                f"/events/rule?tab={tab}&field=identifier&op=eq&value=x",
            ):
                response = http.get(path)
                assert response.status_code == 403, path
                assert not any(name in response.text for name in seeded_names), path
        page = http.get("/events?tab=runs")
        assert page.status_code == 200
        assert "My runs" in page.text
        assert "Entities" not in page.text  # no other tab is offered
        assert "run_mia_1" in page.text
        assert "run_otto_1" not in page.text


def test_a_member_sees_only_its_own_runs_whatever_it_asks_for(deploy: Deployment) -> None:
    with signed_in(deploy, MEMBER) as http:
        mine = http.get("/api/events?tab=runs").json()["events"]
        assert {e["identifier"] for e in mine} == {"run_mia_1", "run_mia_2"}
        assert {e["source"]["id"] for e in mine} == {MEMBER.principal_id}
        for rules in (
            [f"source:eq:{OTHER_MEMBER.principal_id}"],
            ["run_id:eq:run_otto_1"],
            ["resource:eq:entity"],
            ["source:ne:nobody"],
        ):
            query = "&".join(f"f={r}" for r in rules)
            events = http.get(f"/api/events?tab=runs&{query}").json()["events"]
            assert all(e["source"]["id"] == MEMBER.principal_id for e in events), rules
        for event_id in (
            deploy.seeded["otto_run"],
            deploy.seeded["secret"],
            deploy.seeded["mia_entity"],
        ):
            api = http.get(f"/api/diff/{event_id}")
            assert api.status_code == 404
            fragment = http.get(f"/diff/{event_id}?fragment=1")
            assert fragment.status_code == 404
            assert "SNAPSHOT" not in fragment.text
            assert "hunter2" not in fragment.text
        own = http.get(f"/api/diff/{deploy.seeded['mia_run']}")
        assert own.status_code == 200
        assert own.json()["after"]["secret"] == "run_mia_1-SNAPSHOT"


def test_an_admin_sees_every_tab(deploy: Deployment) -> None:
    with signed_in(deploy, ADMIN) as http:
        for tab in [*ADMIN_TABS, "runs"]:
            assert http.get(f"/events?tab={tab}").status_code == 200, tab
        secrets_tab = http.get("/api/events?tab=secrets").json()["events"]
        assert [e["identifier"] for e in secrets_tab] == ["db-password"]
        diff = http.get(f"/api/diff/{deploy.seeded['secret']}").json()
        assert "hunter2" not in str(diff)  # the service keeps fingerprints, never values


# -- CSRF ---------------------------------------------------------------------------------------


def test_state_changing_requests_need_the_csrf_token(deploy: Deployment) -> None:
    with signed_in(deploy, ADMIN) as http:
        csrf = page_csrf(http)
        assert http.post("/sign-out").status_code == 403
        assert http.post("/sign-out", data={"csrf": "wrong"}).status_code == 403
        other_site = http.post(
            "/sign-out", data={"csrf": csrf}, headers={"origin": "http://evil.example"}
        )
        assert other_site.status_code == 403
        cross = http.post(
            "/sign-out", data={"csrf": csrf}, headers={"sec-fetch-site": "cross-site"}
        )
        assert cross.status_code == 403
        assert http.get("/api/events?tab=entities").status_code == 200  # still signed in
        done = http.post("/sign-out", data={"csrf": csrf}, headers={"origin": deploy.url})
        assert done.status_code == 303
        assert http.get("/api/events?tab=entities").status_code == 401
    with browser(deploy) as http:
        # Sign-in is protected too: no form token, a wrong one, or none of our cookie.
        assert http.post("/sign-in", data={"token": ADMIN.value}).status_code == 403
        csrf = sign_in_csrf(http)
        tampered = csrf[:-1] + ("1" if csrf.endswith("0") else "0")
        bad = http.post("/sign-in", data={"token": ADMIN.value, "csrf": tampered})
        assert bad.status_code == 403
        http.cookies.clear()
        assert http.post("/sign-in", data={"token": ADMIN.value, "csrf": csrf}).status_code == 403


# -- markup in events ---------------------------------------------------------------------------


def test_markup_in_event_fields_is_rendered_as_text(deploy: Deployment) -> None:
    with signed_in(deploy, ADMIN) as http:
        page = http.get("/events?tab=entities&cols=occurred_at,identifier,blueprint,source,error")
        assert page.status_code == 200
        for raw in (XSS, XSS_IMG, "<b>bold</b>"):
            assert raw not in page.text
        assert "&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;" in page.text
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
        fragment = http.get(f"/diff/{deploy.seeded['markup']}?fragment=1")
        assert fragment.status_code == 200
        assert XSS not in fragment.text
        assert "<i>hi</i>" not in fragment.text
        assert "&lt;i&gt;hi&lt;/i&gt;" in fragment.text
        # Markup in the URL is escaped as well (a rule chip, the hidden form fields).
        rule = http.get(
            "/events?tab=entities&f=identifier:eq:" + httpx.QueryParams({"x": XSS})["x"]
        )
        assert XSS not in rule.text
        api = http.get("/api/events?tab=entities&f=identifier:eq:no-such")
        assert api.headers["content-type"] == "application/json"


# -- sign-in events, limits, sessions -----------------------------------------------------------


def test_sign_in_and_sign_out_are_recorded_with_the_consoles_own_credential(
    deploy: Deployment,
) -> None:
    with signed_in(deploy, MEMBER) as http:
        http.post("/sign-out", data={"csrf": page_csrf(http)})
    events = wait_for_events(
        deploy.admin,
        ("resource", "=", "sign_in"),
        ("recorded_by", "=", "audit-console"),
        ("identifier", "=", MEMBER.principal_id),
        count=2,
    )
    sign_out = next(e for e in events if e.operation == "DELETE")  # the newest first
    sign_in = next(
        e
        for e in events
        if e.operation == "CREATE" and e.context["session"] == sign_out.context["session"]
    )
    assert sign_in.status == "SUCCESS"
    assert sign_in.source.id == MEMBER.principal_id
    assert sign_in.context["role"] == "member"
    assert sign_in.context["session"] == sign_out.context["session"]
    assert sign_in.origin == "UI"
    diff = deploy.admin.get_diff(sign_out.id)
    assert diff.before == {
        "session": sign_in.context["session"],
        "role": "member",
        "user": MEMBER.principal_id,
    }


def test_sign_in_attempts_are_limited_per_address(tmp_path: Path) -> None:
    with deployment(tmp_path, "--sign-in-attempts-per-minute", "2") as limited:
        with browser(limited) as http:
            codes = []
            for _ in range(3):
                response = http.post(
                    "/sign-in", data={"csrf": sign_in_csrf(http), "token": "alog_guess"}
                )
                codes.append(response.status_code)
        assert codes == [401, 401, 429]


def test_an_idle_session_expires_and_the_expiry_is_recorded(tmp_path: Path) -> None:
    with deployment(tmp_path, "--session-idle-minutes", "0.01") as quick:  # 0.6 s
        with signed_in(quick, ADMIN) as http:
            assert http.get("/api/events?tab=entities").status_code == 200
            time.sleep(0.8)
            assert http.get("/api/events?tab=entities").status_code == 401
            assert http.get("/events").status_code == 303
        expired = wait_for_events(
            quick.admin, ("resource", "=", "sign_in"), ("operation", "=", "timer_expired")
        )
        assert len(expired) == 1
        assert expired[0].context["role"] == "admin"


def test_a_sign_in_that_cannot_be_recorded_is_refused(tmp_path: Path) -> None:
    with deployment(tmp_path, own_token=False) as unrecorded, browser(unrecorded) as http:
        response = http.post("/sign-in", data={"csrf": sign_in_csrf(http), "token": ADMIN.value})
        assert response.status_code == 503
        assert "could not be recorded" in response.text
        assert http.get("/api/events").status_code == 401


def test_a_revoked_token_ends_the_session(tmp_path: Path) -> None:
    with deployment(tmp_path) as running, signed_in(running, OTHER_MEMBER) as http:
        assert http.get("/api/events?tab=runs").status_code == 200
        tokens = tmp_path / "tokens.toml"
        text = tokens.read_text()
        entries = [e for e in text.split("\n\n") if OTHER_MEMBER.principal_id not in e]
        tokens.write_text("\n\n".join(entries))
        deadline = time.monotonic() + 10
        status = 200
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status = http.get("/api/events?tab=runs").status_code
        assert status == 401
        assert http.get("/events?tab=runs").headers["location"].startswith("/sign-in")


def test_the_api_names_a_bad_rule(deploy: Deployment) -> None:
    with signed_in(deploy, ADMIN) as http:
        bad_op = http.get("/api/events?tab=entities&f=status:contains:fail")
        assert bad_op.status_code == 400
        assert "CONTAINS does not apply to status" in bad_op.json()["error"]
        bad_value = http.get("/events?tab=entities&f=operation:eq:explode")
        assert bad_value.status_code == 400
        assert "is not a valid operation" in bad_value.text
        assert "Operation is explode" in bad_value.text
        assert http.get("/events?tab=nope").status_code == 400
        garbled = http.get("/events?tab=entities&page=garbled&at=1000")
        assert garbled.status_code == 400
        assert "no longer valid" in garbled.text


def test_the_admin_client_sees_what_the_console_shows(deploy: Deployment) -> None:
    with signed_in(deploy, ADMIN) as http:
        shown = http.get("/api/events?tab=integrations").json()["events"]
    with AuditClient(deploy.service.endpoint, token=ADMIN.value) as admin:
        listed = [e.to_dict() for e in admin.list(("resource", "=", "integration"))]
    assert shown == listed

"""The web console end to end in headless Chromium (Debian's package, driven by Playwright)
against the real console and the real service: sign in, tabs, sorting, filter rules, columns,
diffs, paging past 1,000 entries, a member's view, sign-out. Screenshots of the main views go
to var/artifacts/console/ (git-ignored)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from tests.console_helpers import (
    ADMIN,
    ARTIFACTS,
    ENTITIES,
    MEMBER,
    XSS,
    XSS_IMG,
    Deployment,
    deployment,
    seed,
    wait_for_events,
)
from tests.helpers import Token

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ZONE = "Asia/Kolkata"  # +05:30 all year: local times differ visibly from UTC
WAIT_MS = 10_000


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("console-browser")
    with deployment(tmp, "--sign-in-attempts-per-minute", "1000") as running:
        seed(running)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/test (it installs Debian's chromium)")
    with sync_playwright() as playwright:
        # launch() starts Chromium on a new, empty profile directory of its own.
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS * 3
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 860}, timezone_id=ZONE)
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    try:
        yield tab
    finally:
        context.close()
    assert dialogs == [], f"a script ran from event data: {dialogs}"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def sign_in(page: Page, deploy: Deployment, token: Token, path: str = "/") -> None:
    page.goto(deploy.url + path)
    expect(page.locator("h1")).to_have_text("Sign in to the audit log")
    page.fill("#token", token.value)
    page.click("form[action='/sign-in'] button[type=submit]")
    page.wait_for_url(re.compile(r"/events\?"))


def column_texts(page: Page, key: str) -> list[str]:
    index = page.locator("table.events > thead > tr > th").evaluate_all(
        f"(ths) => ths.findIndex(th => th.dataset.key === {key!r})"
    )
    assert index >= 0, f"no column {key}"
    cells = page.locator(f"table.events > tbody > tr.event > td:nth-child({index + 1})")
    return [t.strip() for t in cells.all_inner_texts()]


def header_keys(page: Page) -> list[str]:
    keys: list[str] = page.locator("table.events > thead > tr > th[data-key]").evaluate_all(
        "(ths) => ths.map(th => th.dataset.key)"
    )
    return keys


def test_admin_signs_in_and_switches_tabs(page: Page, deploy: Deployment) -> None:
    shot_page = page
    page.goto(deploy.url + "/")
    shot(shot_page, "sign-in")
    sign_in(page, deploy, ADMIN)
    expect(page.locator(".tab.active")).to_have_text("Entities")
    expect(page.locator(".who .role")).to_have_text("admin")
    tabs = page.locator("nav.tabs a").all_inner_texts()
    assert tabs == [
        "Entities",
        "Blueprints",
        "Actions",
        "Automations",
        "Scorecards",
        "Runs",
        "Integrations",
        "Secrets",
        "Sign-ins",
    ]
    assert header_keys(page) == [
        "occurred_at",
        "blueprint",
        "identifier",
        "source",
        "operation",
        "origin",
        "status",
        "error",
    ]
    expect(page.locator("th[data-key=identifier] a.sort")).to_have_text("Entity")
    # The newest entity first, full of markup, shown as text; no script ran (see the fixture).
    first = page.locator("table.events > tbody > tr.event").first
    expect(first.locator("td").nth(3)).to_have_text(XSS)
    expect(first.locator("td").nth(2)).to_have_text(XSS_IMG)
    assert page.locator("img").count() == 0
    # Dates in the browser's timezone.
    newest = deploy.admin.get_diff(deploy.seeded["newest_entity_update"])
    assert newest.available
    event = next(deploy.admin.list(("identifier", "=", "svc-1149")))
    assert event.occurred_at is not None
    local = event.occurred_at.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")
    expect(page.locator(f"tr[data-id='{event.id}'] time")).to_have_text(local)
    # Chromium may name the zone by its older alias.
    zone = re.compile(r" \((Asia/Kolkata|Asia/Calcutta)\)")
    expect(page.locator("th[data-key=occurred_at] .tz")).to_have_text(zone)
    shot(page, "entities")

    page.click("nav.tabs >> text=Runs")
    page.wait_for_url(re.compile(r"tab=runs"))
    assert header_keys(page) == [
        "occurred_at",
        "run_id",
        "source",
        "operation",
        "origin",
        "status",
        "error",
    ]
    assert set(column_texts(page, "run_id")) == {"run_mia_1", "run_mia_2", "run_otto_1"}
    page.locator("a", has_text="run_mia_1").first.click()
    page.wait_for_url(re.compile(r"f=run_id%3Aeq%3Arun_mia_1"))
    assert column_texts(page, "run_id") == ["run_mia_1", "run_mia_1"]
    expect(page.locator(".chip-label")).to_have_text("Run ID is run_mia_1")

    page.click("nav.tabs >> text=Integrations")
    assert "integration" in header_keys(page)
    assert column_texts(page, "integration") == ["github-acme"]
    assert column_texts(page, "error") == ["rate limited by GitHub"]

    page.click("nav.tabs >> text=Sign-ins")
    operations = column_texts(page, "operation")
    assert "create" in operations  # this very sign-in, recorded by the console


def test_sort_by_clicking_headers(page: Page, deploy: Deployment) -> None:
    sign_in(page, deploy, ADMIN, "/events?tab=entities")
    page.click("th[data-key=identifier] a.sort")
    page.wait_for_url(re.compile(r"sort=identifier%3Aasc"))
    expect(page.locator("th[data-key=identifier]")).to_have_attribute("aria-sort", "ascending")
    names = column_texts(page, "identifier")
    assert names == sorted(names, key=lambda n: n.encode())
    assert names[:2] == [XSS, "no-snapshot"] or names[0] < names[-1]
    page.click("th[data-key=identifier] a.sort")
    page.wait_for_url(re.compile(r"sort=identifier%3Adesc"))
    expect(page.locator("th[data-key=identifier]")).to_have_attribute("aria-sort", "descending")
    names = column_texts(page, "identifier")
    assert names == sorted(names, key=lambda n: n.encode(), reverse=True)
    page.click("th[data-key=occurred_at] a.sort")
    page.wait_for_url(re.compile(r"sort=occurred_at%3Adesc|tab=entities$"))
    dates = column_texts(page, "occurred_at")
    assert dates == sorted(dates, reverse=True) or "sort=" not in page.url


def add_rule(page: Page, key: str, op: str, value: str, *, choose: bool = False) -> None:
    header = page.locator(f"th[data-key={key}]")
    header.locator("summary").click()
    form = header.locator("form.filter-form")
    form.locator("select[name=op]").select_option(op)
    if choose:
        form.locator("select[name=value]").select_option(value)
    else:
        form.locator("input[name=value]").fill(value)
    with page.expect_navigation():
        form.locator("button[type=submit]").click()


def test_filter_rules_from_the_headers_and_the_view_in_the_url(
    page: Page, deploy: Deployment
) -> None:
    sign_in(page, deploy, ADMIN, "/events?tab=entities")
    add_rule(page, "source", "contains", "ALICE")
    expect(page.locator(".chip-label")).to_have_text(["Source contains ALICE"])
    sources = column_texts(page, "source")
    assert sources
    assert all(s == "alice@example.com" for s in sources)
    add_rule(page, "operation", "eq", "delete", choose=True)
    expect(page.locator(".chip-label")).to_have_text(
        ["Source contains ALICE", "Operation is delete"]
    )
    assert set(column_texts(page, "operation")) == {"delete"}
    assert set(column_texts(page, "source")) == {"alice@example.com"}
    assert len(column_texts(page, "operation")) == ENTITIES // 10  # every tenth, all by alice
    add_rule(page, "occurred_at", "lt", "2000-01-01")
    expect(page.locator("tr.empty")).to_contain_text("No entries match these rules")
    shot(page, "filters")
    shared = page.url
    assert "f=source%3Acontains%3AALICE" in shared
    assert "f=occurred_at%3Alt%3A1999-12-31T18%3A30%3A00" in shared  # local midnight, in UTC

    page.click("a[aria-label='Remove rule: Source contains ALICE']")
    expect(page.locator(".chip-label")).to_have_count(2)
    page.locator(".chip-remove").last.click()  # the date rule
    expect(page.locator(".chip-label")).to_have_text(["Operation is delete"])
    assert set(column_texts(page, "source")) == {"alice@example.com"}  # tenths are even
    assert len(column_texts(page, "operation")) == ENTITIES // 10

    # The URL is the view: opened elsewhere, it shows the same rules.
    other = page.context.new_page()
    other.goto(page.url)
    expect(other.locator(".chip-label")).to_have_text(["Operation is delete"])
    other.close()
    page.click("a.clear")
    expect(page.locator(".chip")).to_have_count(0)


def test_hide_and_reorder_columns_remembered_in_the_browser(page: Page, deploy: Deployment) -> None:
    # A hundred rows, so that each change reloads quickly; the rule stays in the URL.
    sign_in(page, deploy, ADMIN, "/events?tab=entities&f=identifier:starts:svc-00")
    page.click("#column-panel summary")
    with page.expect_navigation():
        page.locator("#column-list li[data-key=error] input").uncheck()
    assert "error" not in header_keys(page)
    expect(page.locator("#column-panel")).to_have_attribute("open", "")
    with page.expect_navigation():
        page.locator("#column-list li[data-key=source] button.up").click()
    keys = header_keys(page)
    assert keys.index("source") < keys.index("identifier")
    with page.expect_navigation():
        page.locator("#column-list li[data-key=recorded_by] input").check()
    assert header_keys(page)[-1] == "recorded_by"
    assert set(column_texts(page, "recorded_by")) == {ADMIN.principal_id}
    shot(page, "columns")
    chosen = header_keys(page)

    # Remembered: the tab opened again without ?cols= shows this browser's layout.
    page.goto(deploy.url + "/events?tab=entities")
    page.wait_for_url(re.compile(r"cols="))
    assert header_keys(page) == chosen
    # Other tabs keep their own defaults.
    page.click("nav.tabs >> text=Runs")
    assert "error" in header_keys(page)
    # A fresh browser profile has none of it.
    fresh = page.context.browser
    assert fresh is not None
    other = fresh.new_context(timezone_id=ZONE)
    try:
        stranger = other.new_page()
        stranger.goto(deploy.url + "/events?tab=entities")
        expect(stranger.locator("h1")).to_have_text("Sign in to the audit log")
    finally:
        other.close()
    page.goto(deploy.url + "/events?tab=entities&f=identifier:starts:svc-00")
    page.wait_for_url(re.compile(r"cols="))
    page.click("#column-panel summary")
    page.click("#reset-columns")
    page.wait_for_url(re.compile(r"tab=entities&f=identifier%3Astarts%3Asvc-00$"))
    assert "error" in header_keys(page)
    page.goto(deploy.url + "/events?tab=entities")
    assert "cols=" not in page.url


def test_expand_a_diff_and_see_why_one_is_missing(page: Page, deploy: Deployment) -> None:
    sign_in(page, deploy, ADMIN, "/events?tab=entities")
    entity = deploy.seeded["mia_entity"]
    row = page.locator(f"tr[data-id='{entity}']")
    row.locator("a.expand").click()
    diff = page.locator("tr.diff-row .diff").first
    expect(diff.locator(".diff-summary")).to_contain_text("1 key changed")
    changed = diff.locator("tr.diff-changed")
    expect(changed).to_have_count(1)
    expect(changed.locator(".diff-key")).to_contain_text("image")
    expect(changed.locator(".diff-before")).to_have_text('"payments:1.0"')
    expect(changed.locator(".diff-after")).to_have_text('"payments:1.1"')
    expect(diff.locator("tr.diff-same .diff-key")).to_have_text("replicas")
    expect(row.locator("a.expand")).to_have_attribute("aria-expanded", "true")
    shot(page, "diff")
    row.locator("a.expand").click()
    expect(page.locator("tr.diff-row")).to_have_count(0)

    missing = page.locator(f"tr[data-id='{deploy.seeded['no_snapshot']}'] a.expand")
    missing.click()
    expect(page.locator("tr.diff-row .diff-note")).to_contain_text("No diff for this event:")

    markup = page.locator(f"tr[data-id='{deploy.seeded['markup']}'] a.expand")
    markup.click()
    added = page.locator(f"tr[data-id='{deploy.seeded['markup']}'] + tr.diff-row tr.diff-added")
    expect(added.first.locator(".diff-key")).to_contain_text(XSS)
    assert page.locator("img").count() == 0


def test_page_past_the_newest_thousand(page: Page, deploy: Deployment) -> None:
    sign_in(page, deploy, ADMIN, "/events?tab=entities")
    rows = page.locator("table.events > tbody > tr.event")
    expect(rows).to_have_count(1000)
    expect(page.locator(".pager .range")).to_have_text("Entries 1\u20131,000")
    expect(page.locator(".pager .newest")).to_have_count(0)
    first_ids = set(rows.evaluate_all("(rs) => rs.map(r => r.dataset.id)"))
    page.click(".pager a.next")
    page.wait_for_url(re.compile(r"page="))
    total = ENTITIES + 3  # the run's entity change, the one without snapshots, the markup
    expect(page.locator(".pager .range")).to_have_text(f"Entries 1,001\u2013{total:,}")
    expect(rows).to_have_count(total - 1000)
    second_ids = set(rows.evaluate_all("(rs) => rs.map(r => r.dataset.id)"))
    assert not first_ids & second_ids
    assert column_texts(page, "identifier")[-1] == "svc-0000"  # the oldest, last
    expect(page.locator(".pager a.next")).to_have_count(0)
    shot(page, "page-2")
    page.click(".pager a.newest")
    expect(page.locator(".pager .range")).to_have_text("Entries 1\u20131,000")


def test_a_member_sees_only_its_own_runs(page: Page, deploy: Deployment) -> None:
    sign_in(page, deploy, MEMBER)
    assert page.locator("nav.tabs a").all_inner_texts() == ["My runs"]
    expect(page.locator(".who .user")).to_have_text("Mia")
    assert set(column_texts(page, "run_id")) == {"run_mia_1", "run_mia_2"}
    assert set(column_texts(page, "source")) == {"Mia"}
    shot(page, "member-my-runs")
    page.goto(deploy.url + "/events?tab=secrets")
    expect(page.locator("h1")).to_have_text("Not allowed")
    assert "db-password" not in page.content()
    response = page.request.get(deploy.url + "/api/events?tab=entities")
    assert response.status == 403
    other = page.request.get(f"{deploy.url}/api/diff/{deploy.seeded['otto_run']}")
    assert other.status == 404


def test_sign_out(page: Page, deploy: Deployment) -> None:
    sign_in(page, deploy, ADMIN, "/events?tab=sign-ins")
    started = datetime.now().astimezone()
    page.click("form.sign-out button")
    page.wait_for_url(re.compile(r"/sign-in"))
    expect(page.locator(".notice")).to_have_text("Signed out.")
    page.goto(deploy.url + "/events?tab=entities")
    expect(page.locator("h1")).to_have_text("Sign in to the audit log")
    assert page.context.cookies() == [] or all(
        c["name"] != "audit_console_session" for c in page.context.cookies()
    )
    sign_outs = wait_for_events(
        deploy.admin,
        ("resource", "=", "sign_in"),
        ("operation", "=", "delete"),
        ("occurred_at", ">=", started),
    )
    assert sign_outs
    assert sign_outs[0].context["role"] == "admin"

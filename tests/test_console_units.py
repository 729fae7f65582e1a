"""The console's parts without a browser: views and their URLs, rules, times, diff rows, the
settings table of docs/console.md; and scripts/serve starting the console beside the
service."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from console import SETTINGS
from console._diff import side_by_side
from console._settings import SettingsError, parse
from console._views import BadView, Rule, View, make_rule, parse_rule, time_value
from tests.auditctl_helpers import free_port
from tests.helpers import REPO


def view_of(url: str) -> View:
    query = parse_qsl(urlsplit(url).query)
    params = dict(query)
    return View.parse(params, [v for k, v in query if k == "f"], "entities")


def test_each_tab_has_the_columns_the_issue_names() -> None:
    common = ["occurred_at", "source", "operation", "origin", "status", "error"]
    extra = {"entities": ["blueprint", "identifier"], "integrations": ["integration"]}
    extra["runs"] = ["run_id"]
    for tab in (
        "entities",
        "blueprints",
        "actions",
        "automations",
        "scorecards",
        "runs",
        "integrations",
        "secrets",
        "sign-ins",
    ):
        view = View(tab)
        assert view.column_keys == [common[0], *extra.get(tab, []), *common[1:]], tab
        headers = [view.header(c) for c in view.columns()]
        assert headers[0] == "Date"
        assert {"Source", "Operation", "Type", "Status", "Error"} <= set(headers)
    assert [View("entities").header(c) for c in View("entities").columns()][1:3] == [
        "Blueprint",
        "Entity",
    ]


def test_a_view_round_trips_through_its_url() -> None:
    view = View(
        "runs",
        (Rule("source", "contains", "a:b c&d"), Rule("status", "eq", "failure,success")),
        "identifier",
        "asc",
        ("occurred_at", "run_id"),
        "TOKEN",
        1000,
    )
    assert view_of(view.url()) == view
    assert view.filters()[1].values == ("failure", "success")
    assert view.filters()[-1].field == "resource"
    assert view.order_by == "identifier asc"
    assert view_of(View("entities").url()) == View("entities")
    # Changing the view starts from the newest page again.
    assert view.with_rule(Rule("error", "contains", "x")).page == ""
    assert view.sorted_by("identifier").sort_dir == "desc"
    assert view.sorted_by("occurred_at").sort_dir == "desc"
    assert view.sorted_by("source").sort_dir == "asc"
    assert view.without_rule(0).rules == (Rule("status", "eq", "failure,success"),)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"tab": "nope"}, "unknown tab"),
        ({"sort": "nope:asc"}, "cannot sort by"),
        ({"sort": "identifier:sideways"}, "asc or desc"),
        ({"cols": "occurred_at,nope"}, "unknown column"),
        ({"at": "x"}, "not a number"),
    ],
)
def test_a_bad_view_says_what_is_wrong(params: dict[str, str], problem: str) -> None:
    with pytest.raises(BadView, match=problem):
        View.parse(params, [], "entities")


def test_rules() -> None:
    assert parse_rule("context.cluster:starts:prod-") == Rule("context.cluster", "starts", "prod-")
    assert make_rule("source", "~", "x") == Rule("source", "contains", "x")
    assert make_rule("status", "EQUALS", "failure").op == "eq"
    assert parse_rule("error:contains:a:b").value == "a:b"
    for text, problem in (
        ("source", "FIELD:OP:VALUE"),
        ("nope:eq:x", "cannot filter on 'nope'"),
        ("status:contains:x", "CONTAINS does not apply to status"),
        ("occurred_at:starts:2026", "STARTS_WITH does not apply"),
        ("source:eq:", "needs a value"),
        ("source:like:x", "unknown operator"),
    ):
        with pytest.raises(BadView, match=problem):
            parse_rule(text)
    assert Rule("occurred_at", "lt", "2026-01-01T00:00:00Z").label == (
        "Date before 2026-01-01T00:00:00Z"
    )


def test_times_typed_into_a_filter_are_the_browsers_local_times() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert time_value("2026-01-31", 60, now) == "2026-01-30T23:00:00Z"
    assert time_value("2026-01-31T14:00", -300, now) == "2026-01-31T19:00:00Z"
    assert time_value("2026-01-31T14:00:00+02:00", 60, now) == "2026-01-31T12:00:00Z"
    assert time_value("2h", 330, now) == "2026-03-10T10:00:00Z"
    with pytest.raises(BadView, match="not a time"):
        time_value("yesterday-ish", 0, now)


def test_diff_rows_side_by_side() -> None:
    rows = side_by_side(
        {"spec": {"replicas": 2, "image": "a"}, "tags": ["x", "y"], "gone": True, "same": 1},
        {"spec": {"replicas": 3, "image": "a"}, "tags": ["x"], "new": {}, "same": 1},
    )
    assert [(r.key, r.change) for r in rows] == [
        ("gone", "removed"),
        ("new", "added"),
        ("same", "same"),
        ("spec.image", "same"),
        ("spec.replicas", "changed"),
        ("tags[0]", "same"),
        ("tags[1]", "removed"),
    ]
    assert rows[1].after == "{}"
    assert rows[4].before == "2"
    assert rows[4].after == "3"
    assert side_by_side({}, {}) == []


def test_the_docs_list_every_setting() -> None:
    text = (REPO / "docs" / "console.md").read_text()
    table = {
        m.group(1): (m.group(2), m.group(3), m.group(4))
        for m in re.finditer(r"^\| `--([a-z-]+)` \| `(\w+)` \| (.+?) \| (.+?) \|$", text, re.M)
    }
    assert set(table) == {s.flag[2:] for s in SETTINGS}
    for s in SETTINGS:
        env, default, meaning = table[s.flag[2:]]
        assert env == s.env
        shown = "(none)" if s.default == "" else f"`{str(s.default).lower()}`"
        if s.type is not bool:
            shown = "(none)" if s.default == "" else f"`{s.default}`"
        assert default == shown, s.name
        assert meaning == s.help, s.name


def test_settings_come_from_flags_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITLOG_CONSOLE_SERVICE", "127.0.0.2:1")
    monkeypatch.setenv("AUDITLOG_CONSOLE_SECURE_COOKIES", "yes")
    settings = parse(["--listen", "127.0.0.1:0"])
    assert settings.listen == "127.0.0.1:0"
    assert settings.service == "127.0.0.2:1"
    assert settings.secure_cookies is True
    assert parse(["--service", "127.0.0.1:9"]).service == "127.0.0.1:9"
    monkeypatch.setenv("AUDITLOG_CONSOLE_TIMEOUT", "soon")
    with pytest.raises(SettingsError, match="not a valid float"):
        parse([])


def test_scripts_serve_starts_the_console_beside_the_service(tmp_path: os.PathLike[str]) -> None:
    service_port = free_port()
    env = {
        **os.environ,
        "AUDITLOG_LISTEN": f"127.0.0.1:{service_port}",
        "AUDITLOG_DB": str(tmp_path) + "/audit.db",
        "AUDITLOG_CONSOLE_LISTEN": "127.0.0.1:0",
    }
    process = subprocess.Popen(
        [str(REPO / "scripts" / "serve")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    try:
        url, service = "", ""
        deadline = time.monotonic() + 60
        while not (url and service) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if match := re.search(r"audit-console listening on (http://\S+)", line):
                url = match.group(1)
            if match := re.search(r"audit-service listening on (\S+)", line):
                service = match.group(1)
        assert url, "no console URL"
        assert service == f"127.0.0.1:{service_port}"
        with httpx.Client(base_url=url, timeout=10) as http:
            form = http.get("/sign-in")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf is not None
            http.post("/sign-in", data={"csrf": csrf.group(1), "token": ""})  # --dev
            assert http.get("/api/events?tab=sign-ins").status_code == 200
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()

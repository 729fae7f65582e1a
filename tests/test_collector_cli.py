"""``audit-collector`` on the command line, and the docs and manifests kept honest against the
code: every option, counter and context key is documented, every flag a manifest uses exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collectors import kubernetes
from collectors.cli import KINDS
from collectors.kubernetes import mapping, webhook
from collectors.runtime.app import COMMON_OPTIONS
from collectors.runtime.options import CONFIG_OPTION, Option
from collectors.runtime.stats import RUNTIME_COUNTERS
from tests.collector_helpers import run_collector
from tests.helpers import REPO

COLLECTORS_DOC = (REPO / "docs" / "collectors.md").read_text()
KUBERNETES_DOC = (REPO / "docs" / "kubernetes-collector.md").read_text()
DEPLOY = REPO / "deploy" / "kubernetes"


def option_row(option: Option) -> str:
    "The docs' table row for ``option``: what the code says, verbatim."
    if isinstance(option.default, bool):
        default = f"`{str(option.default).lower()}`"
    elif option.default in (None, "", {}):
        default = "(none)"
    else:
        default = f"`{option.default}`"
    text = option.help + (f" (one of {', '.join(option.choices)})" if option.choices else "")
    return f"| `{option.flag}` | `{option.env}` | {default} | {text} |"


@pytest.mark.parametrize("option", [CONFIG_OPTION, *COMMON_OPTIONS], ids=lambda o: o.name)
def test_collectors_doc_has_a_row_for_every_common_option(option: Option) -> None:
    row = option_row(option)
    assert row in COLLECTORS_DOC, f"docs/collectors.md needs this row:\n{row}"


@pytest.mark.parametrize("option", kubernetes.OPTIONS, ids=lambda o: o.name)
def test_kubernetes_doc_has_a_row_for_every_option(option: Option) -> None:
    row = option_row(option)
    assert row in KUBERNETES_DOC, f"docs/kubernetes-collector.md needs this row:\n{row}"


def test_option_tables_have_no_stale_rows() -> None:
    def flags(doc: str) -> set[str]:
        return set(re.findall(r"^\| `(--[a-z-]+)` \| `AUDIT_COLLECTOR_", doc, re.MULTILINE))

    assert flags(COLLECTORS_DOC) == {o.flag for o in (CONFIG_OPTION, *COMMON_OPTIONS)}
    assert flags(KUBERNETES_DOC) == {o.flag for o in kubernetes.OPTIONS}


@pytest.mark.parametrize("name", RUNTIME_COUNTERS)
def test_collectors_doc_explains_every_stats_counter(name: str) -> None:
    assert f"| `{name}` |" in COLLECTORS_DOC


@pytest.mark.parametrize("name", kubernetes.COUNTERS)
def test_kubernetes_doc_explains_every_counter(name: str) -> None:
    assert f"| `{name}` |" in KUBERNETES_DOC


@pytest.mark.parametrize("key", mapping.CONTEXT_KEYS)
def test_kubernetes_doc_explains_every_context_key(key: str) -> None:
    assert f"| `{key}` |" in KUBERNETES_DOC


def test_the_collector_manifest_uses_only_real_options() -> None:
    manifest = (DEPLOY / "collector-static-pod.yaml").read_text()
    known = {o.flag for o in (*COMMON_OPTIONS, *kubernetes.OPTIONS)}
    used = set(re.findall(r"- (--[a-z-]+)[= ]", manifest))
    assert used, "no flags found in the manifest"
    assert used <= known, used - known
    envs = set(re.findall(r"name: (AUDIT_COLLECTOR_[A-Z_]+)", manifest))
    assert envs <= {o.env for o in (*COMMON_OPTIONS, *kubernetes.OPTIONS)}


def test_the_webhook_kubeconfig_and_policy_match_the_collector() -> None:
    kubeconfig = (DEPLOY / "webhook-kubeconfig.yaml").read_text()
    assert re.search(rf"server: https://127\.0\.0\.1:8650{webhook.PATH}\n", kubeconfig)
    policy = (DEPLOY / "audit-policy.yaml").read_text()
    assert "omitStages:\n  - RequestReceived" in policy
    assert "apiVersion: audit.k8s.io/v1\nkind: Policy" in policy


# -- the command --------------------------------------------------------------------------


def test_usage_lists_the_kinds() -> None:
    result = run_collector("--help")
    assert result.returncode == 0
    for kind in KINDS:
        assert kind in result.stdout
    assert run_collector().returncode == 2


def test_every_kind_of_the_command_line_contract_is_built() -> None:
    assert set(KINDS) == {"kubernetes", "git", "aws", "terraform"}


def test_an_unknown_kind_is_refused() -> None:
    result = run_collector("mainframe")
    assert result.returncode == 2
    assert "unknown KIND 'mainframe'" in result.stderr


def test_kubernetes_help_lists_every_option_and_its_environment_variable() -> None:
    result = run_collector("kubernetes", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in (CONFIG_OPTION, *COMMON_OPTIONS, *kubernetes.OPTIONS):
        assert option.flag in text
        assert option.env in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-webhook"], "nothing to collect: --no-webhook without --audit-log"),
        (["--spool-max-events", "many"], "--spool-max-events"),
        (["--token-file", "/nonexistent/token"], "cannot read --token-file"),
        (["--listen-client-ca-file", "/ca.pem"], "--listen-client-ca-file needs"),
        (["--listen", "no-port"], "is not HOST:PORT"),
        (["--log-format", "xml"], "invalid choice"),
    ],
)
def test_start_up_errors_say_what_to_change(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_collector("kubernetes", "--spool", f"{tmp_path}/s.db", *args)
    assert result.returncode == 2
    assert message in result.stderr

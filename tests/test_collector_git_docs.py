"""docs/git-collector.md kept honest against the code: every option, counter and context key
of ``audit-collector git`` is documented, and ``--help`` lists every option."""

from __future__ import annotations

import re

import pytest

from collectors import git as git_collector
from collectors.git import bitbucket, github, gitlab
from collectors.runtime.app import COMMON_OPTIONS
from collectors.runtime.options import CONFIG_OPTION, Option
from tests.collector_helpers import run_collector
from tests.helpers import REPO

GIT_DOC = (REPO / "docs" / "git-collector.md").read_text()
COLLECTORS_DOC = (REPO / "docs" / "collectors.md").read_text()


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


@pytest.mark.parametrize("option", git_collector.OPTIONS, ids=lambda o: o.name)
def test_the_doc_has_a_row_for_every_option(option: Option) -> None:
    row = option_row(option)
    assert row in GIT_DOC, f"docs/git-collector.md needs this row:\n{row}"


def test_the_option_table_has_no_stale_rows() -> None:
    flags = set(re.findall(r"^\| `(--[a-z-]+)` \| `AUDIT_COLLECTOR_", GIT_DOC, re.MULTILINE))
    assert flags == {o.flag for o in git_collector.OPTIONS}


@pytest.mark.parametrize("name", git_collector.COUNTERS)
def test_the_doc_explains_every_counter(name: str) -> None:
    assert f"| `{name}` |" in GIT_DOC


@pytest.mark.parametrize("key", git_collector.CONTEXT_KEYS)
def test_the_doc_explains_every_context_key(key: str) -> None:
    assert f"| `{key}` |" in GIT_DOC


@pytest.mark.parametrize(
    "blueprint", [*github.BLUEPRINTS, *gitlab.BLUEPRINTS, *bitbucket.BLUEPRINTS]
)
def test_the_mapping_table_names_every_default_blueprint(blueprint: str) -> None:
    assert f"| `{blueprint}` |" in GIT_DOC


def test_collectors_doc_links_the_git_doc() -> None:
    assert "| `git` |" in COLLECTORS_DOC
    assert "[git-collector.md](git-collector.md)" in COLLECTORS_DOC


def test_git_help_lists_every_option_and_its_environment_variable() -> None:
    result = run_collector("git", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in (CONFIG_OPTION, *COMMON_OPTIONS, *git_collector.OPTIONS):
        assert option.flag in text
        assert option.env in text

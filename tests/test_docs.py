"""The docs list every setting, filter field and operator the code has, so they cannot drift."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from audit_service import query
from audit_service.config import SETTINGS, Setting, Settings
from clients import pb
from tests.helpers import REPO

README = (REPO / "README.md").read_text()
FILTERS_DOC = (REPO / "docs" / "filters.md").read_text()
DATA_MODEL_DOC = (REPO / "docs" / "data-model.md").read_text()


def _default_text(setting: Setting) -> str:
    if setting.default == "":
        return "(none)"
    if isinstance(setting.default, bool):
        return f"`{str(setting.default).lower()}`"
    return f"`{setting.default}`"


def settings_row(setting: Setting) -> str:
    "The README's configuration table row for ``setting``: what the code says, verbatim."
    help_text = setting.help
    if setting.choices:
        help_text += f" (one of {', '.join(setting.choices)})"
    return f"| `{setting.flag}` | `{setting.env}` | {_default_text(setting)} | {help_text} |"


def settings_table() -> str:
    "The whole table (print it with `python -c` to update the README)."
    header = "| flag | environment | default | meaning |\n|---|---|---|---|\n"
    return header + "\n".join(settings_row(s) for s in SETTINGS)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_readme_documents_every_setting(setting: Setting) -> None:
    row = settings_row(setting)
    assert row in README, f"README.md's configuration table needs this row:\n{row}"


def test_readme_settings_table_has_no_stale_rows() -> None:
    documented = set(re.findall(r"^\| `(--[a-z-]+)` \|", README, re.MULTILINE))
    assert documented == {s.flag for s in SETTINGS}


def test_settings_defaults_match_the_setting_table() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert defaults == {s.name: s.default for s in SETTINGS}


def test_cli_help_lists_every_setting() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "audit_service", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
        check=True,
    )
    for setting in SETTINGS:
        assert setting.flag in result.stdout
        assert setting.env in result.stdout


@pytest.mark.parametrize("name", list(query.FIELDS))
def test_filters_doc_row_for_every_field(name: str) -> None:
    spec = query.FIELDS[name]
    match = re.search(rf"^\| `{name}` \| (\w+) \| ([A-Z_, ]+) \|", FILTERS_DOC, re.MULTILINE)
    assert match, f"docs/filters.md has no table row for `{name}`"
    assert match.group(1) == spec.kind.value
    documented_ops = {op.strip() for op in match.group(2).split(",")}
    assert documented_ops == {op.value for op in query.OPS_BY_KIND[spec.kind]}


def test_filters_doc_mentions_context_fields_and_every_op() -> None:
    assert f"`{query.CONTEXT_PREFIX}<key>`" in FILTERS_DOC
    for op in query.Op:
        assert f"FILTER_OP_{op.value}" in FILTERS_DOC
    assert f"`{query.DEFAULT_SORT}`" in FILTERS_DOC
    assert str(query.DEFAULT_PAGE_SIZE) in FILTERS_DOC
    assert str(query.MAX_PAGE_SIZE) in FILTERS_DOC


@pytest.mark.parametrize(
    "enum_type", [pb.ResourceType, pb.Operation, pb.SourceKind, pb.Origin, pb.Status]
)
def test_data_model_doc_names_every_enum_value(enum_type: EnumTypeWrapper) -> None:
    for value in enum_type.DESCRIPTOR.values:
        if value.number != 0:
            assert value.name in DATA_MODEL_DOC


def test_data_model_doc_names_every_event_field() -> None:
    for field in pb.AuditEvent.DESCRIPTOR.fields:
        assert f"`{field.name}`" in DATA_MODEL_DOC


def test_docs_links_in_readme_resolve() -> None:
    for target in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (REPO / target).is_file(), target

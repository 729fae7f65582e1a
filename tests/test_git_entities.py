"""The GitOps follower's pure parts on their own: entity globs, entity files (and what makes one
unreadable), entity diffs, payload times, and URLs with credentials."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from collectors.git.changes import parse_time
from collectors.git.entities import (
    DEFAULT_GLOB,
    EntityFileError,
    EntityGlob,
    FileState,
    diff_entities,
    entity_map,
    parse_entities,
)
from collectors.git.gitops import Repository, default_origin, display_name, is_remote
from collectors.git.repo import basic_auth_header, redact_url


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        (".auditlog/a.yaml", True),
        (".auditlog/a.yml", True),
        (".auditlog/deep/er/a.json", True),
        (".auditlog/a.txt", False),
        (".auditlog/a.yaml.bak", False),
        ("x/.auditlog/a.yaml", False),
        (".auditlogs/a.yaml", False),
        ("a.yaml", False),
    ],
)
def test_the_default_glob(path: str, matches: bool) -> None:
    glob = EntityGlob(DEFAULT_GLOB)
    assert glob.matches(path) is matches
    assert glob.prefix == ".auditlog"


def test_other_globs() -> None:
    assert EntityGlob("**/*.yaml").matches("a.yaml")
    assert EntityGlob("**/*.yaml").matches("a/b/c.yaml")
    assert EntityGlob("**/*.yaml").prefix == ""
    assert EntityGlob("catalog/*/port.{yml,json}").prefix == "catalog"
    assert EntityGlob("catalog/*/port.{yml,json}").matches("catalog/svc/port.json")
    assert not EntityGlob("catalog/*/port.{yml,json}").matches("catalog/a/b/port.json")
    assert EntityGlob("svc-[ab]?.yaml").matches("svc-a1.yaml")
    assert not EntityGlob("svc-[!ab]?.yaml").matches("svc-a1.yaml")
    assert EntityGlob("a+b(c).yaml").matches("a+b(c).yaml")  # regex characters are literal
    with pytest.raises(ValueError, match="empty"):
        EntityGlob("")


def test_one_entity_a_list_and_documents() -> None:
    one = parse_entities("a.yaml", b"identifier: x\nblueprint: service\ntitle: X\n")
    assert one == [{"identifier": "x", "blueprint": "service", "title": "X"}]
    many = parse_entities(
        "a.yaml",
        b"- {identifier: x, blueprint: s}\n- {identifier: y, blueprint: s, properties: {n: 1}}\n"
        b"---\nidentifier: z\nblueprint: t\nrelations: {team: a}\n---\n",
    )
    assert [e["identifier"] for e in many] == ["x", "y", "z"]
    assert (
        parse_entities("a.json", b'[{"identifier": "j", "blueprint": "s"}]')[0]["identifier"] == "j"
    )
    assert parse_entities("empty.yaml", b"") == []
    assert parse_entities("empty.json", b"  \n") == []
    values = parse_entities(
        "v.yaml",
        b"identifier: v\nblueprint: s\nproperties:\n  when: 2024-01-02T03:04:05Z\n"
        b"  enabled: yes\n  n: 0x10\n  none: null\n  2: two\n",
    )[0]["properties"]
    assert values == {
        "when": "2024-01-02T03:04:05Z",
        "enabled": True,
        "n": 16,
        "none": None,
        "2": "two",
    }


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("a.yaml", b"a: [1, 2\n", "not valid YAML: "),
        ("a.yaml", b"a: 1\n\tb: 2\n", "(line 2, column 1)"),
        ("a.json", b'{"a": }', "not valid JSON: Expecting value (line 1, column 7)"),
        ("a.yaml", b"\xff\xfe", "not UTF-8 (byte 0)"),
        ("a.yaml", b"42\n", "the file is a int, not an entity"),
        ("a.yaml", b"- identifier: x\n  blueprint: s\n- 7\n", "item 2 is a int"),
        ("a.yaml", b"blueprint: s\n", "identifier is missing"),
        ("a.yaml", b"identifier: ''\nblueprint: s\n", "identifier is not a non-empty string"),
        ("a.yaml", b"identifier: 12\nblueprint: s\n", "identifier is not a non-empty string (12)"),
        ("a.yaml", b"identifier: x\nblueprint: [s]\n", "blueprint is not"),
        ("a.yaml", b"identifier: x\nblueprint: s\ntitle: [t]\n", "title is not a string"),
        (
            "a.yaml",
            b"identifier: x\nblueprint: s\nproperties: [p]\n",
            "properties is not an object",
        ),
        ("a.yaml", b"identifier: x\nblueprint: s\np: .nan\n", "is not a JSON number"),
        (
            "a.yaml",
            b"identifier: x\nblueprint: s\np: !!binary aGk=\n",
            "a bytes is not a JSON value",
        ),
        ("a.yaml", b"identifier: x\nblueprint: s\np: &a [*a]\n", "nests deeper than 32"),
        ("a.yaml", b"identifier: x\nblueprint: s\n? [a, b]\n: c\n", "found unhashable key"),
        ("a.yaml", b"!!python/object:os.system {}\n", "not valid YAML"),
        ("a.yaml", b"identifier: " + b"x" * 513 + b"\nblueprint: s\n", "over 512 characters"),
        ("a.json", b"[" * 100_000, "nests too deep to be read"),
    ],
)
def test_files_that_are_not_entities(path: str, data: bytes, message: str) -> None:
    with pytest.raises(EntityFileError) as raised:
        parse_entities(path, data)
    assert message in str(raised.value)


def test_aliases_expanded_past_the_budget_are_refused() -> None:
    lines = ["identifier: x", "blueprint: s", "l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 7):
        refs = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"l{level}: &l{level} [{refs}]")
    with pytest.raises(EntityFileError, match="more than 200000 values"):
        parse_entities("laughs.yaml", "\n".join(lines).encode())


def state(path: str, *entities: dict[str, Any]) -> dict[str, FileState]:
    return {path: FileState("blob", list(entities))}


def test_diffs_by_entity_not_by_file() -> None:
    a = {"identifier": "a", "blueprint": "s", "title": "A"}
    b = {"identifier": "b", "blueprint": "s"}
    old = entity_map({**state("x.yaml", a), **state("y.yaml", b)})
    moved = entity_map(state("z.yaml", b, a))
    assert diff_entities(old, moved) == []
    changed = entity_map(state("z.yaml", {**a, "title": "A2"}))
    [update, delete] = diff_entities(old, changed)
    assert (update.operation, update.key, update.previous_path) == ("UPDATE", "s/a", "x.yaml")
    assert (delete.operation, delete.key, delete.path) == ("DELETE", "s/b", "y.yaml")
    # true and 1 are different values (Python would call them equal).
    flag = entity_map(state("x.yaml", {**a, "properties": {"on": True}}))
    one = entity_map(state("x.yaml", {**a, "properties": {"on": 1}}))
    assert [c.operation for c in diff_entities(flag, one)] == ["UPDATE"]
    # The same key in two files: the first path wins.
    twice = entity_map({**state("b.yaml", {**a, "title": "B"}), **state("a.yaml", a)})
    assert twice["s/a"][0] == "a.yaml"


def test_payload_times() -> None:
    expected = datetime(2026, 1, 10, 9, 30, tzinfo=UTC)
    assert parse_time("2026-01-10T09:30:00Z") == expected
    assert parse_time("2026-01-10T10:30:00+01:00") == expected
    assert parse_time("2026-01-10 09:30:00 UTC") == expected
    assert parse_time(int(expected.timestamp())) == expected
    assert parse_time("yesterday") is None
    assert parse_time(True) is None
    assert parse_time(10**20) is None


def test_urls_and_names() -> None:
    url = "https://x-access-token:ghp_secret@github.com/acme/catalog.git"
    assert redact_url(url) == "https://github.com/acme/catalog.git"
    assert display_name(url) == "github.com/acme/catalog"
    assert display_name("git@bitbucket.org:acme/catalog.git") == "bitbucket.org/acme/catalog"
    assert display_name("/srv/repos/catalog") == "/srv/repos/catalog"
    assert is_remote("git@github.com:acme/catalog.git")
    assert is_remote("file:///srv/catalog")
    assert not is_remote("/srv/catalog")
    assert default_origin("git@bitbucket.org:acme/catalog.git") == "BITBUCKET_GITOPS"
    assert default_origin("https://github.com/acme/catalog") == "GITHUB_GITOPS"
    assert Repository(url).id == Repository(redact_url(url)).id  # a rotated token keeps state
    assert Repository(url).id != Repository(url, branch="prod").id
    assert basic_auth_header("tok") == "Basic eC1hY2Nlc3MtdG9rZW46dG9r"
    assert basic_auth_header("user:pw") == "Basic dXNlcjpwdw=="

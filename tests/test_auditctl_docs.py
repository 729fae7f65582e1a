"""docs/auditctl.md documents every command and every option that ``auditctl --help`` lists,
and no command that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.auditctl_helpers import run_auditctl
from tests.helpers import REPO

DOC = REPO / "docs" / "auditctl.md"
CONNECTION_SECTION = "Connection and configuration"
_OPTION_LINE = re.compile(r"^  (-\S.*?)(?:\s{2,}|$)")  # argparse indents options by two
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def helps(home: Path, *command: str) -> str:
    done = run_auditctl(*command, "--help", home=home)
    assert done.returncode == 0, done.stderr
    return done.stdout


def commands_in(help_text: str) -> list[str]:
    "The subcommands a help text lists under 'commands:'."
    section = help_text.split("\ncommands:\n", 1)[1]
    names: list[str] = []
    for line in section.splitlines()[1:]:
        if not line.startswith("    "):
            break
        match = re.match(r"^ {4}(\w[\w-]*)\s", line + " ")
        if match:
            names.append(match.group(1))
    return names


def options_in(help_text: str) -> set[str]:
    "Every option flag a help text lists (its option lines, not words in descriptions)."
    found: set[str] = set()
    for line in help_text.splitlines():
        match = _OPTION_LINE.match(line)
        if match:
            found.update(_OPTION.findall(match.group(1)))
    return found - {"-h", "--help"}


def sections(markdown: str) -> dict[str, str]:
    "Level-2 sections of the doc by heading."
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.fixture(scope="module")
def every_help(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], str]:
    "Help texts of auditctl, each command, and each command's subcommands."
    home = tmp_path_factory.mktemp("home")
    found: dict[tuple[str, ...], str] = {(): helps(home)}
    for command in commands_in(found[()]):
        found[(command,)] = helps(home, command)
        if "\ncommands:\n" in found[(command,)]:
            for sub in commands_in(found[(command,)]):
                found[(command, sub)] = helps(home, command, sub)
    return found


def test_the_help_lists_what_the_issue_asks_for(every_help: dict[tuple[str, ...], str]) -> None:
    assert set(commands_in(every_help[()])) == {
        "list",
        "diff",
        "tail",
        "export",
        "record",
        "tokens",
    }
    assert ("tokens", "create") in every_help
    assert {
        "--tab",
        "--where",
        "--since",
        "--until",
        "--sort",
        "--columns",
        "--limit",
        "--format",
    } <= options_in(every_help[("list",)])
    assert {"-f", "--follow"} <= options_in(every_help[("tail",)])
    assert {"--service", "--token-file"} <= options_in(every_help[()])


def test_every_command_has_its_own_section(every_help: dict[tuple[str, ...], str]) -> None:
    documented = {h for h in sections(DOC.read_text()) if h.startswith("auditctl ")}
    commands = {" ".join(("auditctl", *path)) for path, text in every_help.items() if path}
    # A command with subcommands is documented through them.
    commands -= {f"auditctl {path[0]}" for path in every_help if len(path) == 2}
    assert documented == commands


def test_every_option_is_documented(every_help: dict[tuple[str, ...], str]) -> None:
    by_heading = sections(DOC.read_text())
    connection = by_heading[CONNECTION_SECTION]
    connection_options = options_in(every_help[()])
    assert connection_options
    missing: list[str] = []
    for option in sorted(connection_options):
        if f"`{option}" not in connection:
            missing.append(f"{option} (in '{CONNECTION_SECTION}')")
    for path, text in every_help.items():
        if not path or "\ncommands:\n" in text:
            continue
        heading = " ".join(("auditctl", *path))
        section = by_heading[heading]
        for option in sorted(options_in(text) - connection_options):
            if f"`{option}" not in section:
                missing.append(f"{option} (in '{heading}')")
    assert not missing, "undocumented in docs/auditctl.md: " + ", ".join(missing)

"""Options as data: each with its default, help text, flag, environment variable and config key.

Every collector takes the runtime's ``COMMON_OPTIONS`` and its own. Precedence: the flag, then
the environment (``AUDIT_COLLECTOR_<NAME>``), then the TOML file named by ``--config`` (keys as
the option names, ``spool_max_events = 10000``), then the default.

Kinds of value: ``str``, ``int``, ``float``, ``bool`` (a flag that takes no value), ``path``
(a ``Path``, or None when unset) and ``mapping`` (``KEY=VALUE``; the flag is repeatable, the
environment variable takes ``KEY=VALUE,KEY=VALUE``, the config file a table).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "AUDIT_COLLECTOR_"

ValueKind = Literal["str", "int", "float", "bool", "path", "mapping"]


class OptionError(Exception):
    "An option has a value that cannot be used; the message names the option and the source."


@dataclass(frozen=True)
class Option:
    """One setting of a collector: ``Option("cluster", "", "cluster name put in context")``."""

    name: str
    default: Any
    help: str
    kind: ValueKind = "str"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def convert(self, value: Any, where: str) -> Any:
        "``value`` (text from a flag or the environment, or a TOML value) as this option's kind."
        try:
            converted = self._convert(value)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{where}: {value!r} is not a valid {self.flag}: {exc}") from None
        if self.choices is not None and converted not in self.choices:
            raise OptionError(
                f"{where}: {value!r} is not a valid {self.flag}; one of {', '.join(self.choices)}"
            )
        return converted

    def _convert(self, value: Any) -> Any:
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("", "0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if self.kind == "int":
            if isinstance(value, bool):
                raise TypeError("expected a whole number")
            return int(value)
        if self.kind == "float":
            return float(value)
        if self.kind == "path":
            return Path(str(value)).expanduser() if str(value) else None
        if self.kind == "mapping":
            return _mapping(value)
        if not isinstance(value, str):
            raise TypeError("expected text")
        return value


def _mapping(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    out: dict[str, str] = {}
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        key, sep, val = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{text!r} is not KEY=VALUE")
        out[key.strip()] = val.strip()
    return out


CONFIG_OPTION = Option(
    "config",
    None,
    "TOML file with any of these options (keys as the option names)",
    "path",
    metavar="PATH",
)


class Values:
    "The resolved options of one run, read by name with the type each kind has."

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def raw(self, name: str) -> Any:
        return self._values[name]

    def text(self, name: str) -> str:
        value = self._values[name]
        return "" if value is None else str(value)

    def integer(self, name: str) -> int:
        return int(self._values[name])

    def number(self, name: str) -> float:
        return float(self._values[name])

    def flag(self, name: str) -> bool:
        return bool(self._values[name])

    def path(self, name: str) -> Path | None:
        value = self._values[name]
        return None if value is None else Path(value)

    def mapping(self, name: str) -> dict[str, str]:
        return dict(self._values[name] or {})


def add_options(parser: argparse.ArgumentParser, title: str, options: Sequence[Option]) -> None:
    "The options' flags, in a group; defaults are resolved later (flags left unset are None)."
    group = parser.add_argument_group(title)
    for option in options:
        default_text = _default_text(option)
        help_text = f"{option.help}{default_text}; ${option.env}"
        if option.kind == "bool":
            group.add_argument(option.flag, action="store_true", default=None, help=help_text)
        elif option.kind == "mapping":
            group.add_argument(
                option.flag,
                action="append",
                default=None,
                metavar=option.metavar or "KEY=VALUE",
                help=help_text + " (repeatable)",
            )
        else:
            group.add_argument(
                option.flag,
                default=None,
                metavar=option.metavar,
                choices=option.choices,
                help=help_text,
            )


def _default_text(option: Option) -> str:
    if option.default in (None, "", False, {}):
        return ""
    return f" (default {option.default})"


def resolve(
    options: Sequence[Option], parsed: argparse.Namespace, environ: Mapping[str, str]
) -> Values:
    """Each option's value: flag, then environment, then config file, then default.

    :raises OptionError: a value that does not convert, an unreadable config file or one
        with keys no option has.
    """
    config_path = _first_set(CONFIG_OPTION, parsed, environ)
    config = _read_config(Path(config_path), options) if config_path else {}
    values: dict[str, Any] = {"config": config_path}
    for option in options:
        flag_value = getattr(parsed, option.name, None)
        if flag_value is not None:
            values[option.name] = option.convert(flag_value, option.flag)
        elif option.env in environ:
            values[option.name] = option.convert(environ[option.env], f"${option.env}")
        elif option.name in config:
            values[option.name] = option.convert(config[option.name], f"{config_path}")
        else:
            values[option.name] = option.default
    return Values(values)


def _first_set(option: Option, parsed: argparse.Namespace, environ: Mapping[str, str]) -> str:
    flag_value = getattr(parsed, option.name, None)
    if flag_value:
        return str(flag_value)
    return environ.get(option.env, "")


def _read_config(path: Path, options: Sequence[Option]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise OptionError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"config file {path} is not valid TOML: {exc}") from None
    known = {o.name: o for o in options}
    unknown = set(data) - set(known)
    if unknown:
        raise OptionError(
            f"config file {path}: unknown keys {', '.join(sorted(unknown))};"
            f" valid keys: {', '.join(known)}"
        )
    for name, value in data.items():  # relative paths in the file are relative to the file
        if known[name].kind == "path" and isinstance(value, str) and value:
            data[name] = str(path.parent / Path(value).expanduser())
    return data


def environment() -> dict[str, str]:
    "The process environment (a seam for tests)."
    return dict(os.environ)

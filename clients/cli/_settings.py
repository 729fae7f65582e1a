"""Where auditctl finds the service and its token: flags, then the environment, then the
config file, then the defaults. Settings are data, each with its help text.

The config file is TOML with any of the keys below (``service = "audit.internal:50051"``);
relative paths in it are relative to the file. Default location:
``$XDG_CONFIG_HOME/auditlog/auditctl.toml`` (``~/.config/auditlog/auditctl.toml``);
``--config`` or ``AUDITCTL_CONFIG`` names another.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients import TLS, AuditClient, RetryPolicy
from clients.cli._errors import CliError, UsageError

CONFIG_ENV = "AUDITCTL_CONFIG"
TOKEN_ENV = "AUDITLOG_TOKEN"  # noqa: S105 (a variable name, not a secret)


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: type = str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "AUDITLOG_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("service", "127.0.0.1:50051", "the audit service, HOST:PORT", metavar="HOST:PORT"),
    Setting(
        "token_file",
        None,
        f"file holding the bearer token (or the token itself in ${TOKEN_ENV})",
        metavar="PATH",
    ),
    Setting("tls", False, "connect with TLS, trusting the system's CA certificates", bool),
    Setting(
        "ca_file",
        None,
        "CA certificate(s) (PEM) to verify the service; implies --tls",
        metavar="PATH",
    ),
    Setting(
        "cert_file", None, "client certificate (PEM) for mutual TLS; implies --tls", metavar="PATH"
    ),
    Setting("key_file", None, "private key (PEM) of --cert-file", metavar="PATH"),
    Setting("timeout", 30.0, "seconds one call may take", float, metavar="SECONDS"),
    Setting(
        "retry_for",
        15.0,
        "seconds to keep retrying while the service is unreachable (0: fail at once)",
        float,
        metavar="SECONDS",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}
_PATHS = ("token_file", "ca_file", "cert_file", "key_file")


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    "The connection options; defaults are SUPPRESSed so they may come before or after the command."
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"config file (TOML; default ~/.config/auditlog/auditctl.toml; ${CONFIG_ENV})",
    )
    for s in SETTINGS:
        default_text = "" if s.default in (None, False) else f" (default {s.default})"
        help_text = f"{s.help}{default_text}; ${s.env}"
        if s.type is bool:
            group.add_argument(
                s.flag, action="store_true", default=argparse.SUPPRESS, help=help_text
            )
        else:
            group.add_argument(
                s.flag,
                type=s.type,
                metavar=s.metavar,
                default=argparse.SUPPRESS,
                help=help_text,
            )


def default_config_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "auditlog" / "auditctl.toml"


def _read_config(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise UsageError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - set(_BY_NAME)
    if unknown:
        raise UsageError(
            f"config file {path}: unknown keys {', '.join(sorted(unknown))};"
            f" valid keys: {', '.join(_BY_NAME)}"
        )
    for name in _PATHS:
        if isinstance(data.get(name), str):
            data[name] = str(path.parent / Path(data[name]).expanduser())
    return data


def _coerce(s: Setting, value: Any, where: str) -> Any:
    if value is None:
        return None
    try:
        if s.type is bool:
            if isinstance(value, str):
                if value.strip().lower() in ("1", "true", "yes", "on"):
                    return True
                if value.strip().lower() in ("", "0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        return s.type(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {value!r} is not a valid {s.name}") from None


@dataclass(frozen=True)
class Connection:
    service: str
    token: str | None
    tls: TLS | None
    timeout: float
    retry_for: float

    def client(self) -> AuditClient:
        retry = RetryPolicy(
            attempts=1_000_000,  # bounded by time, not count
            initial_backoff=0.1,
            max_backoff=2.0,
            deadline=max(self.retry_for, 0.0),
        )
        try:
            return AuditClient(
                self.service, token=self.token, tls=self.tls, timeout=self.timeout, retry=retry
            )
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot set up the connection: {exc}") from None


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Connection:
    """The connection settings, each from its flag, else its environment variable, else the
    config file, else its default."""
    env = os.environ if environ is None else environ
    config_flag = getattr(args, "config", None) or env.get(CONFIG_ENV)
    config = (
        _read_config(Path(config_flag).expanduser(), required=True)
        if config_flag
        else _read_config(default_config_path(env), required=False)
    )
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if getattr(args, s.name, None) is not None:
            values[s.name] = getattr(args, s.name)
        elif env.get(s.env):
            values[s.name] = _coerce(s, env[s.env], f"${s.env}")
        elif s.name in config:
            values[s.name] = _coerce(s, config[s.name], f"config key {s.name}")
        else:
            values[s.name] = s.default
    token = _token(args, env, values["token_file"])
    tls = None
    if values["tls"] or values["ca_file"] or values["cert_file"] or values["key_file"]:
        if bool(values["cert_file"]) != bool(values["key_file"]):
            raise UsageError("mutual TLS needs both --cert-file and --key-file")
        tls = TLS(
            root_certificates=_read_pem(values["ca_file"], "--ca-file"),
            certificate_chain=_read_pem(values["cert_file"], "--cert-file"),
            private_key=_read_pem(values["key_file"], "--key-file"),
        )
    return Connection(values["service"], token, tls, values["timeout"], values["retry_for"])


def _token(args: argparse.Namespace, env: Mapping[str, str], token_file: str | None) -> str | None:
    "--token-file, then $AUDITLOG_TOKEN, then $AUDITLOG_TOKEN_FILE or the config's token_file."
    path = getattr(args, "token_file", None)
    if path is None and env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    path = path or token_file
    if not path:
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
    if not token:
        raise UsageError(f"the token file {path} is empty")
    if any(c.isspace() for c in token):
        raise UsageError(f"the token file {path} holds more than one word; put only the token")
    return token


def _read_pem(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror}") from None

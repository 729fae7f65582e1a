"""The console's settings: each with its default, its help text, its flag and its environment
variable (``AUDITLOG_CONSOLE_<NAME>``). A flag wins over the environment, the environment over
the default. docs/console.md lists them all (checked by a test).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from clients import TLS

ENV_PREFIX = "AUDITLOG_CONSOLE_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: type = str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "127.0.0.1:8080", "address to serve HTTP on, HOST:PORT (PORT 0: any free)"),
    Setting("service", "127.0.0.1:50051", "the audit service, HOST:PORT"),
    Setting(
        "token_file",
        "",
        "file holding the console's own token (a recorder for origin UI), used only to record"
        " sign-in and sign-out events; not needed with a --dev service",
    ),
    Setting("tls", False, "connect to the service with TLS (the system's CA certificates)", bool),
    Setting("ca_file", "", "CA certificate(s) (PEM) to verify the service with; implies --tls"),
    Setting("cert_file", "", "client certificate (PEM) for mutual TLS; implies --tls"),
    Setting("key_file", "", "private key (PEM) of --cert-file"),
    Setting(
        "session_idle_minutes", 30.0, "a session ends after this long without a request", float
    ),
    Setting(
        "session_max_hours", 12.0, "a session ends this long after sign-in at the latest", float
    ),
    Setting(
        "secure_cookies",
        False,
        "mark the cookies Secure (when browsers reach the console over HTTPS)",
        bool,
    ),
    Setting(
        "sign_in_attempts_per_minute",
        10,
        "sign-in attempts accepted per browser address and minute (more get 429)",
        int,
    ),
    Setting("timeout", 30.0, "seconds one call to the service may take", float),
    Setting("log_level", "INFO", "logging level (DEBUG, INFO, WARNING, ERROR)"),
)


@dataclass(frozen=True, kw_only=True)
class ConsoleSettings:
    "Every setting as a typed value (see ``SETTINGS`` for their meaning)."

    listen: str = "127.0.0.1:8080"
    service: str = "127.0.0.1:50051"
    token_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    session_idle_minutes: float = 30.0
    session_max_hours: float = 12.0
    secure_cookies: bool = False
    sign_in_attempts_per_minute: int = 10
    timeout: float = 30.0
    log_level: str = "INFO"

    def service_tls(self) -> TLS | None:
        "The TLS to reach the service with, or None for plaintext."
        if not (self.tls or self.ca_file or self.cert_file):
            return None
        return TLS(
            root_certificates=Path(self.ca_file) if self.ca_file else None,
            certificate_chain=Path(self.cert_file) if self.cert_file else None,
            private_key=Path(self.key_file) if self.key_file else None,
        )

    def console_token(self) -> str | None:
        """The console's own token, read from ``token_file``.

        :raises SettingsError: the file cannot be read or is empty.
        """
        if not self.token_file:
            return None
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"--token-file {self.token_file}: {exc.strerror}") from None
        if not token:
            raise SettingsError(f"--token-file {self.token_file}: the file is empty")
        return token


class SettingsError(Exception):
    "A setting has a value the console cannot use."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit-console",
        description="The audit log's web console: a page per resource type, filters, sorting,"
        " diffs; it reads the audit service over gRPC with each user's own token.",
    )
    for s in SETTINGS:
        default_text = "" if s.default in ("", False) else f" (default {s.default})"
        help_text = f"{s.help}{default_text}; ${s.env}"
        if s.type is bool:
            parser.add_argument(s.flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(s.flag, type=s.type, default=None, help=help_text)
    return parser


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ConsoleSettings:
    """Each setting from its flag, else its environment variable, else its default.

    :raises SettingsError: an environment value of the wrong type.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        flag_value = getattr(args, s.name, None)
        if flag_value is not None:
            values[s.name] = flag_value
        elif s.env in env:
            values[s.name] = _from_env(s, env[s.env])
    known = {f.name for f in fields(ConsoleSettings)}
    return ConsoleSettings(**{k: v for k, v in values.items() if k in known})


def _from_env(setting: Setting, text: str) -> Any:
    if setting.type is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"${setting.env}={text!r}: use one of {', '.join(_TRUE + _FALSE)}")
    try:
        return setting.type(text)
    except ValueError:
        raise SettingsError(
            f"${setting.env}={text!r}: not a valid {setting.type.__name__}"
        ) from None


def parse(argv: Sequence[str] | None = None) -> ConsoleSettings:
    return resolve(build_parser().parse_args(argv))

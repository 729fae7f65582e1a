"""Settings: each with its default, its help text, its flag and its environment variable.

Precedence: command-line flag, then environment (``AUDITLOG_<NAME>``), then the TOML file
named by ``--config``, then the default.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "AUDITLOG_"


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: type = str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "127.0.0.1:50051", "address to serve gRPC on, HOST:PORT (PORT 0: any free)"),
    Setting(
        "db",
        "./var/audit.db",
        "SQLite database file (created with its directory), or a postgresql:// URL",
    ),
    Setting("tokens", "", "tokens file (TOML) with the principals allowed to call the service"),
    Setting("config", "", "TOML file with any of these settings (keys as the flag names)"),
    Setting("dev", False, "development mode: every caller is the admin 'dev'; loopback only", bool),
    Setting("tls_cert", "", "PEM certificate chain to serve TLS with (needs --tls-key)"),
    Setting("tls_key", "", "PEM private key of --tls-cert"),
    Setting("tls_client_ca", "", "PEM CA bundle: require client certificates it signed (mTLS)"),
    Setting(
        "retention_days",
        90,
        "days events are kept, unless overridden for their type",
        int,
        minimum=1,
    ),
    Setting(
        "retention_overrides",
        "SIGN_IN=30",
        "per-type retention days, TYPE=DAYS[,TYPE=DAYS...] (in the config file also a table)",
    ),
    Setting(
        "retention_interval_minutes",
        60.0,
        "minutes between retention sweeps",
        float,
        minimum=0.001,
    ),
    Setting(
        "sign_in_failures_per_minute",
        10,
        "failed sign-ins recorded per peer and minute (more are counted, not recorded)",
        int,
        minimum=0,
    ),
    Setting(
        "durability",
        "FULL",
        "FULL: an acknowledged event survives power loss (fsync per group commit); NORMAL:"
        " faster, survives a crash of the service but a power cut may lose the last commits",
        choices=("FULL", "NORMAL"),
    ),
    Setting(
        "workers", 64, "threads serving RPCs (each open RecordStream holds one)", int, minimum=1
    ),
    Setting("max_group_events", 5000, "most events one group commit writes", int, minimum=1),
    Setting(
        "grace_seconds", 10.0, "on SIGTERM, how long in-flight calls may take", float, minimum=0
    ),
    Setting("log_level", "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    db: str = "./var/audit.db"
    tokens: str = ""
    config: str = ""
    dev: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    retention_days: int = 90
    retention_overrides: str = "SIGN_IN=30"
    retention_interval_minutes: float = 60.0
    sign_in_failures_per_minute: int = 10
    durability: str = "FULL"
    workers: int = 64
    max_group_events: int = 5000
    grace_seconds: float = 10.0
    log_level: str = "INFO"

    @property
    def db_path(self) -> Path:
        return Path(self.db)


class ConfigError(Exception):
    "A setting has a value it cannot take."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit-service",
        description="Serve auditlog.v1.AuditService (gRPC, with reflection and health).",
        epilog="Every flag can also be set as an environment variable AUDITLOG_<NAME>"
        " (e.g. AUDITLOG_LISTEN) or in the --config TOML file.",
    )
    for s in SETTINGS:
        help_text = f"{s.help} (env {s.env}; default: {s.default!r})"
        if s.type is bool:
            parser.add_argument(s.flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(
                s.flag,
                default=None,
                help=help_text,
                choices=s.choices,
                type=str.upper if s.choices else str,  # choices in any case, like the env
                metavar=s.name.upper(),
            )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    "Settings from flags, environment and config file. :raises ConfigError:"
    args = vars(build_parser().parse_args(argv))
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = args.get("config") or env.get(_BY_NAME["config"].env, "")
    if config_path:
        values.update(_read_config(Path(config_path)))
    for s in SETTINGS:
        if s.env in env:
            values[s.name] = env[s.env]
        if args.get(s.name) is not None:
            values[s.name] = args[s.name]
    return Settings(**{name: _coerce(_BY_NAME[name], v) for name, v in values.items()})


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    known = {f.name for f in fields(Settings)} - {"config"}
    unknown = sorted({k.replace("-", "_") for k in data} - known)
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _coerce(s: Setting, value: Any) -> Any:
    if isinstance(value, Mapping):  # a TOML table, e.g. [retention_overrides]
        value = ",".join(f"{k}={v}" for k, v in value.items())
    try:
        if s.type is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        coerced = s.type(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{s.name}: {value!r} is not a valid {s.type.__name__}") from None
    if s.choices and str(coerced).upper() not in s.choices:
        raise ConfigError(f"{s.name}: {value!r} is not one of {', '.join(s.choices)}")
    if s.minimum is not None and coerced < s.minimum:
        raise ConfigError(f"{s.name}: {value!r} is below the minimum, {s.minimum:g}")
    return str(coerced).upper() if s.choices else coerced

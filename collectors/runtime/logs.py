"""Structured logs: one line per record on stderr, ``key=value`` (logfmt) or JSON.

::

    log = get_logger("delivery")
    log.info("batch delivered", events=500, duplicates=0)
    # time=2026-01-31T12:00:00.123Z level=info logger=collector.delivery
    #     msg="batch delivered" events=500 duplicates=0      (on one line)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

LogFormat = Literal["logfmt", "json"]
ROOT = "collector"


class FieldLogger:
    "A logger whose methods take the message and its fields as keyword arguments."

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, extra={"fields": fields}, stacklevel=3)

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._logger.error(msg, exc_info=True, extra={"fields": fields}, stacklevel=2)


def get_logger(name: str) -> FieldLogger:
    "``collector.<name>``: ``get_logger('kubernetes.webhook')``."
    return FieldLogger(logging.getLogger(f"{ROOT}.{name}"))


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "time": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    data.update(getattr(record, "fields", {}))
    if record.exc_info:
        data["error"] = logging.Formatter().formatException(record.exc_info)
    return data


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' ="\\\n\t') and text.isprintable():
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def configure(level: str = "INFO", fmt: LogFormat = "logfmt") -> None:
    "Send every ``collector.*`` record (and warnings of libraries) to stderr in ``fmt``."
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(ROOT).setLevel(level)

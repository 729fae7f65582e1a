"""``auditctl tokens create``: a new bearer token, shown once, and the tokens-file entry that
holds only its SHA-256 digest."""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from clients import AuditClientError
from clients._values import short_name
from clients.cli._errors import EXIT_OK, UsageError

TOKEN_PREFIX = "alog_"  # noqa: S105 (a prefix, not a secret)
ROLES = ("admin", "member", "recorder")


def new_token() -> str:
    "A fresh random token: ``alog_`` and 32 random bytes, URL-safe base64."
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def principal_entry(
    principal_id: str, role: str, digest: str, *, name: str = "", origins: Sequence[str] = ()
) -> str:
    "The ``[[principal]]`` table for the tokens file (format: api.md, Tokens file)."
    lines = ["[[principal]]", f"id = {_toml_string(principal_id)}"]
    if name:
        lines.append(f"name = {_toml_string(name)}")
    lines.append(f"role = {_toml_string(role)}")
    lines.append(f"token_sha256 = {_toml_string(digest)}")
    if origins:
        lines.append("origins = [" + ", ".join(_toml_string(o) for o in origins) + "]")
    return "\n".join(lines) + "\n"


def _origins(args: argparse.Namespace) -> list[str]:
    origins = list(dict.fromkeys(args.origin or []))
    if origins and args.role != "recorder":
        raise UsageError("--origin is only for recorders (--role recorder)")
    if args.role == "recorder" and not origins:
        raise UsageError("a recorder needs at least one --origin (e.g. --origin K8S_EXPORTER)")
    try:
        return [short_name("origin", o, "--origin") for o in origins]
    except AuditClientError as exc:
        raise UsageError(str(exc)) from None


def _append(path: Path, principal_id: str, entry: str) -> None:
    try:
        existing = path.read_text() if path.exists() else ""
    except OSError as exc:
        raise UsageError(f"--append {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(existing)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--append {path} is not valid TOML ({exc}); left unchanged") from None
    if any(p.get("id") == principal_id for p in data.get("principal", [])):
        raise UsageError(f"--append {path} already has a principal {principal_id!r}")
    separator = "" if not existing else ("\n" if existing.endswith("\n") else "\n\n")
    try:
        with path.open("a", encoding="utf-8") as file:
            file.write(separator + entry)
    except OSError as exc:
        raise UsageError(f"--append {path}: {exc.strerror}") from None


def run_tokens_create(args: argparse.Namespace) -> int:
    principal_id = args.id.strip()
    if not principal_id:
        raise UsageError("--id must not be empty")
    origins = _origins(args)
    token = new_token()
    digest = hashlib.sha256(token.encode()).hexdigest()
    entry = principal_entry(principal_id, args.role, digest, name=args.name or "", origins=origins)
    if args.append:
        _append(Path(args.append), principal_id, entry)
    print(
        f"auditctl: new {args.role} token for {principal_id}; it is shown only this once:",
        file=sys.stderr,
    )
    print(token)
    if args.append:
        print(f"auditctl: entry added to {args.append}", file=sys.stderr)
    else:
        print("auditctl: paste this entry into the tokens file (--tokens):", file=sys.stderr)
    print()
    print(entry, end="")
    return EXIT_OK

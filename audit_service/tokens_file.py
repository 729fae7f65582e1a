"""The tokens file (``--tokens``): TOML ``[[principal]]`` entries with SHA-256 token digests.

::

    [[principal]]
    id = "alice@example.com"       # becomes source id / recorded_by
    name = "Alice"
    role = "admin"                 # admin | member | recorder
    token_sha256 = "9f86d08..."
    origins = ["K8S_EXPORTER"]     # recorders only: the origins it may record
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit_service.models import Origin
from audit_service.principals import Principal, Role

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class TokensFileError(Exception):
    "The tokens file cannot be used; the message names the entry and the problem."


@dataclass(frozen=True, slots=True)
class TokenEntry:
    principal: Principal
    digest: bytes  # SHA-256 of the token


def load_tokens_file(path: Path) -> list[TokenEntry]:
    """Parse and check every entry. :raises TokensFileError:"""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise TokensFileError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"principal"}
    if unknown:
        raise TokensFileError(f"{path}: unknown tables {sorted(unknown)}; expected [[principal]]")
    raw = data.get("principal", [])
    if not isinstance(raw, list):
        raise TokensFileError(f"{path}: 'principal' must be an array of tables ([[principal]])")
    entries = [_entry(item, i, path) for i, item in enumerate(raw)]
    _check_unique(entries, path)
    return entries


def _entry(item: Any, index: int, path: Path) -> TokenEntry:
    where = f"{path}: principal #{index + 1}"
    if not isinstance(item, dict):
        raise TokensFileError(f"{where} is not a table")
    unknown = set(item) - {"id", "name", "role", "token_sha256", "origins"}
    if unknown:
        raise TokensFileError(f"{where}: unknown keys {sorted(unknown)}")
    principal_id = item.get("id")
    if not isinstance(principal_id, str) or not principal_id:
        raise TokensFileError(f"{where}: 'id' is required")
    where = f"{path}: principal {principal_id!r}"
    try:
        role = Role(str(item.get("role", "")))
    except ValueError:
        raise TokensFileError(f"{where}: role must be one of admin, member, recorder") from None
    digest = str(item.get("token_sha256", "")).lower()
    if not _HEX_DIGEST.match(digest):
        raise TokensFileError(f"{where}: token_sha256 must be 64 hex digits (a SHA-256 digest)")
    origins_raw = item.get("origins", [])
    if not isinstance(origins_raw, list):
        raise TokensFileError(f"{where}: origins must be a list")
    if origins_raw and role is not Role.RECORDER:
        raise TokensFileError(f"{where}: only recorders take origins")
    origins: set[Origin] = set()
    for origin in origins_raw:
        name = str(origin).upper().removeprefix("ORIGIN_")
        if name not in Origin.__members__:
            valid = ", ".join(Origin.__members__)
            raise TokensFileError(f"{where}: unknown origin {origin!r}; valid: {valid}")
        origins.add(Origin(name))
    principal = Principal(
        id=principal_id, role=role, name=str(item.get("name", "")), origins=frozenset(origins)
    )
    return TokenEntry(principal, bytes.fromhex(digest))


def _check_unique(entries: list[TokenEntry], path: Path) -> None:
    ids: set[str] = set()
    digests: set[bytes] = set()
    for entry in entries:
        if entry.principal.id in ids:
            raise TokensFileError(f"{path}: principal {entry.principal.id!r} appears twice")
        if entry.digest in digests:
            raise TokensFileError(f"{path}: principal {entry.principal.id!r} reuses a token")
        ids.add(entry.principal.id)
        digests.add(entry.digest)

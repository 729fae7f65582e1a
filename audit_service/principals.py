"""Who is calling, and what each role may do."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from audit_service.models import Origin


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything
    RECORDER = "recorder"  # Record and RecordStream, for the origins it lists
    MEMBER = "member"  # List and GetDiff of its own RUN events


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    role: Role
    name: str = ""
    origins: frozenset[Origin] = field(default_factory=frozenset)


DEV_PRINCIPAL = Principal(id="dev", role=Role.ADMIN, name="Local development")

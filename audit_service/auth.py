"""Authentication: turning a call's metadata into a Principal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from audit_service.principals import DEV_PRINCIPAL, Principal

Metadata = Sequence[tuple[str, str | bytes]]


class Authenticator(Protocol):
    def authenticate(self, metadata: Metadata, peer: str) -> Principal:
        """The caller's principal.

        :raises Unauthenticated: no credentials, or unknown ones.
        """
        ...


class DevAuthenticator:
    "``--dev``: every caller is the one admin principal ``dev``."

    def authenticate(self, metadata: Metadata, peer: str) -> Principal:
        return DEV_PRINCIPAL

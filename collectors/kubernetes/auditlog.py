"""The audit log follower (``--audit-log PATH``): the apiserver's JSON-lines audit log
(``--audit-log-path``, ``--audit-log-format=json``), one ``Event`` per line.

Lines are read in batches; each batch's events are spooled together with the position after
them, in one transaction, so a restart resumes exactly where the spool says (see
``collectors.runtime.files`` for rotation). While the spool is full the follower waits.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from collectors.kubernetes.ingest import Ingest
from collectors.runtime import SpoolFull, SpoolTransaction
from collectors.runtime.files import LineFollower, Position

SCOPE = "kubernetes.audit-log"
POLL_SECONDS = 0.1
BATCH_LINES = 400


class AuditLogFollower:
    def __init__(self, ingest: Ingest, path: Path) -> None:
        self.ingest = ingest
        self.path = path
        self.key = str(path.absolute())
        self.runtime = ingest.runtime
        self.log = self.runtime.logger("audit-log")

    def saved_position(self) -> Position | None:
        raw = self.runtime.spool.get_state(SCOPE, self.key)
        return None if raw is None else Position.loads(raw)

    def run(self, stop: threading.Event) -> None:
        follower = LineFollower(self.path, self.saved_position(), max_lines=BATCH_LINES)
        waiting_logged = False
        try:
            while not stop.is_set():
                batch = follower.read()
                if batch is None:
                    if not waiting_logged and not self.path.exists():
                        self.log.warning("waiting for the audit log to appear", path=str(self.path))
                        waiting_logged = True
                    stop.wait(POLL_SECONDS)
                    continue
                lines, position = batch
                events = self._parse(lines)

                def save_position(tx: SpoolTransaction, position: Position = position) -> None:
                    tx.set_state(SCOPE, self.key, position.dumps())

                try:
                    self.ingest(events, also=save_position)
                except SpoolFull:
                    self.runtime.count("audit_log_paused")
                    self.runtime.spool.wait_for_room(len(events) or 1, timeout=POLL_SECONDS * 5)
                    continue
                follower.commit(position)
                self.runtime.count("audit_log_lines", len(lines))
        finally:
            follower.close()

    def _parse(self, lines: list[bytes]) -> list[Any]:
        events: list[Any] = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except (ValueError, UnicodeDecodeError) as exc:
                self.runtime.count("audit_log_bad_lines")
                self.log.warning(
                    "audit log line is not JSON; skipped",
                    path=str(self.path),
                    error=str(exc),
                    start=line[:80].decode(errors="replace"),
                )
        return events

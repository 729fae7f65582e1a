"""``audit-service``: the command that runs the server."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from audit_service.config import ConfigError, load_settings
from audit_service.server import StartupError, create_server, split_address
from audit_service.storage import describe, is_postgres_url

log = logging.getLogger("audit_service")
SWITCH_INTERVAL_S = 0.0005
GC_THRESHOLDS = (10_000, 20, 20)  # Python's defaults: (700, 10, 10)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"audit-service: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The writer thread gives up the GIL at every SQLite statement and must win it back from
    # threads converting events: at Python's default 5 ms switch interval each statement could
    # wait that long. A shorter interval keeps the group commit moving (docs/performance.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        service = create_server(settings)
    except (StartupError, OSError) as exc:
        print(f"audit-service: {exc}", file=sys.stderr)
        return 2
    # What start-up made (modules, gRPC, the schema) lives as long as the process: keep it out
    # of every later collection, and collect the young generation less often. Full collections
    # of the default thresholds took 18-27 ms every ~30 GetDiff calls of 100 KB snapshots.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # Set by the signal handler, which takes no lock: Event.set there can deadlock against the
    # main thread's own Event.wait (the handler runs on the main thread).
    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping gracefully", signal.Signals(signum).name)
        stop_requested.append(signum)

    def reload_tokens(_signum: int, _frame: FrameType | None) -> None:
        log.info("received SIGHUP: reloading the tokens file")
        # Off the signal handler: reloading logs and takes a lock.
        threading.Thread(target=service.reload_tokens, name="sighup", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, reload_tokens)
    host, _ = split_address(settings.listen)
    if settings.tokens:
        log.info("authentication: bearer tokens from %s", settings.tokens)
    elif settings.dev:
        log.warning(
            "development mode (--dev): no authentication, every caller is the admin 'dev';"
            " serving loopback only"
        )
    where = describe(settings.db) if is_postgres_url(settings.db) else settings.db_path.resolve()
    log.info("database %s (durability %s)", where, settings.durability)
    # One write: print() writes the text and its newline separately when unbuffered
    # (PYTHONUNBUFFERED), and a log line from another thread could land in between.
    sys.stdout.write(f"audit-service listening on {host}:{service.port}\n")
    sys.stdout.flush()
    while not stop_requested:
        time.sleep(0.1)
    service.stop(settings.grace_seconds)
    log.info("stopped: every acknowledged event is committed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

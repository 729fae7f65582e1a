"""Running ``auditctl`` as a child process, as a person or a CI job would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.helpers import REPO

AUDITCTL = [sys.executable, "-m", "clients.cli"]
# A zone with a half-hour offset and no daylight saving: local times are unmistakable.
LOCAL_TZ = "Asia/Kolkata"


def auditctl_env(home: Path, **overrides: str) -> dict[str, str]:
    """The environment of a child auditctl: none of this machine's auditlog settings, a config
    folder of its own, a fixed timezone and a wide terminal for tables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUDITLOG_", "AUDITCTL_")) and k not in ("NO_COLOR", "FORCE_COLOR")
    }
    env.update({"XDG_CONFIG_HOME": str(home / "config"), "TZ": LOCAL_TZ, "COLUMNS": "250"})
    env.update(overrides)
    return env


def run_auditctl(
    *args: str,
    home: Path,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    "``auditctl ARGS``, to completion; stdout and stderr captured as text."
    return subprocess.run(
        [*AUDITCTL, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        cwd=REPO,
        env=dict(env) if env is not None else auditctl_env(home),
        check=False,
    )


def free_port() -> int:
    "A port nothing listens on right now (bound to port 0, then released)."
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

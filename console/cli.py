"""``audit-console [options]``: serve the console; prints ``audit-console listening on
http://HOST:PORT`` once it accepts connections (the real port when PORT is 0)."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Sequence

import uvicorn

from console._app import create_app
from console._settings import SettingsError, parse


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) as its parts.

    :raises SettingsError:
    """
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"--listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SettingsError(f"--listen {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


class _Server(uvicorn.Server):
    "Says where it listens once it does."

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # One write, so no log line from another thread lands inside it.
            sys.stdout.write(f"audit-console listening on {self.url}\n")
            sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse(argv)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        app = create_app(settings)
        host, port = split_listen(settings.listen)
        sock = bind(host, port)
    except SettingsError as exc:
        print(f"audit-console: {exc}", file=sys.stderr)
        return 2
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, f"http://{shown}:{real_port}")
    server.run(sockets=[sock])
    return 0

"""Channels to the service: TLS settings, channel options and the bearer-token metadata."""

from __future__ import annotations

import ipaddress
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# List pages stop near 3 MiB, single events at 1 MiB; leave room for whatever comes later.
MAX_RECEIVE_BYTES = 16 * 1024 * 1024
USER_AGENT = "auditlog-clients/0.1"

PEM = bytes | str | Path


class InsecureTokenWarning(UserWarning):
    "A bearer token is about to travel in plaintext to a host other than this machine."


@dataclass(frozen=True, kw_only=True, slots=True)
class TLS:
    """Transport security for the channel.

    ``root_certificates``: the CA bundle to trust (PEM bytes, or a file path), default the
    system's. ``certificate_chain`` and ``private_key``: this client's certificate and key,
    for mutual TLS; both or neither. ``server_name``: the name to expect in the server's
    certificate, when it differs from the host in the target.
    """

    root_certificates: PEM | None = None
    certificate_chain: PEM | None = None
    private_key: PEM | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")

    def credentials(self) -> grpc.ChannelCredentials:
        "The channel credentials; reads the files named."
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates),
            private_key=_pem(self.private_key),
            certificate_chain=_pem(self.certificate_chain),
        )


def _pem(value: PEM | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def resolve_tls(tls: TLS | bool | None) -> TLS | None:
    "``True``: TLS with the system's roots; ``None``/``False``: plaintext."
    if tls is True:
        return TLS()
    if tls is None or tls is False:
        return None
    return tls


def channel_options(tls: TLS | None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.primary_user_agent", USER_AGENT),
        # Reconnect soon after the service comes back, so retries find it: gRPC's own
        # default waits 1 s and then up to 2 min between connection attempts.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    "The metadata every call carries: ``authorization: Bearer <token>`` when there is one."
    if not token:
        return ()
    return (("authorization", f"Bearer {token}"),)


def check_token(token: str | None, target: str, tls: TLS | None) -> str | None:
    """The token, stripped; warns when it would cross the network in plaintext.

    :raises ValueError: a token with whitespace or control characters inside.
    """
    if token is None:
        return None
    token = token.strip()
    if not token:
        return None
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("the token has whitespace or control characters in it")
    if tls is None and not is_loopback(target):
        warnings.warn(
            f"sending a bearer token in plaintext to {target}; configure TLS",
            InsecureTokenWarning,
            stacklevel=3,
        )
    return token


def is_loopback(target: str) -> bool:
    "Whether ``target`` (HOST:PORT, [v6]:PORT, unix:...) stays on this machine."
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_channel(
    target: str, tls: TLS | None, interceptors: Sequence[grpc.Interceptor] = ()
) -> grpc.Channel:
    options = channel_options(tls)
    if tls is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, tls.credentials(), options=options)
    if interceptors:
        channel = grpc.intercept_channel(channel, *interceptors)
    return channel


def make_aio_channel(
    target: str, tls: TLS | None, interceptors: Sequence[Any] = ()
) -> grpc.aio.Channel:
    options = channel_options(tls)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=options, interceptors=interceptors
    )

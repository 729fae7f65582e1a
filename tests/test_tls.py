"""TLS and mutual TLS with certificates made in the test."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from audit_service import Settings, StartupError, create_server
from clients import pb, pb_grpc
from tests.helpers import Token, event, start_server, write_tokens_file
from tests.tls_certs import Pki, make_pki

ADMIN = Token("admin", "admin", "tls-admin-5b0e7f21c4")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _channel(port: int, pki: Pki, *, client_cert: bool) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(f"localhost:{port}", credentials)


def _record(channel: grpc.Channel) -> str:
    stub = pb_grpc.AuditServiceStub(channel)
    response = stub.Record(pb.RecordRequest(event=event()), metadata=ADMIN.metadata, timeout=5)
    return str(response.id)


def test_tls_with_token(tmp_path: Path, pki: Pki) -> None:
    tokens = write_tokens_file(tmp_path / "tokens.toml", [ADMIN])
    server = start_server(
        tmp_path / "a.db",
        dev=False,
        tokens=str(tokens),
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
    )
    try:
        with _channel(server.service.port, pki, client_cert=False) as channel:
            assert _record(channel)
        with pytest.raises(grpc.RpcError) as caught:  # a plaintext client gets nowhere
            _record(server.channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.close()


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    tokens = write_tokens_file(tmp_path / "tokens.toml", [ADMIN])
    server = start_server(
        tmp_path / "a.db",
        dev=False,
        tokens=str(tokens),
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca_cert),
    )
    try:
        with _channel(server.service.port, pki, client_cert=True) as channel:
            assert _record(channel)
        with (
            _channel(server.service.port, pki, client_cert=False) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            _record(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.close()


def test_tls_needs_both_cert_and_key(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(StartupError, match="both --tls-cert and --tls-key"):
        create_server(
            Settings(
                dev=True, db=str(tmp_path / "a.db"), listen="127.0.0.1:0", tls_cert=str(pki.ca_cert)
            )
        )

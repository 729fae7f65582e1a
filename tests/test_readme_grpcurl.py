"""Every grpcurl example of the README (and of docs/) works verbatim against a real server.

The examples address the service where ``scripts/serve`` runs it (the default ``--listen``);
only that address is replaced by the test server's endpoint. Each ``bash`` block that runs
grpcurl is run whole, with bash, in document order, with the virtualenv's ``bin`` (where
grpcurl is) first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit_service.config import SETTINGS
from tests.helpers import REPO, ServerProcess, spawn_server
from tests.tls_certs import make_pki

# Where scripts/serve runs the service: the default of --listen.
DOCUMENTED_ADDRESS = next(s.default for s in SETTINGS if s.name == "listen")
_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}:\d+\b|\blocalhost:\d+\b")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def code_blocks(doc: str) -> list[Block]:
    text = (REPO / doc).read_text()
    return [
        Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in _FENCE.finditer(text)
    ]


def grpcurl_blocks(doc: str, *, tls: bool = False) -> list[Block]:
    """The blocks that run grpcurl; each must be a bash block (so none is silently skipped).
    ``tls``: the examples against a TLS server with tokens (they use ``-cacert``) instead."""
    blocks = [b for b in code_blocks(doc) if re.search(r"^\s*(?:\S+=\$\()?grpcurl ", b.text, re.M)]
    for block in blocks:
        assert block.language == "bash", f"{block}: grpcurl example in a non-bash block"
    return [b for b in blocks if ("-cacert" in b.text) == tls]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("readme") / "audit.db"
    process = spawn_server("--dev", "--listen", "127.0.0.1:0", "--db", str(db))
    try:
        yield process
    finally:
        process.process.terminate()
        process.process.wait(timeout=30)
        assert process.process.stdout is not None
        process.process.stdout.close()


def run_block(block: Block, server: ServerProcess, cwd: Path) -> str:
    "Run ``block`` with bash against ``server``; fail with its output unless it exits 0."
    script = block.text.replace(DOCUMENTED_ADDRESS, server.endpoint)
    bin_dirs = [str(REPO / ".venv" / "bin"), str(Path(sys.executable).parent)]
    env = {**os.environ, "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])}
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{block} exited {result.returncode}:\n{script}\n{output}"
    return result.stdout


def test_readme_examples_use_the_address_scripts_serve_listens_on() -> None:
    assert DOCUMENTED_ADDRESS in (REPO / "scripts" / "serve").read_text()
    blocks = grpcurl_blocks("README.md")
    assert blocks, "README.md has no grpcurl examples"
    for block in blocks:
        assert set(_ADDRESS.findall(block.text)) == {DOCUMENTED_ADDRESS}, str(block)
        for command in re.findall(r"grpcurl [^\n]*", block.text):
            assert command.startswith("grpcurl -plaintext "), f"{block}: {command}"


def test_readme_grpcurl_examples(server: ServerProcess, tmp_path: Path) -> None:
    blocks = grpcurl_blocks("README.md")
    assert blocks, "README.md has no grpcurl examples"
    covered: set[str] = set()
    for block in blocks:
        out = run_block(block, server, tmp_path)
        text = block.text
        if re.search(r"grpcurl -plaintext \S+ list\b", text):
            covered.add("list")
            assert "auditlog.v1.AuditService" in out
            assert "grpc.health.v1.Health" in out
        if "describe auditlog.v1.AuditService" in text:
            covered.add("describe service")
            for rpc in ("Record", "RecordStream", "List", "GetDiff"):
                assert f"rpc {rpc} (" in out
        if "describe auditlog.v1.AuditEvent" in text:
            covered.add("describe event")
            assert "diff_available" in out
            assert "map<string, string> context" in out
        if "AuditService/Record" in text:
            covered.add("Record")
            assert re.search(rf'"id": "{_UUID7}"|recorded {_UUID7}', out), out
        if "AuditService/List" in text:
            covered.add("List")
            assert '"identifier": "payments-api"' in out
        if "AuditService/GetDiff" in text:
            covered.add("GetDiff")
            assert '"available": true' in out
            assert '"patch": [' in out
        if "Health/Check" in text:
            covered.add("health")
            assert out.count('"status": "SERVING"') == text.count("Health/Check")
    assert covered == {
        "list",
        "describe service",
        "describe event",
        "Record",
        "List",
        "GetDiff",
        "health",
    }


def test_readme_record_example_is_idempotent(server: ServerProcess, tmp_path: Path) -> None:
    "The README says running the Record example twice answers duplicate=true the second time."
    (record,) = [
        b
        for b in grpcurl_blocks("README.md")
        if "AuditService/Record" in b.text and "idempotency_key" in b.text
    ]
    first = run_block(record, server, tmp_path)
    second = run_block(record, server, tmp_path)
    ids = [re.findall(rf'"id": "({_UUID7})"', out) for out in (first, second)]
    assert ids[0] == ids[1]
    assert '"duplicate": true' in second


def test_readme_tls_and_token_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    "The README's secured-service example: the token line as written, grpcurl over TLS."
    (setup,) = [b for b in code_blocks("README.md") if "auditctl tokens create" in b.text]
    token_line = next(line for line in setup.text.splitlines() if "auditctl tokens create" in line)
    pki = make_pki(tmp_path)
    bin_dirs = [str(REPO / ".venv" / "bin"), str(Path(sys.executable).parent)]
    env = {**os.environ, "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])}
    made = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", token_line + '\nprintf %s "$AUDITLOG_TOKEN"'],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=True,
    )  # fmt: skip
    token = made.stdout
    assert token.startswith("alog_")
    assert token not in (tmp_path / "tokens.toml").read_text()
    server = spawn_server(
        "--tokens", str(tmp_path / "tokens.toml"), "--listen", "127.0.0.1:0",
        "--db", str(tmp_path / "audit.db"),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
    )  # fmt: skip
    try:
        blocks = grpcurl_blocks("README.md", tls=True)
        assert blocks, "README.md shows no grpcurl example with TLS and a token"
        monkeypatch.setenv("AUDITLOG_TOKEN", token)
        outputs = [run_block(block, server, tmp_path) for block in blocks]
        monkeypatch.setenv("AUDITLOG_TOKEN", "alog_not-a-real-token")
        with pytest.raises(AssertionError, match="Unauthenticated"):
            run_block(blocks[-1], server, tmp_path)  # the token is what lets it in
    finally:
        server.stop()
    text = "".join(outputs)
    assert "auditlog.v1.AuditService.List" in text
    assert text.rstrip().endswith("}")  # List answered (a JSON object), over TLS, with the token


@pytest.mark.parametrize("doc", ["docs/filters.md", "docs/data-model.md"])
def test_docs_grpcurl_examples(doc: str, server: ServerProcess, tmp_path: Path) -> None:
    blocks = grpcurl_blocks(doc)
    assert blocks, f"{doc} has no grpcurl examples"
    for block in blocks:
        assert set(_ADDRESS.findall(block.text)) == {DOCUMENTED_ADDRESS}, str(block)
        out = run_block(block, server, tmp_path)
        assert out.strip(), f"{block} printed nothing"
        if "AuditService/List" in block.text and '"timed out"' in block.text:
            assert '"identifier": "run_7f3a"' in out, "the failed run recorded above is found"

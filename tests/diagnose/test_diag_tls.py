"""Upstream TLS: a PostgreSQL-style TLS server (SSLRequest, then TLS) with certificates made
with `cryptography`, each wrong in one way, and the finding and fix rdsgate prints."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rdsgate.operator import pki
from rdsgate.proxy import wire
from rdsgate.proxy.config import UpstreamTLS
from rdsgate.proxy.tls import upstream_context
from tests.diagnose.conftest import Cli, WriteConfig

NAME = "orders.proxy-abc123def.eu-west-1.rds.amazonaws.com"
CHECK = ["--check", "upstream-tls", "--json"]


class _Handler(socketserver.BaseRequestHandler):
    server: _PgTlsServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        try:
            if sock.recv(8) != wire.ssl_request():
                return
            if self.server.context is None:
                sock.sendall(b"N")
                return
            sock.sendall(b"S")
            with self.server.context.wrap_socket(sock, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            return


class _PgTlsServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context


@contextmanager
def pg_tls_server(pair: pki.KeyPair | None, tmp_path: Path) -> Iterator[int]:
    context = None
    if pair is not None:
        (tmp_path / "server.crt").write_bytes(pair.cert_pem)
        (tmp_path / "server.key").write_bytes(pair.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server = _PgTlsServer(context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.make_ca("test RDS CA")


@pytest.fixture
def ca_file(ca: pki.KeyPair, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return str(path)


def _diagnose(
    cli: Cli, write_config: WriteConfig, port: int, tls: dict[str, object]
) -> tuple[int, dict[str, object]]:
    result = cli("diagnose", "--config", str(write_config(f"127.0.0.1:{port}", tls=tls)), *CHECK)
    return result.code, result.finding("upstream-tls")


def test_verified_certificate_passes(
    cli: Cli, write_config: WriteConfig, ca: pki.KeyPair, ca_file: str, tmp_path: Path
) -> None:
    with pg_tls_server(pki.issue_server_cert(ca, [NAME]), tmp_path) as port:
        code, f = _diagnose(cli, write_config, port, {"caFile": ca_file, "serverName": NAME})
    assert code == 0
    assert f["status"] == "pass"
    assert str(f["summary"]).startswith("TLS TLSv1.3 to 127.0.0.1 verified (verify-full)")
    assert f["evidence"]["certificate"]["subjectAltNames"] == [NAME]  # type: ignore[index]


def test_legacy_common_name_certificate_is_named_with_the_fix(
    cli: Cli, write_config: WriteConfig, ca: pki.KeyPair, ca_file: str, tmp_path: Path
) -> None:
    """The proxy matches names from SANs only (RFC 6125), so a CN-only certificate fails,
    with the fix; verify-ca is the stopgap that verifies the chain without the name."""
    assert not upstream_context(UpstreamTLS()).hostname_checks_common_name
    with pg_tls_server(pki.issue_legacy_cn_cert(ca, NAME), tmp_path) as port:
        code, f = _diagnose(cli, write_config, port, {"caFile": ca_file, "serverName": NAME})
        stopgap_code, stopgap = _diagnose(
            cli, write_config, port, {"caFile": ca_file, "serverName": NAME, "mode": "verify-ca"}
        )
    assert f["reason"] == "LegacyCommonNameCertificate"
    assert "x509: certificate relies on legacy Common Name field, use SANs instead" in str(
        f["summary"]
    )
    assert "--ca-certificate-identifier rds-ca-rsa2048-g1" in str(f["fix"])
    assert (code, f["status"]) == (1, "fail")
    assert f"names {NAME} only in its subject CN and has no subjectAltName" in str(f["summary"])
    assert "tls.mode verify-ca" in str(f["fix"])
    assert stopgap_code == 0
    assert stopgap["status"] == "warn"
    assert stopgap["reason"] == "LegacyCommonNameCertificate"
    assert "accepted only because tls.mode is verify-ca" in str(stopgap["summary"])


def test_expired_certificate(
    cli: Cli, write_config: WriteConfig, ca: pki.KeyPair, ca_file: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    pair = pki.issue_server_cert(
        ca, [NAME], not_before=now - timedelta(days=400), not_after=now - timedelta(days=3)
    )
    with pg_tls_server(pair, tmp_path) as port:
        code, f = _diagnose(cli, write_config, port, {"caFile": ca_file, "serverName": NAME})
    assert code == 1
    assert f["reason"] == "CertificateExpired"
    expired = (now - timedelta(days=3)).strftime("%Y-%m-%d")
    assert str(f["summary"]).startswith(f"the certificate of 127.0.0.1 expired on {expired}")
    assert f["evidence"]["verifyError"] == "certificate has expired"  # type: ignore[index]


def test_name_mismatch(
    cli: Cli, write_config: WriteConfig, ca: pki.KeyPair, ca_file: str, tmp_path: Path
) -> None:
    pair = pki.issue_server_cert(ca, ["other.proxy-zzz.eu-west-1.rds.amazonaws.com"])
    with pg_tls_server(pair, tmp_path) as port:
        code, f = _diagnose(cli, write_config, port, {"caFile": ca_file, "serverName": NAME})
    assert code == 1
    assert f["reason"] == "HostnameMismatch"
    assert f["summary"] == (
        "the certificate of 127.0.0.1 is for other.proxy-zzz.eu-west-1.rds.amazonaws.com, "
        f"not {NAME}"
    )
    assert "set tls.serverName" in str(f["fix"])


def test_untrusted_issuer(
    cli: Cli, write_config: WriteConfig, ca: pki.KeyPair, tmp_path: Path
) -> None:
    with pg_tls_server(pki.issue_server_cert(ca, [NAME]), tmp_path) as port:
        code, f = _diagnose(cli, write_config, port, {"serverName": NAME})
    assert code == 1
    assert f["reason"] == "UntrustedCertificate"
    assert "did not verify: unable to get local issuer certificate" in str(f["summary"])
    assert "CN=test RDS CA" in str(f["summary"])
    assert "truststore.pki.rds.amazonaws.com/global/global-bundle.pem" in str(f["fix"])


def test_server_without_tls(cli: Cli, write_config: WriteConfig, tmp_path: Path) -> None:
    with pg_tls_server(None, tmp_path) as port:
        code, f = _diagnose(cli, write_config, port, {})
    assert code == 1
    assert f["reason"] == "TLSRefused"
    assert "answered the SSLRequest with 'N', not 'S': it does not accept TLS" in str(f["summary"])

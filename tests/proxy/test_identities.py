"""Client certificates as identities: who they name, and how bad ones are refused."""

from __future__ import annotations

import copy
import os
import ssl
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from rdsgate.operator import access, pki
from rdsgate.proxy import wire
from rdsgate.proxy.access import secret_digest
from tests.fixtures.k8s import wait_for
from tests.fixtures.lab import LabCA
from tests.fixtures.proxy import (
    APP_SECRET,
    DEFAULT_ACCESS,
    EXPIRED_SECRET,
    REPORTING_SECRET,
    RunningProxy,
)
from tests.fixtures.rawpg import RawClient

APP = secret_digest(APP_SECRET)


def cert_files(tmp_path: Path, kp: pki.KeyPair) -> dict[str, str]:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(kp.cert_pem)
    key.write_bytes(kp.key_pem)
    os.chmod(key, 0o600)
    return {"sslcert": str(cert), "sslkey": str(key)}


def psql(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-XAtc", "select current_user"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_certificate_is_the_identity_and_no_password_is_asked(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path
) -> None:
    kp = pki.issue_client_cert(lab_ca.keypair, "shop/orders-app", secret_sha256=APP)
    mark = len(proxy.audit)
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app"
    start = proxy.wait_audit(
        "session.start", lambda e: e["auth_method"] == "certificate", start=mark
    )
    assert (start["identity"], start["auth_method"]) == ("shop/orders-app", "certificate")


def test_certificate_identity_is_still_subject_to_roles(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path
) -> None:
    kp = pki.issue_client_cert(lab_ca.keypair, "shop/orders-app", secret_sha256=APP)
    out = psql(proxy.dsn(user="postgres", password=None, **cert_files(tmp_path, kp)))
    assert "role 'orders-rw' denies database user 'postgres'" in out.stderr


def test_certificate_from_another_ca_gets_a_clear_fatal(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    """A forged certificate naming a real Token: the handshake completes, the log-in does not."""
    other = pki.make_ca("someone else's CA")
    kp = pki.issue_client_cert(other, "shop/orders-app", secret_sha256=APP)
    mark = len(proxy.audit)
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert out.returncode != 0
    reason = 'client certificate rejected: issued by "CN=someone else\'s CA", not by the rdsgate CA'
    assert f"FATAL:  {reason}" in out.stderr
    assert "HINT:  use a certificate from the rdsgate CA: tls.crt and tls.key of your" in out.stderr
    denied = proxy.wait_audit(
        "auth.denied", lambda e: "client certificate rejected" in e["reason"], start=mark
    )
    assert denied["reason"] == reason
    assert proxy.metric("rdsgate_auth_failures_total", {"reason": "certificate_untrusted"}) >= 1
    assert psql(proxy.dsn()).stdout.strip() == "app"


def test_self_signed_certificate_gets_a_clear_fatal(proxy: RunningProxy, tmp_path: Path) -> None:
    own = pki.make_ca("shop/orders-app")
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, own)))
    assert (
        "FATAL:  client certificate rejected: issued by 'CN=shop/orders-app', not by the rdsgate CA"
    ) in out.stderr


@pytest.mark.parametrize("negotiation", ["postgres", "direct"])
def test_resumed_tls_session_of_a_refused_certificate_is_refused_too(
    proxy: RunningProxy, tmp_path: Path, negotiation: str
) -> None:
    """The verdict travels in the TLS session ticket: resuming skips the chain, not the check.

    Also with direct TLS (`sslnegotiation=direct`), whose handshake starts the connection."""
    other = pki.make_ca("someone else's CA")
    files = cert_files(tmp_path, pki.issue_client_cert(other, "shop/orders-app", secret_sha256=APP))
    ctx = ssl.create_default_context(cafile=str(proxy.ca_file))
    ctx.load_cert_chain(files["sslcert"], files["sslkey"])
    ctx.set_alpn_protocols(["postgresql"])
    session = None
    for attempt in range(2):
        client = RawClient(proxy.port, proxy.ca_file)
        if negotiation == "postgres":
            client.send(wire.ssl_request())
            assert client.read_byte() == b"S"
        sock = ctx.wrap_socket(client.sock, server_hostname="localhost", session=session)
        client.sock = sock
        reply = client.login("app", "unused")
        assert (reply.type, reply.fields["S"], reply.fields["C"]) == (b"E", "FATAL", "28P01")
        assert reply.fields["M"].startswith("client certificate rejected: issued by")
        assert sock.session_reused == bool(attempt)
        session = sock.session
        sock.close()


def test_expired_certificate_gets_a_clear_fatal(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    kp = pki.issue_client_cert(
        lab_ca.keypair,
        "shop/orders-app",
        secret_sha256=APP,
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert out.returncode != 0
    expected = (now - timedelta(days=1)).isoformat()
    assert f"FATAL:  client certificate expired at {expected}" in out.stderr


def test_not_yet_valid_certificate_gets_a_clear_fatal(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    kp = pki.issue_client_cert(
        lab_ca.keypair,
        "shop/orders-app",
        secret_sha256=APP,
        not_before=now + timedelta(days=1),
        not_after=now + timedelta(days=30),
    )
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    expected = (now + timedelta(days=1)).isoformat()
    assert f"FATAL:  client certificate is not valid before {expected}" in out.stderr


def test_certificate_for_an_unknown_token(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path
) -> None:
    kp = pki.issue_client_cert(lab_ca.keypair, "shop/deleted-token", secret_sha256=APP)
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert (
        "FATAL:  client certificate for 'shop/deleted-token': no Token of that name grants "
        "access here"
    ) in out.stderr


def test_certificate_of_an_expired_grant(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path
) -> None:
    kp = pki.issue_client_cert(
        lab_ca.keypair, "shop/old", secret_sha256=secret_digest(EXPIRED_SECRET)
    )
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert "FATAL:  token expired at 2020-01-01T00:00:00+00:00" in out.stderr


@pytest.mark.parametrize("driver", ["psycopg"])
def test_drivers_present_certificates_too(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path, driver: str
) -> None:
    kp = pki.issue_client_cert(
        lab_ca.keypair, "shop/reporting", secret_sha256=secret_digest(REPORTING_SECRET)
    )
    files = cert_files(tmp_path, kp)
    with psycopg.connect(proxy.dsn(user="reporting", password=None, **files)) as conn:
        assert conn.execute("select current_user").fetchone() == ("reporting",)


def test_a_certificate_from_before_a_rotation_is_refused(
    proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path
) -> None:
    """Rotating a Token's secret (or re-creating the Token) retires its old certificates."""
    kp = pki.issue_client_cert(
        lab_ca.keypair, "shop/orders-app", secret_sha256=secret_digest("the secret before")
    )
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert (
        "FATAL:  client certificate for 'shop/orders-app' was issued for an earlier secret of "
        "that Token"
    ) in out.stderr


def test_a_broken_tls_handshake_is_audited(proxy: RunningProxy) -> None:
    """Nothing can be said inside a handshake that failed, so the proxy's records say it."""
    mark = len(proxy.audit)
    before = proxy.metric("rdsgate_auth_failures_total", {"reason": "tls_failed"})
    client = RawClient(proxy.port, proxy.ca_file)
    client.send(wire.ssl_request())
    assert client.read_byte() == b"S"
    client.send(b"\x16\x03\x01\x00\x05hello, not a ClientHello")
    assert client.read() is None
    denied = proxy.wait_audit(
        "auth.denied", lambda e: e["reason"].startswith("TLS handshake failed: "), start=mark
    )
    assert denied["client_addr"].startswith("127.0.0.1:")
    assert proxy.metric("rdsgate_auth_failures_total", {"reason": "tls_failed"}) == before + 1
    assert psql(proxy.dsn()).stdout.strip() == "app"


@pytest.mark.parametrize("algorithm", ["p256", "ed25519"])
def test_a_token_with_its_own_key_logs_in_with_the_signed_certificate_only(
    start_proxy: Callable[..., RunningProxy], lab_ca: LabCA, tmp_path: Path, algorithm: str
) -> None:
    """`spec.publicKey`: the private key never left the client; the grant's credential is a
    digest of the Token's uid and key, usable through a certificate, never as a password."""
    private = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "p256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    digest = access.public_key_digest("uid-1", private.public_key())
    doc = copy.deepcopy(DEFAULT_ACCESS)
    doc["grants"].append(
        {
            "identity": "shop/alice-orders",
            "publicKeySha256": digest,
            "roles": ["orders-rw"],
            "requestedBy": "alice",
        }
    )
    proxy = start_proxy(access=doc)
    end = datetime.now(UTC) + timedelta(hours=12)
    cert = pki.sign_client_cert(
        lab_ca.keypair,
        private.public_key(),
        "shop/alice-orders",
        binding_sha256=digest,
        not_after=end,
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = cert_files(tmp_path, pki.KeyPair(cert, key_pem))
    mark = len(proxy.audit)
    out = psql(proxy.dsn(password=None, **files))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app"
    start = proxy.wait_audit("session.start", start=mark)
    assert (start["identity"], start["requested_by"], start["auth_method"]) == (
        "shop/alice-orders",
        "alice",
        "certificate",
    )
    out = psql(proxy.dsn(password=digest))
    assert "password authentication failed" in out.stderr

    # The same Token name re-created (a new uid): the old certificate is refused.
    doc["grants"][-1]["publicKeySha256"] = access.public_key_digest("uid-2", private.public_key())
    proxy.set_access(doc)

    def refused() -> str | None:
        """The log-in refused; a log-in that raced the reload is revoked instead (try again)."""
        out = psql(proxy.dsn(password=None, **files))
        return out.stderr if out.returncode and "access revoked" not in out.stderr else None

    stderr = wait_for(refused, "the re-created Token to retire the certificate", 10)
    assert "was issued for an earlier key or an earlier Token of that name" in stderr
    assert (
        "HINT:  the Token was re-created: use the certificate in its status.certificate" in stderr
    )


def test_a_certificate_of_a_withdrawn_grant_is_told_why(
    start_proxy: Callable[..., RunningProxy], lab_ca: LabCA, tmp_path: Path
) -> None:
    why = 'alice may no longer bind Role "orders-rw" in namespace "shop"'
    doc = copy.deepcopy(DEFAULT_ACCESS)
    doc["grants"] = [g for g in doc["grants"] if g["identity"] != "shop/orders-app"]
    doc["revoked"] = [{"identity": "shop/orders-app", "reason": why}]
    proxy = start_proxy(access=doc)
    kp = pki.issue_client_cert(lab_ca.keypair, "shop/orders-app", secret_sha256=APP)
    mark = len(proxy.audit)
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert out.returncode != 0
    assert (
        f"FATAL:  client certificate for 'shop/orders-app': access withdrawn: {why}" in out.stderr
    )
    denied = proxy.wait_audit("auth.denied", start=mark)
    assert denied["reason"].endswith(why)

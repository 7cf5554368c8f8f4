"""Client certificates as identities: who they name, and how bad ones are refused."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from rdsgate.operator import pki
from rdsgate.proxy.access import secret_digest
from tests.fixtures.lab import LabCA
from tests.fixtures.proxy import APP_SECRET, EXPIRED_SECRET, REPORTING_SECRET, RunningProxy

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


def test_certificate_from_another_ca_is_refused(proxy: RunningProxy, tmp_path: Path) -> None:
    """The TLS handshake itself fails (as with PostgreSQL), so the reason is on the proxy's side.

    Python's ssl module has no verification callback, so a certificate from another CA
    cannot be let through to be refused with a FATAL the way expired ones are.
    """
    other = pki.make_ca("someone else's CA")
    kp = pki.issue_client_cert(other, "shop/orders-app", secret_sha256=APP)
    mark = len(proxy.audit)
    out = psql(proxy.dsn(password=None, **cert_files(tmp_path, kp)))
    assert out.returncode != 0
    denied = proxy.wait_audit(
        "auth.denied", lambda e: "client certificate rejected" in e["reason"], start=mark
    )
    assert denied["reason"] == (
        "client certificate rejected: unable to get local issuer certificate "
        "(not signed by the rdsgate CA)"
    )
    assert proxy.metric("rdsgate_auth_failures_total", {"reason": "certificate_untrusted"}) >= 1


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

"""When the operator's certificates are kept and when they are issued again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from rdsgate.operator import ca, pki, render

DIGEST = "0123456789abcdef" * 4

CA = pki.make_ca()
NOW = datetime.now(UTC)
URI = ["rdsgate://shop/app#0123456789abcdef"]


def test_ca_secret_round_trip() -> None:
    secret = ca.ca_secret("rdsgate", CA)
    assert secret["metadata"] == {
        "name": "rdsgate-ca",
        "namespace": "rdsgate",
        "labels": {
            "app.kubernetes.io/name": "rdsgate",
            "app.kubernetes.io/component": "ca",
            "app.kubernetes.io/managed-by": "rdsgate-operator",
        },
    }
    assert secret["type"] == "kubernetes.io/tls"
    assert ca.keypair_from_secret(secret) == CA


def test_unusable_secrets_give_no_keypair() -> None:
    assert ca.keypair_from_secret(None) is None
    assert ca.keypair_from_secret({"data": {"tls.crt": "not base64!"}}) is None
    assert (
        ca.keypair_from_secret({"data": {"tls.crt": ca.b64("x"), "tls.key": ca.b64("y")}}) is None
    )


def test_a_fresh_client_certificate_is_current() -> None:
    pair = pki.issue_client_cert(CA, "shop/app", secret_sha256=DIGEST)
    assert ca.is_current(pair, CA, NOW, uris=URI)
    assert not ca.is_current(pair, CA, NOW, uris=["rdsgate://shop/other#0123456789abcdef"])
    assert not ca.is_current(pair, CA, NOW, uris=["rdsgate://shop/app#fedcba9876543210"])
    assert not ca.is_current(pair, pki.make_ca("another"), NOW, uris=URI)
    assert not ca.is_current(None, CA, NOW, uris=URI)


def test_renewal_at_two_thirds_of_the_lifetime() -> None:
    pair = pki.issue_client_cert(CA, "shop/app", secret_sha256=DIGEST, days=90)
    cert = pair.cert
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    at = cert.not_valid_before_utc + life * ca.RENEW_AT
    assert ca.is_current(pair, CA, at - timedelta(seconds=1), uris=URI)
    assert not ca.is_current(pair, CA, at + timedelta(seconds=1), uris=URI)


def test_a_certificate_capped_at_the_token_expiry_is_not_renewed_before_it() -> None:
    now = datetime.now(UTC)  # not the module's NOW: the suite may reach here minutes later
    expires = (now + timedelta(seconds=30)).replace(microsecond=0)
    pair = pki.issue_client_cert(CA, "shop/app", secret_sha256=DIGEST, not_after=expires)
    assert ca.is_current(pair, CA, now + timedelta(seconds=25), uris=URI, not_after=expires)
    assert not ca.is_current(pair, CA, expires, uris=URI, not_after=expires)
    longer = pki.issue_client_cert(CA, "shop/app", secret_sha256=DIGEST, days=90)
    assert not ca.is_current(longer, CA, now, uris=URI, not_after=expires)


def test_signed_by_checks_the_signature_not_just_the_name() -> None:
    impostor = pki.make_ca("rdsgate CA")
    pair = pki.issue_client_cert(impostor, "shop/app", secret_sha256=DIGEST)
    assert pair.cert.issuer == CA.cert.subject
    assert not ca.signed_by(pair.cert, CA)
    assert ca.signed_by(pki.issue_client_cert(CA, "shop/app", secret_sha256=DIGEST).cert, CA)


# Certificates for a Token's own key (spec.publicKey)

KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
BINDING = "cd" * 32


def test_a_key_certificate_lives_twelve_hours_or_until_the_token_expires() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cert, issued = render.key_certificate(None, CA, KEY, "shop/t", BINDING, None, now)
    assert issued and pki.not_after(cert) == now + timedelta(hours=12)
    soon = now + timedelta(hours=2)
    cert, issued = render.key_certificate(None, CA, KEY, "shop/t", BINDING, soon, now)
    assert issued and pki.not_after(cert) == soon


def test_a_key_certificate_is_kept_while_current_and_renewed_when_due() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    first, _ = render.key_certificate(None, CA, KEY, "shop/t", BINDING, None, now)
    same, issued = render.key_certificate(
        first.decode(), CA, KEY, "shop/t", BINDING, None, now + timedelta(hours=7)
    )
    assert (same, issued) == (first, False)
    renewed, issued = render.key_certificate(
        first.decode(), CA, KEY, "shop/t", BINDING, None, now + timedelta(hours=9)
    )
    assert issued and renewed != first  # past 2/3 of 12 hours
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    changes: list[dict[str, Any]] = [
        {"key": other_key},
        {"digest": "ef" * 32},
        {"ca": pki.make_ca("another CA")},
    ]
    for changed in changes:
        args: dict[str, Any] = {"key": KEY, "digest": BINDING, "ca": CA} | changed
        _, issued = render.key_certificate(
            first.decode(), args["ca"], args["key"], "shop/t", args["digest"], None, now
        )
        assert issued, changed

"""The webhook server's own certificate: issued by the operator's CA for the names the API
server dials, and issued again before it is due, in one file replaced at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from rdsgate.operator import pki, webhooks

CA = pki.make_ca("test CA")


def server() -> webhooks.AdmissionServer:
    return webhooks.AdmissionServer(
        addr="127.0.0.1",
        port=9443,
        ca=CA,
        dns_names=["rdsgate-webhook.rdsgate.svc", "rdsgate-webhook.rdsgate.svc.cluster.local"],
    )


def served(s: webhooks.AdmissionServer) -> x509.Certificate:
    assert s.certfile == s.pkeyfile, "key and certificate in one file"
    text = Path(str(s.certfile)).read_bytes()
    assert b"PRIVATE KEY" in text
    return x509.load_pem_x509_certificate(text[text.index(b"-----BEGIN CERTIFICATE") :])


def test_the_certificate_names_the_service_and_the_ca_is_the_bundle() -> None:
    s = server()
    cert = served(s)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "rdsgate-webhook.rdsgate.svc",
        "rdsgate-webhook.rdsgate.svc.cluster.local",
    ]
    assert cert.issuer == CA.cert.subject
    assert s.ca_bundle == CA.cert_pem
    assert s.renew() is False, "a current certificate stays"


def test_a_certificate_due_for_renewal_is_issued_again() -> None:
    s = server()
    before = served(s)
    now = datetime.now(UTC)
    s._pair = pki.issue_server_cert(
        CA,
        s.dns_names,
        not_before=now - timedelta(days=80),
        not_after=now + timedelta(days=10),  # past 2/3 of its life
    )
    assert s.renew() is True
    after = served(s)
    assert after.serial_number != before.serial_number
    assert after.not_valid_after_utc > now + timedelta(days=80)

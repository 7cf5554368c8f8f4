"""The operator's CA as a Secret, and when a certificate it issued must be issued again.

The CA lives in the Secret `rdsgate-ca` (type kubernetes.io/tls) in the operator's own
namespace, created on first start; every proxy server certificate and every Token client
certificate is signed by it, and its certificate is the `ca.crt` clients trust.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from . import pki

CA_SECRET_NAME = "rdsgate-ca"  # noqa: S105 - a name, not a secret
#: Certificates are issued again once this share of their lifetime has passed.
RENEW_AT = 2 / 3


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def unb64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def secret_bytes(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    """One key of a Secret's `data`, decoded; None when absent or not base64."""
    if not secret:
        return None
    data = secret.get("data") or {}
    return unb64(data.get(key)) if isinstance(data, Mapping) else None


def keypair_from_secret(
    secret: Mapping[str, Any] | None, cert_key: str = "tls.crt", key_key: str = "tls.key"
) -> pki.KeyPair | None:
    """The certificate and key a Secret holds, if both are there and parse."""
    cert = secret_bytes(secret, cert_key)
    key = secret_bytes(secret, key_key)
    if not cert or not key:
        return None
    pair = pki.KeyPair(cert, key)
    try:
        pair.cert  # noqa: B018 - parse once to reject garbage
        pair.private_key()
    except (ValueError, TypeError):
        return None
    return pair


def ca_secret(namespace: str, ca: pki.KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": CA_SECRET_NAME,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "rdsgate",
                "app.kubernetes.io/component": "ca",
                "app.kubernetes.io/managed-by": "rdsgate-operator",
            },
        },
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(ca.cert_pem), "tls.key": b64(ca.key_pem)},
    }


def signed_by(cert: x509.Certificate, ca: pki.KeyPair) -> bool:
    public = ca.cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        public.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    except InvalidSignature:
        return False
    return cert.issuer == ca.cert.subject


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return (
        set(ext.get_values_for_type(x509.DNSName)),
        set(ext.get_values_for_type(x509.UniformResourceIdentifier)),
    )


def is_current(
    pair: pki.KeyPair | None,
    ca: pki.KeyPair,
    now: datetime,
    *,
    dns_names: Sequence[str] = (),
    uris: Sequence[str] = (),
    not_after: datetime | None = None,
) -> bool:
    """Whether `pair` can stay: signed by this CA, for exactly these names, not due for renewal.

    Due means past 2/3 of its lifetime, unless its end was capped at `not_after` (a Token's
    expiry) and it already reaches it: renewing could not make it live longer.
    """
    if pair is None:
        return False
    try:
        cert = pair.cert
    except ValueError:
        return False
    if not signed_by(cert, ca):
        return False
    dns, uri = _sans(cert)
    if dns != set(dns_names) or uri != set(uris):
        return False
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= end:
        return False
    if not_after is not None:
        if end > not_after:
            return False
        if end == not_after.replace(microsecond=0):
            return True
    return now < start + (end - start) * RENEW_AT

"""The operator's certificate authority: ECDSA P-256 keys and X.509 certificates.

ECDSA P-256 because a TLS handshake signs with the server key on every new connection,
and a P-256 signature costs ~0.03 ms here against ~0.95 ms for RSA-2048.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rdsgate.proxy.auth import client_certificate_uri

CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("the CA key is not an ECDSA key")
        return key


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(
    days: float, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    start = not_before or now - CLOCK_SKEW
    end = not_after or now + timedelta(days=days)
    return start, end


def make_ca(
    common_name: str = "rdsgate CA",
    *,
    days: float = 3650,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> KeyPair:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity(days, not_before, not_after)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


#: The public keys a Token may carry (`spec.publicKey`).
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048


class BadPublicKey(ValueError):
    """A `spec.publicKey` the CA will not sign; the message says why."""


def load_public_key(pem: str) -> PublicKey:
    """A Token's public key: PEM SubjectPublicKeyInfo of ECDSA P-256/P-384, Ed25519 or RSA of
    2048 bits or more. Raises BadPublicKey with a reason a user can act on."""
    text = pem.strip()
    if "PRIVATE KEY" in text:
        raise BadPublicKey(
            "this is a private key: put only the public key here (openssl pkey -pubout) "
            "and keep the private key where it is"
        )
    if not text.startswith("-----BEGIN PUBLIC KEY-----"):
        raise BadPublicKey(
            "expected a PEM public key starting with -----BEGIN PUBLIC KEY----- "
            "(SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it)"
        )
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError) as exc:
        raise BadPublicKey(f"not a readable PEM public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise BadPublicKey(f"ECDSA curve {key.curve.name} is not accepted: use P-256 or P-384")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise BadPublicKey(
                f"RSA key of {key.key_size} bits is too short: use at least {MIN_RSA_BITS}"
            )
        return key
    raise BadPublicKey(
        f"{type(key).__name__.removeprefix('_')} keys are not accepted: use ECDSA P-256 or "
        "P-384, Ed25519, or RSA of 2048 bits or more"
    )


def public_key_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _leaf(
    ca: KeyPair,
    subject: x509.Name,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: float,
    not_before: datetime | None,
    not_after: datetime | None,
    public_key: PublicKey | None = None,
) -> KeyPair:
    """A certificate signed by `ca`: for a new key (returned with it), or for someone else's
    `public_key` (then `key_pem` is empty: the private key is not ours to hold)."""
    key = _new_key() if public_key is None else None
    ca_cert = ca.cert
    start, end = _validity(days, not_before, not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key if public_key is not None else key.public_key())  # type: ignore[union-attr]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(
                public_key if public_key is not None else key.public_key()  # type: ignore[union-attr]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key(), hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key) if key else b"")


#: X.509's upper bound on a Common Name (RFC 5280 ub-common-name).
CN_MAX = 64


def issue_server_cert(
    ca: KeyPair,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    *,
    days: float = 90,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    common_name: str | None = None,
) -> KeyPair:
    """A TLS server certificate for these names (the first one that fits in a Common Name,
    64 characters, is also the Common Name; clients check the SANs)."""
    fitting = [n for n in [*dns_names, *ip_addresses] if len(n) <= CN_MAX]
    cn = common_name or (fitting[0] if fitting else "rdsgate server")
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return _leaf(ca, subject, sans, ExtendedKeyUsageOID.SERVER_AUTH, days, not_before, not_after)


def issue_client_cert(
    ca: KeyPair,
    identity: str,
    *,
    secret_sha256: str,
    days: float = 90,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> KeyPair:
    """A client certificate for a Token: its URI SAN names the Token and is bound to the
    Token's current secret (see rdsgate.proxy.auth.client_certificate_uri), so rotating the
    secret, or re-creating the Token, retires every certificate issued before."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rdsgate client")])
    uri = client_certificate_uri(identity, secret_sha256)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    return _leaf(ca, subject, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days, not_before, not_after)


def sign_client_cert(
    ca: KeyPair,
    public_key: PublicKey,
    identity: str,
    *,
    binding_sha256: str,
    not_after: datetime,
    not_before: datetime | None = None,
) -> bytes:
    """A client certificate (PEM) for someone else's key: a Token with `spec.publicKey`.
    The same URI SAN as `issue_client_cert`, bound to the grant's `publicKeySha256`."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rdsgate client")])
    uri = client_certificate_uri(identity, binding_sha256)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    pair = _leaf(
        ca,
        subject,
        sans,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        0,
        not_before,
        not_after,
        public_key=public_key,
    )
    return pair.cert_pem


def issue_legacy_cn_cert(ca: KeyPair, common_name: str, *, days: float = 90) -> KeyPair:
    """A server certificate with only a Common Name and no SANs, as RDS issued before mid-2020."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _leaf(ca, subject, [], ExtendedKeyUsageOID.SERVER_AUTH, days, None, None)


def not_after(cert_pem: bytes) -> datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc

"""Client authentication: which grant of the access file a client is.

Three credentials, tried in this order:
- a client certificate signed by the operator's CA: its URI SAN `rdsgate://NS/TOKEN#BINDING`
  names the grant and is bound to the grant's current secret; no password is asked;
- a password that is a ServiceAccount token (a JWT): checked with TokenReview, matched to
  the grant whose subject is that ServiceAccount;
- any other password: a Token secret, matched by SHA-256 in constant time.
Secrets are never logged or echoed: errors say what kind of credential failed, not what
it was.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509

from .access import AccessPolicy, Grant
from .errors import AuthenticationFailed
from .tokenreview import Reviewed

Method = Literal["password", "certificate", "serviceaccount"]
URI_PREFIX = "rdsgate://"
#: Where a client finds the certificate to use: a Token's Secret, or for a Token with its
#: own key pair, its status (which `rdsgate db connect` fetches and renews).
CURRENT_CERTIFICATE = (
    "use the current certificate of your Token: tls.crt and tls.key of its Secret, or "
    "status.certificate for a Token with spec.publicKey (run `rdsgate db connect` again)"
)
BINDING_LENGTH = 16


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client is: `name` in audit and limits, `grant` what it may do."""

    name: str
    method: Method
    grant: Grant


def expiry_message(grant: Grant) -> str:
    assert grant.expires_at is not None
    return f"token expired at {grant.expires_at.isoformat()}"


def check_expiry(grant: Grant, now: datetime) -> None:
    if grant.expired(now):
        raise AuthenticationFailed(
            expiry_message(grant),
            reason="expired",
            hint="ask for a new Token, or extend spec.ttl of this one",
        )


def authenticate_password(policy: AccessPolicy, password: str, now: datetime) -> Identity:
    grant = policy.grant_for_secret(password)
    if grant is None:
        raise AuthenticationFailed(
            "password authentication failed: the password is not a current rdsgate Token secret",
            reason="bad_password",
            hint="use the `token` key of your Token's Secret as the password",
        )
    check_expiry(grant, now)
    return Identity(grant.identity, "password", grant)


def client_certificate_uri(identity: str, digest: str) -> str:
    """`rdsgate://NS/TOKEN#BINDING`: the Token, and the first 16 hex digits of its grant's
    credential digest when the certificate was issued (`secretSha256`, or `publicKeySha256`
    for a Token with its own key pair), so a new secret or a re-created Token retires it."""
    return f"{URI_PREFIX}{identity}#{digest[:BINDING_LENGTH]}"


def certificate_identity(der: bytes, now: datetime) -> tuple[str, str]:
    """The identity a verified client certificate names, and its secret binding.

    The TLS layer verifies the chain but not the dates (so that an expired certificate
    gets this clear error instead of a bare TLS alert).
    """
    cert = x509.load_der_x509_certificate(der)
    if now < cert.not_valid_before_utc:
        raise AuthenticationFailed(
            f"client certificate is not valid before {cert.not_valid_before_utc.isoformat()}",
            reason="certificate_not_yet_valid",
            hint="check the client's clock, or use a certificate issued now",
        )
    if now >= cert.not_valid_after_utc:
        raise AuthenticationFailed(
            f"client certificate expired at {cert.not_valid_after_utc.isoformat()}",
            reason="certificate_expired",
            hint=CURRENT_CERTIFICATE,
        )
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    for uri in uris:
        if uri.startswith(URI_PREFIX) and "#" in uri:
            identity, binding = uri[len(URI_PREFIX) :].split("#", 1)
            return identity, binding
    raise AuthenticationFailed(
        "client certificate names no rdsgate Token (no rdsgate://NAMESPACE/TOKEN#… URI)",
        reason="certificate_unknown",
        hint=CURRENT_CERTIFICATE,
    )


def authenticate_certificate(policy: AccessPolicy, der: bytes, now: datetime) -> Identity:
    name, binding = certificate_identity(der, now)
    grant = policy.by_identity.get(name)
    bound_to = grant.certificate_binding if grant is not None else None
    withdrawn = policy.revocations.get(name)
    if grant is None and withdrawn is not None:
        raise AuthenticationFailed(
            f"client certificate for {name!r}: access withdrawn: {withdrawn}",
            reason="revoked",
            hint="ask for the verb bind on the Role again, or for a Token from someone who has it",
        )
    if grant is None or bound_to is None:
        raise AuthenticationFailed(
            f"client certificate for {name!r}: no Token of that name grants access here",
            reason="certificate_unknown",
            hint="the Token may have been deleted; ask for a new one",
        )
    if not hmac.compare_digest(bound_to[:BINDING_LENGTH].encode(), binding.encode()):
        if grant.public_key_sha256 is not None:
            raise AuthenticationFailed(
                f"client certificate for {name!r} was issued for an earlier key or an earlier "
                "Token of that name",
                reason="certificate_superseded",
                hint="the Token was re-created: use the certificate in its status.certificate",
            )
        raise AuthenticationFailed(
            f"client certificate for {name!r} was issued for an earlier secret of that Token",
            reason="certificate_superseded",
            hint="the Token's credential was rotated or the Token re-created: use the current "
            "tls.crt and tls.key of its Secret",
        )
    check_expiry(grant, now)
    return Identity(name, "certificate", grant)


def authenticate_service_account(
    policy: AccessPolicy, account: Reviewed, now: datetime
) -> Identity:
    grant = policy.by_service_account.get((account.namespace, account.name))
    if grant is None:
        raise AuthenticationFailed(
            f"ServiceAccount {account.namespace}/{account.name} has no Token granting access here",
            reason="serviceaccount_unknown",
            hint="create a Token whose spec.subject.serviceAccount names it",
        )
    check_expiry(grant, now)
    return Identity(account.username, "serviceaccount", grant)

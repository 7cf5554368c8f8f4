"""Client authentication: which grant of the access file a client is.

A password is a Token secret (matched by SHA-256 in constant time). Secrets are never
logged or echoed: errors say what kind of credential failed, not what it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .access import AccessPolicy, Grant
from .errors import AuthenticationFailed

Method = Literal["password", "certificate", "serviceaccount"]


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    method: Method
    grant: Grant


def check_expiry(grant: Grant, now: datetime) -> None:
    if grant.expired(now):
        assert grant.expires_at is not None
        raise AuthenticationFailed(
            f"token expired at {grant.expires_at.isoformat()}",
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

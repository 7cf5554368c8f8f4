"""The proxy's AWS identity: one botocore session, optional assume-role, RDS IAM auth tokens.

Credentials come from botocore's own chain in its order (environment, IRSA web identity,
EKS Pod Identity container credentials, shared config, IMDSv2), so every source and its
refresh logic is botocore's, not ours. With `assumeRoleArn`, those credentials assume the
role (with `externalId`) through botocore's refreshing fetcher. Clients are created once
per process; tokens are cached per (host, port, user) until shortly before they expire.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import botocore.session
from botocore.awsrequest import prepare_request_dict
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import BotoCoreError, ClientError, CredentialRetrievalError
from botocore.model import ServiceId
from botocore.signers import RequestSigner

from .config import AWS
from .errors import CredentialsUnavailable

#: RDS IAM auth tokens are valid for 15 minutes; rdsgate renews them after `aws.tokenReuse`.
TOKEN_LIFETIME = 900.0


class _AssumeRoleProvider(CredentialProvider):
    """Puts assume-role credentials, sourced from the default chain, at the head of the chain."""

    METHOD = "rdsgate-assume-role"
    CANONICAL_NAME = "rdsgate-assume-role"

    def __init__(self, source: botocore.session.Session, role_arn: str, extra: dict[str, str]):
        self._source = source
        self._role_arn = role_arn
        self._extra = extra

    def load(self) -> Credentials | None:
        source_credentials = self._source.get_credentials()
        if source_credentials is None:
            return None
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=self._source.create_client,
            source_credentials=source_credentials,
            role_arn=self._role_arn,
            extra_args=self._extra,
        )
        return DeferredRefreshableCredentials(
            method=self.METHOD, refresh_using=fetcher.fetch_credentials
        )


def make_session(aws: AWS, session_name: str = "rdsgate") -> botocore.session.Session:
    """A botocore session whose credentials are the chain's, or the assumed role's."""
    session = botocore.session.get_session()
    session.set_config_variable("region", aws.region)
    if aws.assume_role_arn:
        source = botocore.session.get_session()
        source.set_config_variable("region", aws.region)
        extra = {"RoleSessionName": session_name[:64]}
        if aws.external_id:
            extra["ExternalId"] = aws.external_id
        session.register_component(
            "credential_provider",
            CredentialResolver([_AssumeRoleProvider(source, aws.assume_role_arn, extra)]),
        )
    return session


def describe_source(method: str | None, aws: AWS) -> str:
    """The credential source botocore's credential `method` stands for, as the user set it up."""
    from .diagnose.credential_chain import SOURCE_NAMES, SOURCES  # diagnose imports this module
    from .imds import metadata_endpoint

    if method == _AssumeRoleProvider.METHOD:
        return f"sts:AssumeRole of {aws.assume_role_arn}"
    source = SOURCES.get(method or "")
    if source is None:
        return "the credential chain"
    env = os.environ
    detail = {
        "irsa": f"sts:AssumeRoleWithWebIdentity of {env.get('AWS_ROLE_ARN')} with the token "
        f"in {env.get('AWS_WEB_IDENTITY_TOKEN_FILE')}",
        "pod-identity": env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        or f"http://169.254.170.2{env.get('AWS_CONTAINER_CREDENTIALS_RELATIVE_URI', '')}",
        "imds": metadata_endpoint(),
    }.get(source)
    name = SOURCE_NAMES[source]
    return f"{name} ({detail})" if detail else name


def explain_no_credentials(aws: AWS) -> str:
    where = (
        "environment variables (AWS_ACCESS_KEY_ID), IRSA (AWS_ROLE_ARN + "
        "AWS_WEB_IDENTITY_TOKEN_FILE), EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI), "
        "shared config files, and the EC2 instance metadata service (IMDSv2)"
    )
    return f"no AWS credentials found: looked in {where}"


@dataclass(frozen=True, slots=True)
class _Cached:
    token: str
    minted: float


class TokenMinter:
    """Mints RDS IAM auth tokens, caching each until it nears expiry.

    Signed by botocore's own SigV4 request signer, exactly as
    `RDS.Client.generate_db_auth_token` does, but without an RDS client: that loads the
    whole RDS API model, about 15 MB of memory the proxy would hold for one presigned URL.
    `cached` is the cheap path for the event loop; `mint` may refresh credentials over the
    network (STS, IMDS), so the proxy calls it in a worker thread.
    """

    def __init__(self, aws: AWS, session: botocore.session.Session | None = None) -> None:
        self._aws = aws
        self._session = session or make_session(aws)
        self._cache: dict[tuple[str, int, str], _Cached] = {}

    @property
    def session(self) -> botocore.session.Session:
        return self._session

    def _sign(self, credentials: Credentials, host: str, port: int, user: str) -> str:
        """`generate_db_auth_token` of botocore.signers, for a signer of our own."""
        signer = RequestSigner(
            ServiceId("rds"),
            self._aws.region,
            "rds",
            "v4",
            credentials,
            self._session.get_component("event_emitter"),
        )
        request: dict[str, Any] = {
            "url_path": "/",
            "query_string": "",
            "headers": {},
            "body": {"Action": "connect", "DBUser": user},
            "method": "GET",
        }
        # The token is the presigned URL without its scheme, which only helps URL parsing.
        scheme = "https://"
        prepare_request_dict(request, f"{scheme}{host}:{port}")
        url: str = signer.generate_presigned_url(
            request,
            operation_name="connect",
            expires_in=int(TOKEN_LIFETIME),
            region_name=self._aws.region,
            signing_name="rds-db",
        )
        return url[len(scheme) :]

    def cached(self, host: str, port: int, user: str) -> str | None:
        entry = self._cache.get((host, port, user))
        if entry is not None and time.monotonic() - entry.minted < self._aws.token_reuse:
            return entry.token
        return None

    def reusable_for(self) -> float:
        """Seconds until the last cached token is due for renewal (0 when none is left)."""
        newest = max((e.minted for e in self._cache.values()), default=None)
        if newest is None:
            return 0.0
        return max(0.0, newest + self._aws.token_reuse - time.monotonic())

    def forget(self, host: str, port: int, user: str) -> None:
        """Drops a cached token the upstream refused, so the next log-in signs a fresh one."""
        self._cache.pop((host, port, user), None)

    def credentials(self) -> Credentials:
        """Current credentials, refreshed if due; raises CredentialsUnavailable naming the source."""
        method: str | None = None
        try:
            creds = self._session.get_credentials()
            if creds is not None:
                method = creds.method
                frozen = creds.get_frozen_credentials()
                if frozen.access_key:
                    return creds
        except (BotoCoreError, ClientError, RuntimeError) as exc:
            # RuntimeError: botocore's "refreshed credentials are still expired".
            why = str(exc)
            if method == "iam-role" and isinstance(exc, CredentialRetrievalError):
                # botocore says "response did not contain: access_key, ..." for an IMDS that
                # gave nothing at all: no answer, an error, or no role attached.
                why = (
                    "the instance metadata service gave no credentials when the current ones "
                    "were due for renewal (it did not answer, refused the request, or the "
                    "instance has no role); botocore stops using them 10 minutes before they expire"
                )
            raise CredentialsUnavailable(
                f"cannot get AWS credentials from {describe_source(method, self._aws)}: {why}",
                hint="run `rdsgate diagnose` to see which credential source failed and why",
            ) from exc
        raise CredentialsUnavailable(
            explain_no_credentials(self._aws),
            hint="give the proxy an IAM role (IRSA or EKS Pod Identity), or raise the node's "
            "IMDSv2 hop limit to 2; `rdsgate diagnose` shows which source failed",
        )

    def mint(self, host: str, port: int, user: str) -> str:
        credentials = self.credentials()
        try:
            token = self._sign(credentials, host, port, user)
        except (BotoCoreError, ClientError) as exc:
            raise CredentialsUnavailable(f"cannot sign an RDS IAM auth token: {exc}") from exc
        self._cache[(host, port, user)] = _Cached(token, time.monotonic())
        return token

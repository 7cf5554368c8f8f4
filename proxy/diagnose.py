"""Diagnostics: each failure mode of IAM access to RDS Proxy, named with its evidence and its fix.

One engine behind `rdsgate diagnose`, the proxy's start-up and periodic checks, and the
Database conditions. Every check returns a `Finding` (JSON-serialisable: check id,
status pass/fail/warn/skip, summary, evidence, fix, and a CamelCase reason for
Kubernetes conditions). Checks share one `_Run`, whose steps (credentials, DNS, TCP,
TLS, the RDS API) are computed once, on first use, so a subset of checks only does the
work it needs.

The checks follow the troubleshooting section of the Teleport RDS Proxy guide: no
credentials (and the IMDSv2 hop limit behind them on EKS), endpoint timeouts, legacy
Common-Name certificates, sts:AssumeRole AccessDenied, refused IAM logins, policy size
limits, plus the RDS Proxy's own configuration and target health.

The policy documents that the fixes print live here too (the data plane cannot import
the operator); `rdsgate.operator.iam` builds its sizing and attaching on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from ipaddress import ip_address
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError
from cryptography import x509
from cryptography.x509.oid import NameOID

from . import imds, wire
from .aws import TokenMinter, make_session
from .config import AWS, DatabaseRef, ProxyConfig, Upstream
from .errors import ConfigError, CredentialsUnavailable, ProtocolViolation
from .tls import upstream_context

# ---------------------------------------------------------------------------------------
# Findings


class Status(StrEnum):
    PASS = "pass"  # noqa: S105
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    """The outcome of one check, as the CLI prints it and the operator turns into conditions."""

    check: str
    status: Status
    summary: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    fix: str | None = None

    @property
    def title(self) -> str:
        return CHECK_TITLES.get(self.check, self.check)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "title": self.title,
            "status": self.status.value,
            "reason": self.reason,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "fix": self.fix,
        }


CHECK_TITLES: dict[str, str] = {
    "credentials": "AWS credentials",
    "imds": "Instance metadata (IMDSv2)",
    "assume-role": "Assume role",
    "endpoint-dns": "Endpoint DNS",
    "endpoint-tcp": "Endpoint TCP",
    "upstream-tls": "Upstream TLS",
    "rds-proxy-auth": "RDS Proxy authentication",
    "rds-proxy-targets": "RDS Proxy targets",
    "iam-login": "IAM login",
    "iam-policy-size": "IAM policy size",
}
CHECKS: tuple[str, ...] = tuple(CHECK_TITLES)

#: Database status conditions and the checks that decide each.
CONDITION_CHECKS: dict[str, tuple[str, ...]] = {
    "CredentialsAvailable": ("credentials", "imds", "assume-role"),
    "UpstreamReachable": ("endpoint-dns", "endpoint-tcp", "upstream-tls"),
    "UpstreamAuthenticated": ("rds-proxy-auth", "iam-login"),
    "TargetsHealthy": ("rds-proxy-targets",),
}


def failed(findings: Iterable[Finding]) -> bool:
    return any(f.status is Status.FAIL for f in findings)


def conditions(findings: Sequence[Finding]) -> list[dict[str, str]]:
    """Findings as Kubernetes conditions (type, status, reason, message), one per type.

    False when a deciding check failed, True when one passed (reason and message of a
    warning, if any), Unknown when all were skipped or none ran. The caller adds
    `lastTransitionTime` and `observedGeneration`.
    """
    out: list[dict[str, str]] = []
    for ctype, checks in CONDITION_CHECKS.items():
        relevant = [f for f in findings if f.check in checks]
        fails = [f for f in relevant if f.status is Status.FAIL]
        warns = [f for f in relevant if f.status is Status.WARN]
        passes = [f for f in relevant if f.status is Status.PASS]
        if fails:
            status, chosen = "False", fails
        elif warns or passes:
            status, chosen = "True", warns or passes
        else:
            status, chosen = "Unknown", relevant
        if chosen:
            reason = chosen[0].reason
            message = " ".join(f.summary for f in chosen)
        else:
            reason, message = "NotChecked", "no check has run yet"
        out.append({"type": ctype, "status": status, "reason": reason, "message": message})
    return out


# ---------------------------------------------------------------------------------------
# Policy documents that the fixes print

POLICY_VERSION = "2012-10-17"


def partition(region: str) -> str:
    """The ARN partition of a region: aws, aws-cn or aws-us-gov."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def dbuser_arn(region: str, account_id: str, proxy_resource_id: str, user: str) -> str:
    """The `rds-db:connect` resource for one database user of one RDS Proxy (user may glob)."""
    return f"arn:{partition(region)}:rds-db:{region}:{account_id}:dbuser:{proxy_resource_id}/{user}"


def policy(*statements: Mapping[str, Any]) -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": [dict(s) for s in statements]}


def connect_statement(resources: Sequence[str], sid: str = "RdsgateConnect") -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": "rds-db:connect",
        "Resource": list(resources),
    }


def connect_policy(
    region: str, account_id: str, proxy_resource_id: str, users: Iterable[str]
) -> dict[str, Any]:
    """The least-privilege policy for IAM login to one RDS Proxy as these database users."""
    arns = [dbuser_arn(region, account_id, proxy_resource_id, u) for u in sorted(set(users))]
    return policy(connect_statement(arns))


def assume_role_trust_policy(principal_arn: str, external_id: str | None = None) -> dict[str, Any]:
    """The trust policy a target role needs so that `principal_arn` may assume it."""
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal_arn},
        "Action": "sts:AssumeRole",
    }
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return policy(statement)


def assume_role_permission_policy(role_arn: str) -> dict[str, Any]:
    """The identity policy the caller needs to call sts:AssumeRole on `role_arn`."""
    return policy({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn})


def principal_for_trust(caller_arn: str) -> str:
    """The ARN a trust policy names for a caller: an assumed-role session → its role.

    The session ARN does not carry the role's path; `_Run` looks it up in IAM when it can.
    """
    m = re.match(r"^arn:([\w-]+):sts::(\d{12}):assumed-role/([^/]+)/.+$", caller_arn)
    if m:
        return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}"
    return caller_arn


def _pretty(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# ---------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Target:
    """What the checks need: the Database, its upstream endpoint and TLS, and the AWS section."""

    database: DatabaseRef
    upstream: Upstream
    aws: AWS

    @classmethod
    def from_config(cls, config: ProxyConfig) -> Target:
        return cls(database=config.database, upstream=config.upstream, aws=config.aws)


@dataclass(frozen=True)
class Options:
    #: Database users to try an IAM login as (none: the login check is skipped).
    db_users: Sequence[str] = ()
    db_name: str = "postgres"
    #: The EC2 instance to confirm IMDS settings on, when IMDS cannot say.
    instance_id: str | None = None
    #: Check ids to run (None: all of them).
    only: Collection[str] | None = None
    imds_timeout: float | None = None
    imds_endpoint: str | None = None
    #: The most database users the login check tries.
    max_logins: int = 5


_API = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1})
_DENIED = re.compile(r"AccessDenied|UnauthorizedOperation|NotAuthorized|Forbidden", re.I)
_SOURCES = {
    "env": "environment",
    "assume-role-with-web-identity": "irsa",
    "container-role": "pod-identity",
    "shared-credentials-file": "shared-config",
    "config-file": "shared-config",
    "assume-role": "shared-config",
    "sso": "shared-config",
    "custom-process": "shared-config",
    "login": "shared-config",
    "iam-role": "imds",
}
_SOURCE_NAMES = {
    "environment": "environment variables",
    "irsa": "IRSA (web identity)",
    "pod-identity": "EKS Pod Identity",
    "shared-config": "shared config files",
    "imds": "EC2 instance profile (IMDS)",
}
_HOP_LIMIT_FIX = """\
The token PUT to the instance metadata service gets no answer in this pod: the node's
PUT response hop limit is 1, so the answer dies one hop short of the pod.
Raise it to 2 on the node:
  aws ec2 modify-instance-metadata-options --instance-id {instance} \\
      --http-put-response-hop-limit 2 --http-tokens required
and for new nodes, in the launch template (or the node group's):
  MetadataOptions: {{HttpPutResponseHopLimit: 2, HttpTokens: required}}
or, with Karpenter, in the EC2NodeClass:
  spec:
    metadataOptions: {{httpPutResponseHopLimit: 2, httpTokens: required}}
Better: give the proxy its own IAM role with IRSA (spec.proxy.serviceAccount.roleArn;
`rdsgate iam trust-policy` prints its trust policy) or EKS Pod Identity, so it does not
borrow the node's role at all."""


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _denied(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and bool(_DENIED.search(_error_code(exc)))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


# ---------------------------------------------------------------------------------------
# Shared steps


@dataclass(frozen=True)
class _Creds:
    session: botocore.session.Session
    method: str | None = None
    error: str | None = None

    @property
    def source(self) -> str | None:
        return _SOURCES.get(self.method or "", self.method)


@dataclass(frozen=True)
class _Dns:
    addresses: list[str]
    elapsed_ms: float
    error: str | None = None


@dataclass(frozen=True)
class _Tcp:
    address: str | None
    attempts: list[dict[str, Any]]
    kind: str | None = None  # timeout, refused, unreachable


@dataclass(frozen=True)
class _CertInfo:
    subject_cn: str | None
    dns_names: list[str]
    ip_addresses: list[str]
    issuer: str
    not_before: datetime
    not_after: datetime
    has_san: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "subjectCN": self.subject_cn,
            "subjectAltNames": self.dns_names + self.ip_addresses,
            "issuer": self.issuer,
            "notBefore": self.not_before.isoformat(),
            "notAfter": self.not_after.isoformat(),
        }


@dataclass(frozen=True)
class _Tls:
    ok: bool
    evidence: dict[str, Any]
    cert: _CertInfo | None = None
    error: str | None = None
    verify_code: int | None = None
    refused: bool = False


@dataclass(frozen=True)
class _Login:
    user: str
    outcome: str  # ok, iam-refused, no-secret, tls-required, database-missing, error
    message: str
    sqlstate: str | None = None
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "outcome": self.outcome, "message": self.message}
        if self.sqlstate:
            out["sqlstate"] = self.sqlstate
        out["elapsedMs"] = self.elapsed_ms
        return out


def _chain_sources(session: botocore.session.Session) -> list[dict[str, Any]]:
    """Which sources of botocore's chain have something configured, in the chain's order."""
    env = os.environ
    out: list[dict[str, Any]] = []
    has_env = bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
    out.append(
        {
            "source": "environment",
            "present": has_env,
            "detail": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            + ("" if has_env else " not set"),
        }
    )
    role, token_file = env.get("AWS_ROLE_ARN"), env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    irsa_detail = "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE"
    if role and token_file:
        irsa_detail = f"role {role}, token file {token_file}"
        if not os.path.exists(token_file):
            irsa_detail += " (the token file does not exist)"
    else:
        irsa_detail += " not set"
    out.append({"source": "irsa", "present": bool(role and token_file), "detail": irsa_detail})
    full = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    relative = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    out.append(
        {
            "source": "pod-identity",
            "present": bool(full or relative),
            "detail": f"AWS_CONTAINER_CREDENTIALS_FULL_URI={full}"
            if full
            else (
                f"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI={relative}"
                if relative
                else "AWS_CONTAINER_CREDENTIALS_FULL_URI not set"
            ),
        }
    )
    profile = session.get_config_variable("profile") or "default"
    files = [
        os.path.expanduser(session.get_config_variable("credentials_file") or ""),
        os.path.expanduser(session.get_config_variable("config_file") or ""),
    ]
    existing = [f for f in files if f and os.path.isfile(f) and os.path.getsize(f) > 0]
    try:
        profiles = session.full_config.get("profiles", {})
        has_profile = profile in profiles or bool(
            session.get_scoped_config().get("aws_access_key_id")
        )
    except BotoCoreError:
        has_profile = False
    out.append(
        {
            "source": "shared-config",
            "present": bool(existing) and has_profile,
            "detail": f"profile {profile!r} in {', '.join(existing)}"
            if existing
            else "no shared config or credentials file",
        }
    )
    disabled = imds.metadata_disabled()
    out.append(
        {
            "source": "imds",
            "present": not disabled,
            "detail": "disabled by AWS_EC2_METADATA_DISABLED"
            if disabled
            else f"instance profile at {imds.metadata_endpoint()}",
        }
    )
    return out


def _name_matches(host: str, cert: _CertInfo) -> bool:
    try:
        addr = ip_address(host)
    except ValueError:
        host = host.lower().rstrip(".")
        for name in cert.dns_names:
            name = name.lower().rstrip(".")
            if name == host:
                return True
            if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
                return True
        return False
    return str(addr) in cert.ip_addresses


def _cert_info(der: bytes) -> _CertInfo:
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        has_san = True
    except x509.ExtensionNotFound:
        dns_names, ips, has_san = [], [], False
    return _CertInfo(
        subject_cn=str(cns[0].value) if cns else None,
        dns_names=dns_names,
        ip_addresses=ips,
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        has_san=has_san,
    )


class _Run:
    """One diagnosis: the inputs and the steps that checks share, each computed once."""

    def __init__(self, target: Target, options: Options) -> None:
        self.target = target
        self.options = options
        self.upstream = target.upstream
        self.aws = target.aws
        self.host = target.upstream.host
        self.port = target.upstream.port
        self.server_name = target.upstream.tls.server_name or self.host

    # -- AWS ---------------------------------------------------------------------------

    def client(self, session: botocore.session.Session, service: str) -> Any:
        return session.create_client(service, region_name=self.aws.region, config=_API)

    @cached_property
    def base(self) -> _Creds:
        """The chain's credentials, before any assume-role."""
        base_aws = self.aws.model_copy(update={"assume_role_arn": None, "external_id": None})
        session = make_session(base_aws)
        try:
            creds = session.get_credentials()
            if creds is None:
                return _Creds(session)
            frozen = creds.get_frozen_credentials()
            if not frozen.access_key:
                return _Creds(session)
            return _Creds(session, method=creds.method)
        except (BotoCoreError, ClientError) as exc:
            return _Creds(session, error=_error_text(exc))

    @cached_property
    def sources(self) -> list[dict[str, Any]]:
        return _chain_sources(self.base.session)

    @cached_property
    def identity(self) -> dict[str, str] | BaseException:
        """sts:GetCallerIdentity with the chain's credentials (or the error)."""
        try:
            out = self.client(self.base.session, "sts").get_caller_identity()
        except (BotoCoreError, ClientError) as exc:
            return exc
        return {"account": out["Account"], "arn": out["Arn"], "userId": out["UserId"]}

    @cached_property
    def imds_probe(self) -> imds.ImdsProbe:
        return imds.probe(self.options.imds_endpoint, timeout=self.options.imds_timeout)

    @cached_property
    def assumed(self) -> dict[str, Any] | BaseException | None:
        """sts:AssumeRole of `assumeRoleArn` with the chain's credentials; None if not set."""
        role = self.aws.assume_role_arn
        if not role:
            return None
        kwargs: dict[str, Any] = {"RoleArn": role, "RoleSessionName": "rdsgate-diagnose"}
        if self.aws.external_id:
            kwargs["ExternalId"] = self.aws.external_id
        try:
            out = self.client(self.base.session, "sts").assume_role(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            return exc
        return {
            "assumedRoleArn": out["AssumedRoleUser"]["Arn"],
            "expiration": out["Credentials"]["Expiration"].isoformat(),
        }

    @cached_property
    def has_credentials(self) -> bool:
        if self.base.method is None:
            return False
        return not (self.aws.assume_role_arn and not isinstance(self.assumed, dict))

    @cached_property
    def session(self) -> botocore.session.Session:
        """The proxy's own session: the chain's credentials, or the assumed role's."""
        if self.aws.assume_role_arn:
            return make_session(self.aws, "rdsgate-diagnose")
        return self.base.session

    @cached_property
    def final_identity(self) -> dict[str, str] | None:
        if not self.aws.assume_role_arn:
            ident = self.identity
            return ident if isinstance(ident, dict) else None
        if not self.has_credentials:
            return None
        try:
            out = self.client(self.session, "sts").get_caller_identity()
        except (BotoCoreError, ClientError):
            return None
        return {"account": out["Account"], "arn": out["Arn"], "userId": out["UserId"]}

    def role_arn_with_path(self, caller_arn: str) -> str:
        principal = principal_for_trust(caller_arn)
        m = re.match(r"^arn:[\w-]+:iam::\d{12}:role/(.+)$", principal)
        if not m or caller_arn == principal:
            return principal
        try:
            role = self.client(self.base.session, "iam").get_role(RoleName=m.group(1))
        except (BotoCoreError, ClientError):
            return principal
        return str(role["Role"]["Arn"])

    @cached_property
    def db_proxy(self) -> dict[str, Any] | str:
        """The RDS Proxy behind the endpoint (describe_db_proxies), or why it is unknown."""
        if not self.has_credentials:
            return "no AWS credentials to call the RDS API with"
        rds = self.client(self.session, "rds")
        host = self.host.lower()
        prx = self.aws.proxy_resource_id
        try:
            proxies: list[dict[str, Any]] = []
            for page in rds.get_paginator("describe_db_proxies").paginate():
                proxies.extend(page.get("DBProxies", []))
        except (BotoCoreError, ClientError) as exc:
            if _denied(exc):
                return (
                    f"the RDS API refused rds:DescribeDBProxies ({_error_text(exc)}); grant "
                    "rds:DescribeDBProxies and rds:DescribeDBProxyTargets to run this check"
                )
            return f"the RDS API did not answer: {_error_text(exc)}"
        for p in proxies:
            if str(p.get("Endpoint", "")).lower() == host:
                return p
            if prx and str(p.get("DBProxyArn", "")).endswith(f":{prx}"):
                return p
        # A custom proxy endpoint (reader, or another VPC) resolves to its proxy by name.
        try:
            endpoints = rds.describe_db_proxy_endpoints().get("DBProxyEndpoints", [])
        except (BotoCoreError, ClientError, ResponseParserError):
            endpoints = []
        for ep in endpoints:
            if str(ep.get("Endpoint", "")).lower() == host:
                for p in proxies:
                    if p.get("DBProxyName") == ep.get("DBProxyName"):
                        return p
        names = ", ".join(str(p.get("DBProxyName")) for p in proxies) or "none"
        return (
            f"no RDS Proxy in {self.aws.region} has the endpoint {self.host}"
            + (f" or the resource id {prx}" if prx else "")
            + f" (proxies there: {names})"
        )

    @cached_property
    def resource_account(self) -> tuple[str | None, str | None]:
        """(account id, prx- resource id) for the rds-db:connect resource."""
        account, prx = self.aws.account_id, self.aws.proxy_resource_id
        proxy = self.db_proxy if self.has_credentials else None
        if isinstance(proxy, dict):
            arn = str(proxy.get("DBProxyArn", ""))
            parts = arn.split(":")
            if len(parts) >= 7:
                account = account or parts[4]
                prx = prx or parts[-1]
        if account is None:
            ident = self.final_identity
            account = ident["account"] if ident else None
        return account, prx

    # -- network -----------------------------------------------------------------------

    @cached_property
    def dns(self) -> _Dns:
        started = time.perf_counter()
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return _Dns([], _ms(started), error=exc.strerror or str(exc))
        addresses: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in addresses:
                addresses.append(addr)
        return _Dns(addresses, _ms(started))

    @cached_property
    def tcp(self) -> _Tcp:
        attempts: list[dict[str, Any]] = []
        kind: str | None = None
        timeout = self.upstream.connect_timeout
        for addr in self.dns.addresses[:3]:
            started = time.perf_counter()
            try:
                with socket.create_connection((addr, self.port), timeout=timeout):
                    pass
            except TimeoutError:
                kind = kind or "timeout"
                attempts.append(
                    {"address": addr, "ok": False, "error": f"timed out after {timeout:g}s"}
                )
                continue
            except ConnectionRefusedError:
                kind = kind or "refused"
                attempts.append({"address": addr, "ok": False, "error": "connection refused"})
                continue
            except OSError as exc:
                kind = kind or "unreachable"
                attempts.append({"address": addr, "ok": False, "error": exc.strerror or str(exc)})
                continue
            attempts.append({"address": addr, "ok": True, "elapsedMs": _ms(started)})
            return _Tcp(addr, attempts)
        return _Tcp(None, attempts, kind)

    def open_socket(self) -> socket.socket:
        """TCP to the endpoint and a PostgreSQL SSLRequest answered with `S`."""
        if self.tcp.address is None:
            raise OSError("the endpoint is not reachable")
        sock = socket.create_connection(
            (self.tcp.address, self.port), timeout=self.upstream.connect_timeout
        )
        try:
            sock.sendall(wire.ssl_request())
            answer = sock.recv(1)
        except BaseException:
            sock.close()
            raise
        if answer != b"S":
            sock.close()
            raise _NoTLS(answer)
        return sock

    def verified_context(self) -> ssl.SSLContext:
        return upstream_context(self.upstream.tls)

    def open_tls(self) -> ssl.SSLSocket:
        sock = self.open_socket()
        try:
            return self.verified_context().wrap_socket(sock, server_hostname=self.server_name)
        except BaseException:
            sock.close()
            raise

    def peer_certificate(self) -> _CertInfo | None:
        """The leaf certificate, fetched without verifying it, to say what is wrong with it."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with ctx.wrap_socket(self.open_socket(), server_hostname=self.server_name) as tls:
                der = tls.getpeercert(binary_form=True)
        except (OSError, _NoTLS):
            return None
        return _cert_info(der) if der else None

    @cached_property
    def tls(self) -> _Tls:
        mode = self.upstream.tls.mode
        evidence: dict[str, Any] = {
            "mode": mode,
            "serverName": self.server_name,
            "caFile": str(self.upstream.tls.ca_file) if self.upstream.tls.ca_file else None,
        }
        try:
            with self.open_tls() as tls:
                der = tls.getpeercert(binary_form=True)
                evidence["tlsVersion"] = tls.version()
            cert = _cert_info(der) if der else None
            if cert is not None:
                evidence["certificate"] = cert.to_dict()
            return _Tls(True, evidence, cert)
        except _NoTLS as exc:
            evidence["sslRequestAnswer"] = exc.answer.decode("latin-1") or "(closed)"
            return _Tls(False, evidence, refused=True, error=str(exc))
        except ConfigError as exc:
            return _Tls(False, evidence, error="; ".join(exc.problems))
        except ssl.SSLCertVerificationError as exc:
            cert = self.peer_certificate()
            if cert is not None:
                evidence["certificate"] = cert.to_dict()
            evidence["verifyError"] = exc.verify_message
            return _Tls(
                False,
                evidence,
                cert,
                error=str(exc.verify_message or exc),
                verify_code=exc.verify_code,
            )
        except (OSError, ssl.SSLError) as exc:
            return _Tls(False, evidence, error=str(exc) or type(exc).__name__)

    # -- login -------------------------------------------------------------------------

    def login(self, user: str, token: str) -> _Login:
        started = time.perf_counter()
        deadline = time.monotonic() + self.upstream.connect_timeout + 10
        try:
            with self.open_tls() as tls:
                return _pg_login(tls, user, self.options.db_name, token, deadline, started)
        except (OSError, ssl.SSLError, _NoTLS, ConfigError) as exc:
            return _Login(user, "error", f"could not log in: {exc}", elapsed_ms=_ms(started))


class _NoTLS(Exception):
    def __init__(self, answer: bytes) -> None:
        super().__init__(
            "the endpoint answered the SSLRequest with "
            + (repr(answer.decode("latin-1")) if answer else "a closed connection")
            + ", not 'S': it does not accept TLS"
        )
        self.answer = answer


def _pg_login(
    tls: ssl.SSLSocket, user: str, dbname: str, token: str, deadline: float, started: float
) -> _Login:
    """A PostgreSQL start-up with the IAM token as the cleartext password, as RDS Proxy asks."""
    params = {"user": user, "database": dbname, "application_name": "rdsgate-diagnose"}
    tls.sendall(wire.startup_message(params))
    reader = wire.Reader()
    authenticated = False
    try:
        while True:
            msg = reader.read_message()
            if msg is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _Login(user, "error", "the upstream did not finish the log-in in time")
                tls.settimeout(remaining)
                data = tls.recv(65536)
                if not data:
                    return _Login(user, "error", "the upstream closed the connection during log-in")
                reader.feed(data)
                continue
            if msg.type == b"R":
                code, _ = wire.parse_auth_request(msg.body)
                if code == wire.AUTH_CLEARTEXT:
                    tls.sendall(wire.password_message(token))
                elif code == wire.AUTH_OK:
                    authenticated = True
                else:
                    return _Login(
                        user,
                        "error",
                        f"the upstream asked for authentication method {code}, not the "
                        "cleartext password that IAM authentication uses",
                    )
            elif msg.type == b"E":
                fields = wire.parse_fields(msg.body)
                text, sqlstate = fields.get("M", ""), fields.get("C")
                if sqlstate == "3D000" or authenticated:
                    outcome = "database-missing" if sqlstate == "3D000" else "error"
                elif "no credentials for the role" in text:
                    outcome = "no-secret"
                elif "requires TLS" in text:
                    outcome = "tls-required"
                elif sqlstate == "28P01" or "IAM authentication failed" in text:
                    outcome = "iam-refused"
                else:
                    outcome = "error"
                return _Login(user, outcome, text, sqlstate, _ms(started))
            elif msg.type == b"Z" and authenticated:
                tls.sendall(wire.terminate())
                return _Login(user, "ok", "logged in", elapsed_ms=_ms(started))
    except (TimeoutError, ProtocolViolation) as exc:
        return _Login(user, "error", f"log-in failed: {exc}", elapsed_ms=_ms(started))


# ---------------------------------------------------------------------------------------
# The checks


def check_credentials(run: _Run) -> Finding:
    base = run.base
    evidence: dict[str, Any] = {"sources": run.sources}
    tried = ", ".join(
        f"{_SOURCE_NAMES[s['source']]} ({s['detail']})" for s in run.sources if s["source"]
    )
    if base.error is not None:
        evidence["error"] = base.error
        present = [s["source"] for s in run.sources if s["present"]]
        fix = "Fix the credential source that failed"
        if "irsa" in present:
            fix = (
                "IRSA is configured but the web identity exchange failed: check that the "
                "role's trust policy names this cluster's OIDC provider and this "
                "ServiceAccount (`rdsgate iam trust-policy --oidc-issuer URL "
                "--service-account NS/NAME` prints it) and that the token file is mounted"
            )
        return Finding(
            "credentials",
            Status.FAIL,
            f"loading AWS credentials failed: {base.error}",
            "CredentialsError",
            evidence,
            fix,
        )
    if base.method is None:
        return Finding(
            "credentials",
            Status.FAIL,
            f"no AWS credentials found; tried {tried}",
            "NoCredentials",
            evidence,
            "Give the proxy an AWS identity: IRSA (annotate its ServiceAccount with "
            "eks.amazonaws.com/role-arn, or set spec.proxy.serviceAccount.roleArn) or an EKS "
            "Pod Identity association; on EC2 nodes without either, the node's instance "
            "profile through IMDSv2 (see the imds check for why it did not answer).",
        )
    evidence["used"] = base.source
    evidence["method"] = base.method
    used = _SOURCE_NAMES.get(base.source or "", base.method)
    ident = run.identity
    if isinstance(ident, BaseException):
        evidence["error"] = _error_text(ident)
        if isinstance(ident, EndpointConnectionError | BotoCoreError) and not isinstance(
            ident, ClientError
        ):
            return Finding(
                "credentials",
                Status.WARN,
                f"credentials came from {used}, but STS could not be reached to confirm "
                f"them: {_error_text(ident)}",
                "STSUnreachable",
                evidence,
                "Allow HTTPS to sts.REGION.amazonaws.com (or add an STS interface VPC "
                "endpoint in a VPC without internet access).",
            )
        return Finding(
            "credentials",
            Status.FAIL,
            f"credentials came from {used}, but STS rejected them: {_error_text(ident)}",
            "CredentialsRejected",
            evidence,
            "The credentials are invalid or expired: rotate the access key, check the "
            "clock (SigV4 allows 5 minutes of skew), or use IRSA / Pod Identity instead of "
            "static keys.",
        )
    evidence.update(ident)
    return Finding(
        "credentials",
        Status.PASS,
        f"credentials from {used} ({base.method}); caller {ident['arn']}",
        "CredentialsFound",
        evidence,
    )


def _instance_metadata_options(run: _Run, instance_id: str) -> dict[str, Any] | str:
    """MetadataOptions of the node from the EC2 API, when this identity may read them."""
    session = run.session if run.has_credentials else run.base.session
    try:
        out = run.client(session, "ec2").describe_instances(InstanceIds=[instance_id])
    except (BotoCoreError, ClientError) as exc:
        return f"ec2:DescribeInstances failed: {_error_text(exc)}"
    for reservation in out.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            return dict(instance.get("MetadataOptions", {}))
    return f"ec2:DescribeInstances does not know {instance_id}"


def check_imds(run: _Run) -> Finding:
    base = run.base
    if base.method is not None and base.source != "imds":
        return Finding(
            "imds",
            Status.SKIP,
            f"credentials come from {_SOURCE_NAMES.get(base.source or '', base.method)}; "
            "the instance metadata service is not used",
            "NotUsed",
        )
    probe = run.imds_probe
    evidence = probe.to_evidence()
    instance = run.options.instance_id or probe.instance_id
    confirm: dict[str, Any] | str | None = None
    if instance and base.method is not None:
        confirm = _instance_metadata_options(run, instance)
        evidence["ec2MetadataOptions"] = confirm
    verdict = probe.verdict
    put_ms = probe.token_put.elapsed_ms if probe.token_put else 0
    if verdict == "disabled":
        return Finding(
            "imds",
            Status.SKIP,
            "IMDS is disabled here (AWS_EC2_METADATA_DISABLED=true)",
            "Disabled",
            evidence,
        )
    if verdict == "unreachable":
        tcp = probe.tcp
        return Finding(
            "imds",
            Status.SKIP if base.method is None else Status.WARN,
            f"no instance metadata service at {probe.endpoint} "
            f"({tcp.error if tcp else 'no answer'}): not on EC2, or blocked by a network policy",
            "Unreachable",
            evidence,
            "Outside EC2 there is no instance profile: use IRSA or EKS Pod Identity. On EC2, "
            "check NetworkPolicies that block 169.254.169.254 and that the instance's "
            "metadata endpoint is enabled (--http-endpoint enabled).",
        )
    if verdict == "hop-limit":
        hop_from_api = confirm.get("HttpPutResponseHopLimit") if isinstance(confirm, dict) else None
        tokenless = probe.tokenless_get
        answered = (
            f"token-less GET answered {tokenless.status}"
            if tokenless is not None and tokenless.status is not None
            else "TCP connect answered"
        )
        fix = _HOP_LIMIT_FIX.format(instance=instance or "<node-instance-id>")
        if not instance:
            fix += (
                "\n(The instance id is the last part of the node's spec.providerID: "
                "kubectl get node NODE -o jsonpath='{.spec.providerID}'.)"
            )
        fix += (
            "\nConfirm with: aws ec2 describe-instances --instance-ids "
            f"{instance or '<node-instance-id>'} "
            "--query 'Reservations[].Instances[].MetadataOptions'"
        )
        confirmed = (
            f"; ec2:DescribeInstances confirms HttpPutResponseHopLimit={hop_from_api}"
            if hop_from_api is not None
            else ""
        )
        if base.source == "imds":
            return Finding(
                "imds",
                Status.WARN,
                f"IMDSv1 fallback in use: the token PUT timed out after {put_ms / 1000:.1f}s "
                f"while the {answered}, so the PUT response hop limit is 1 and credentials "
                f"of {probe.role_name or 'the node role'} were fetched without a session "
                f"token{confirmed}",
                "IMDSv1Fallback",
                evidence,
                fix,
            )
        return Finding(
            "imds",
            Status.FAIL,
            f"IMDSv2 hop limit: the token PUT to {probe.endpoint} timed out after "
            f"{put_ms / 1000:.1f}s while the {answered}, so the PUT response hop limit is 1 "
            f"(the answer cannot reach a pod){confirmed}",
            "IMDSHopLimit",
            evidence,
            fix,
        )
    if verdict == "imdsv2":
        note = ""
        if probe.imdsv1_enabled:
            note = "; IMDSv1 is also enabled on this node (HttpTokens optional)"
        if probe.role_name is None:
            return Finding(
                "imds",
                Status.FAIL if base.method is None else Status.WARN,
                f"IMDSv2 answers (token in {put_ms:.0f} ms) but the instance has no IAM role",
                "NoInstanceProfile",
                evidence,
                "Attach an instance profile to the node, or better give the proxy its own "
                "role with IRSA or EKS Pod Identity.",
            )
        return Finding(
            "imds",
            Status.PASS,
            f"IMDSv2 answers (token in {put_ms:.0f} ms); instance profile role "
            f"{probe.role_name}{note}",
            "IMDSv2",
            evidence,
            "Require tokens: aws ec2 modify-instance-metadata-options --instance-id "
            f"{instance or '<node-instance-id>'} --http-tokens required"
            if probe.imdsv1_enabled
            else None,
        )
    return Finding(
        "imds",
        Status.FAIL if base.method is None else Status.WARN,
        f"the instance metadata service refused a token ({verdict}); see the evidence",
        "IMDSTokenRefused",
        evidence,
        "Check the instance's metadata options (HttpEndpoint enabled, HttpTokens) with aws "
        "ec2 describe-instances, and any proxy (HTTP_PROXY) between the pod and IMDS: the "
        "token PUT must not carry X-Forwarded-For.",
    )


def check_assume_role(run: _Run) -> Finding:
    role = run.aws.assume_role_arn
    if not role:
        return Finding("assume-role", Status.SKIP, "no assumeRoleArn configured", "NotConfigured")
    if run.base.method is None:
        return Finding(
            "assume-role",
            Status.SKIP,
            f"no credentials to assume {role} with (see the credentials check)",
            "NoSourceCredentials",
        )
    result = run.assumed
    evidence: dict[str, Any] = {"roleArn": role, "externalId": bool(run.aws.external_id)}
    if isinstance(result, dict):
        evidence.update(result)
        return Finding(
            "assume-role",
            Status.PASS,
            f"assumed {role} as {result['assumedRoleArn']}",
            "RoleAssumed",
            evidence,
        )
    assert result is not None
    evidence["error"] = _error_text(result)
    ident = run.identity
    caller = ident["arn"] if isinstance(ident, dict) else "<this proxy's role ARN>"
    principal = run.role_arn_with_path(caller) if isinstance(ident, dict) else caller
    evidence["caller"] = caller
    trust = assume_role_trust_policy(principal, run.aws.external_id)
    permission = assume_role_permission_policy(role)
    evidence["trustPolicy"] = trust
    evidence["permissionPolicy"] = permission
    if _error_code(result) not in ("AccessDenied", "AccessDeniedException"):
        return Finding(
            "assume-role",
            Status.FAIL,
            f"sts:AssumeRole of {role} failed: {_error_text(result)}",
            "AssumeRoleFailed",
            evidence,
        )
    role_name = role.rsplit("/", 1)[-1]
    test = f"aws sts assume-role --role-arn {role} --role-session-name test-trust-relationship" + (
        f" --external-id {run.aws.external_id}" if run.aws.external_id else ""
    )
    fix = (
        f"1. The trust policy of {role_name} must let {principal} assume it"
        + (" with this external id" if run.aws.external_id else "")
        + ":\n"
        + _indent(_pretty(trust))
        + f"\n   aws iam update-assume-role-policy --role-name {role_name} "
        "--policy-document file://trust.json\n"
        + f"2. {principal} needs permission to call sts:AssumeRole on the role (required "
        "across accounts; within one account it may be omitted when the trust policy names "
        "the caller's ARN):\n"
        + _indent(_pretty(permission))
        + "\n3. If the caller has a permissions boundary, it must allow sts:AssumeRole too.\n"
        + f"Test with: {test}"
    )
    return Finding(
        "assume-role",
        Status.FAIL,
        f"sts:AssumeRole AccessDenied: {caller} may not assume {role}",
        "AssumeRoleDenied",
        evidence,
        fix,
    )


_RDS_HOST = re.compile(r"\.proxy-[a-z0-9]+\.([a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d)\.rds\.")


def check_endpoint_dns(run: _Run) -> Finding:
    dns = run.dns
    evidence: dict[str, Any] = {"host": run.host, "elapsedMs": dns.elapsed_ms}
    if dns.error is not None:
        evidence["error"] = dns.error
        return Finding(
            "endpoint-dns",
            Status.FAIL,
            f"{run.host} does not resolve: {dns.error}",
            "DNSFailure",
            evidence,
            "Check the endpoint (aws rds describe-db-proxies --query "
            "'DBProxies[].Endpoint'). An RDS Proxy endpoint resolves only inside its VPC: "
            "run rdsgate in that VPC (or a peered one with DNS resolution across the "
            "peering), with the VPC's enableDnsSupport and enableDnsHostnames on.",
        )
    evidence["addresses"] = dns.addresses
    m = _RDS_HOST.search(run.host)
    if m and m.group(1) != run.aws.region:
        evidence["endpointRegion"] = m.group(1)
        return Finding(
            "endpoint-dns",
            Status.WARN,
            f"{run.host} is in {m.group(1)} but aws.region is {run.aws.region}: IAM auth "
            "tokens are signed for the configured region and RDS Proxy will refuse them",
            "RegionMismatch",
            evidence,
            f"Set aws.region (spec.aws.region) to {m.group(1)}.",
        )
    return Finding(
        "endpoint-dns",
        Status.PASS,
        f"{run.host} resolves to {', '.join(dns.addresses)} in {dns.elapsed_ms:.0f} ms",
        "Resolved",
        evidence,
    )


def check_endpoint_tcp(run: _Run) -> Finding:
    if not run.dns.addresses:
        return Finding(
            "endpoint-tcp",
            Status.SKIP,
            f"{run.host} did not resolve (see endpoint-dns)",
            "NotResolved",
        )
    tcp = run.tcp
    evidence: dict[str, Any] = {
        "port": run.port,
        "timeoutSeconds": run.upstream.connect_timeout,
        "attempts": tcp.attempts,
    }
    where = f"{run.host}:{run.port}"
    if tcp.address is not None:
        ms = tcp.attempts[-1].get("elapsedMs", 0)
        return Finding(
            "endpoint-tcp",
            Status.PASS,
            f"connected to {where} ({tcp.address}) in {ms:.0f} ms",
            "Connected",
            evidence,
        )
    nc = f"nc -zv {run.host} {run.port}"
    if tcp.kind == "timeout":
        return Finding(
            "endpoint-tcp",
            Status.FAIL,
            f"TCP connect to {where} timed out after {run.upstream.connect_timeout:g}s: "
            "packets are dropped on the way (security group or routing)",
            "ConnectTimeout",
            evidence,
            f"Allow inbound TCP {run.port} on the RDS Proxy's security group from the "
            "security group of the nodes (or of the pods, with security groups for pods). "
            "The proxy must be in the cluster's VPC, or routed to it (VPC peering or a "
            "transit gateway, with routes both ways and DNS resolution across the peering). "
            f"Test from a pod: {nc}",
        )
    if tcp.kind == "refused":
        return Finding(
            "endpoint-tcp",
            Status.FAIL,
            f"{where} refused the connection: nothing listens on port {run.port} there",
            "ConnectionRefused",
            evidence,
            "Check the endpoint's port (RDS Proxy for PostgreSQL listens on 5432) and that "
            f"the host is the RDS Proxy endpoint. Test from a pod: {nc}",
        )
    return Finding(
        "endpoint-tcp",
        Status.FAIL,
        f"no route to {where}: {tcp.attempts[-1]['error'] if tcp.attempts else 'unknown'}",
        "NoRoute",
        evidence,
        "Check the VPC route tables between the cluster's subnets and the proxy's, and "
        f"network policies in the cluster. Test from a pod: {nc}",
    )


_RDS_CA_FIX = (
    "For RDS and Aurora, rotate to a current CA: aws rds modify-db-instance "
    "--db-instance-identifier DB --ca-certificate-identifier rds-ca-rsa2048-g1 "
    "--apply-immediately (RDS Proxy itself serves ACM certificates with SANs)."
)


def check_upstream_tls(run: _Run) -> Finding:
    if run.tcp.address is None:
        return Finding(
            "upstream-tls",
            Status.SKIP,
            "the endpoint is not reachable (see endpoint-tcp)",
            "NotReachable",
        )
    tls = run.tls
    evidence = tls.evidence
    cert = tls.cert
    mode = run.upstream.tls.mode
    if tls.refused:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"{run.host}:{run.port} {tls.error}",
            "TLSRefused",
            evidence,
            "rdsgate always uses TLS upstream, as IAM authentication requires: point "
            "upstream.endpoint at the RDS Proxy endpoint (RDS Proxy always offers TLS).",
        )
    if tls.ok:
        if cert is not None and not cert.has_san and mode != "insecure":
            why = (
                f"accepted only because tls.mode is {mode}"
                if mode != "verify-full"
                else "rdsgate accepts it (it matches the CN when there are no SANs, as libpq "
                "does), but clients that follow RFC 6125 refuse it, Go's with \"x509: "
                'certificate relies on legacy Common Name field, use SANs instead"'
            )
            return Finding(
                "upstream-tls",
                Status.WARN,
                f"the certificate of {run.host} has only a legacy Common Name "
                f"({cert.subject_cn}) and no SANs; {why}",
                "LegacyCommonNameCertificate",
                evidence,
                _RDS_CA_FIX
                + (" Then go back to tls.mode verify-full." if mode != "verify-full" else ""),
            )
        if mode == "insecure":
            return Finding(
                "upstream-tls",
                Status.WARN,
                "TLS is up but the certificate is not verified (tls.mode insecure)",
                "NotVerified",
                evidence,
                "Set tls.mode to verify-full, with tls.caBundle when the endpoint's CA is not "
                "in the system store.",
            )
        until = f", valid until {cert.not_after:%Y-%m-%d}" if cert else ""
        return Finding(
            "upstream-tls",
            Status.PASS,
            f"TLS {evidence.get('tlsVersion')} to {run.host} verified ({mode}){until}",
            "Verified",
            evidence,
        )
    if cert is None:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"TLS with {run.host}:{run.port} failed: {tls.error}",
            "TLSFailed",
            evidence,
            "Check upstream.tls (caFile readable, mode) and that the endpoint is an RDS Proxy.",
        )
    now = datetime.now(UTC)
    if cert.not_after < now:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"the certificate of {run.host} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC",
            "CertificateExpired",
            evidence,
            "The server must renew its certificate. " + _RDS_CA_FIX,
        )
    if cert.not_before > now:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"the certificate of {run.host} is not valid before {cert.not_before:%Y-%m-%d} "
            "(check this machine's clock)",
            "CertificateNotYetValid",
            evidence,
            "Synchronise the clock (chrony / NTP) or renew the certificate.",
        )
    if mode == "verify-full" and not _name_matches(run.server_name, cert):
        if not cert.has_san and cert.subject_cn == run.server_name:
            return Finding(
                "upstream-tls",
                Status.FAIL,
                f"x509: certificate relies on legacy Common Name field, use SANs instead: "
                f"the certificate of {run.host} names {cert.subject_cn} only in its subject "
                "CN and has no subjectAltName, which TLS clients no longer accept",
                "LegacyCommonNameCertificate",
                evidence,
                _RDS_CA_FIX + " As a stopgap, tls.mode verify-ca verifies the chain without "
                "the name.",
            )
        names = ", ".join(cert.dns_names + cert.ip_addresses) or f"CN {cert.subject_cn}"
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"the certificate of {run.host} is for {names}, not {run.server_name}",
            "HostnameMismatch",
            evidence,
            "Connect with the name the certificate is for (the endpoint from aws rds "
            "describe-db-proxies), or set tls.serverName to one of its names when reaching it "
            "through another name or an IP address.",
        )
    return Finding(
        "upstream-tls",
        Status.FAIL,
        f"the certificate of {run.host} did not verify: {tls.error} (issuer {cert.issuer})",
        "UntrustedCertificate",
        evidence,
        "Trust the CA that issued it: set tls.caBundle (upstream.tls.caFile) to that CA's "
        "PEM, for RDS the bundle at https://truststore.pki.rds.amazonaws.com/global/"
        "global-bundle.pem. RDS Proxy's ACM certificates chain to Amazon's public roots, "
        "which the system store holds.",
    )


def check_rds_proxy_auth(run: _Run) -> Finding:
    proxy = run.db_proxy
    if isinstance(proxy, str):
        status = Status.SKIP
        reason = "NotChecked"
        if proxy.startswith("no RDS Proxy"):
            status, reason = Status.WARN, "ProxyNotFound"
        return Finding(
            "rds-proxy-auth",
            status,
            proxy,
            reason,
            fix="Check upstream.endpoint and aws.region (and aws.proxyResourceId)."
            if status is Status.WARN
            else None,
        )
    name = str(proxy.get("DBProxyName"))
    auth = [dict(a) for a in proxy.get("Auth", [])]
    default_scheme = proxy.get("DefaultAuthScheme")
    evidence: dict[str, Any] = {
        "name": name,
        "arn": proxy.get("DBProxyArn"),
        "engineFamily": proxy.get("EngineFamily"),
        "status": proxy.get("Status"),
        "requireTLS": proxy.get("RequireTLS"),
        "defaultAuthScheme": default_scheme,
        "auth": [
            {k: a.get(k) for k in ("AuthScheme", "IAMAuth", "SecretArn", "UserName") if a.get(k)}
            for a in auth
        ],
    }
    if proxy.get("EngineFamily") not in (None, "POSTGRESQL"):
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} is for {proxy.get('EngineFamily')}, not PostgreSQL",
            "WrongEngine",
            evidence,
            "Point the Database at an RDS Proxy with EngineFamily POSTGRESQL.",
        )
    if default_scheme == "IAM_AUTH":
        return Finding(
            "rds-proxy-auth",
            Status.PASS,
            f"RDS Proxy {name} uses end-to-end IAM authentication (DefaultAuthScheme "
            "IAM_AUTH); no secrets are needed",
            "EndToEndIAM",
            evidence,
        )
    modify = (
        f"aws rds modify-db-proxy --db-proxy-name {name} --auth "
        "AuthScheme=SECRETS,SecretArn=SECRET_ARN,IAMAuth=REQUIRED"
    )
    if not auth:
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} has no Secrets Manager secrets: it cannot log in to the database",
            "NoSecrets",
            evidence,
            "Create a secret per database user (aws secretsmanager create-secret --name "
            'rdsproxy_USER --secret-string \'{"username":"USER","password":"…"}\') and '
            f"add them with IAM auth required: {modify}",
        )
    secret_problems: list[str] = []
    sm = run.client(run.session, "secretsmanager")
    for entry in auth[:20]:
        arn = entry.get("SecretArn")
        if not arn:
            continue
        try:
            sm.describe_secret(SecretId=arn)
        except ClientError as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                secret_problems.append(f"{arn} does not exist")
            elif not _denied(exc):
                secret_problems.append(f"{arn}: {_error_text(exc)}")
        except BotoCoreError:
            break
    evidence["secretProblems"] = secret_problems
    disabled = [a.get("SecretArn") or "?" for a in auth if a.get("IAMAuth") == "DISABLED"]
    users = set(run.options.db_users)
    named = {str(a["UserName"]): a for a in auth if a.get("UserName")}
    missing_users = sorted(u for u in users if named and u not in named)
    if secret_problems:
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} refers to secrets that are missing: {'; '.join(secret_problems)}",
            "SecretMissing",
            evidence,
            f"Recreate the secrets or replace them in the proxy's auth: {modify}",
        )
    if len(disabled) == len(auth):
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} has IAM authentication DISABLED for every secret: it refuses "
            "IAM auth tokens",
            "IAMAuthDisabled",
            evidence,
            f"Require IAM authentication for the users rdsgate logs in as: {modify} "
            "(one AuthScheme=… entry per secret).",
        )
    if missing_users:
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} has no secret for {', '.join(missing_users)}",
            "NoSecretForUser",
            evidence,
            f"Add a secret for each of them with IAM auth required: {modify}",
        )
    if disabled:
        return Finding(
            "rds-proxy-auth",
            Status.WARN,
            f"RDS Proxy {name} requires IAM auth for {len(auth) - len(disabled)} of "
            f"{len(auth)} secrets; IAM auth is DISABLED for {', '.join(disabled)}",
            "IAMAuthPartlyDisabled",
            evidence,
            f"Users of those secrets cannot log in through rdsgate; if they should: {modify}",
        )
    return Finding(
        "rds-proxy-auth",
        Status.PASS,
        f"RDS Proxy {name}: IAM authentication {auth[0].get('IAMAuth', 'REQUIRED')} for all "
        f"{len(auth)} secrets, and the secrets exist",
        "IAMAuthRequired",
        evidence,
    )


_TARGET_REASONS = {
    "AUTH_FAILURE": (
        "the proxy cannot log in to the database with its secret: the password in the "
        "secret must match the user's database password, and the proxy's IAM role must "
        "read the secret (secretsmanager:GetSecretValue, kms:Decrypt) and trust "
        "rds.amazonaws.com"
    ),
    "CONNECTION_FAILED": (
        "the proxy cannot reach the database: the database's security group must allow "
        "the proxy's security group on the database port"
    ),
    "UNREACHABLE": "the database is not reachable from the proxy's subnets",
    "PENDING_PROXY_CAPACITY": "the proxy is scaling; wait and check again",
    "INVALID_REPLICATION_STATE": "the target is not in a state that accepts connections",
}


def check_rds_proxy_targets(run: _Run) -> Finding:
    proxy = run.db_proxy
    if isinstance(proxy, str):
        return Finding("rds-proxy-targets", Status.SKIP, proxy, "NotChecked")
    name = str(proxy.get("DBProxyName"))
    try:
        out = run.client(run.session, "rds").describe_db_proxy_targets(DBProxyName=name)
    except (BotoCoreError, ClientError) as exc:
        return Finding(
            "rds-proxy-targets",
            Status.SKIP,
            f"rds:DescribeDBProxyTargets failed: {_error_text(exc)}",
            "NotChecked",
        )
    targets = [
        {
            "type": t.get("Type"),
            "resource": t.get("RdsResourceId"),
            "endpoint": t.get("Endpoint"),
            "state": t.get("TargetHealth", {}).get("State"),
            "reason": t.get("TargetHealth", {}).get("Reason"),
            "description": t.get("TargetHealth", {}).get("Description"),
        }
        for t in out.get("Targets", [])
        if t.get("Type") != "TRACKED_CLUSTER" or t.get("TargetHealth")
    ]
    evidence: dict[str, Any] = {"proxy": name, "targets": targets}
    if not targets:
        return Finding(
            "rds-proxy-targets",
            Status.FAIL,
            f"RDS Proxy {name} has no targets: it has no database to connect to",
            "NoTargets",
            evidence,
            f"aws rds register-db-proxy-targets --db-proxy-name {name} "
            "--db-instance-identifiers DB (or --db-cluster-identifiers CLUSTER)",
        )
    available = [t for t in targets if t["state"] == "AVAILABLE"]
    bad = [t for t in targets if t["state"] not in ("AVAILABLE", "REGISTERING")]
    registering = [t for t in targets if t["state"] == "REGISTERING"]

    def describe(t: dict[str, Any]) -> str:
        why = f" ({t['reason']}: {t['description'] or ''})".replace(": )", ")")
        return f"{t['resource']} {t['state']}" + (why if t["reason"] else "")

    fixes = sorted(
        {_TARGET_REASONS[str(t["reason"])] for t in bad if t["reason"] in _TARGET_REASONS}
    )
    fix = "; ".join(fixes) + "." if fixes else None
    if bad and not available:
        return Finding(
            "rds-proxy-targets",
            Status.FAIL,
            f"no target of RDS Proxy {name} is available: " + ", ".join(describe(t) for t in bad),
            "TargetsUnavailable",
            evidence,
            fix,
        )
    if bad or registering:
        return Finding(
            "rds-proxy-targets",
            Status.WARN,
            f"RDS Proxy {name}: {len(available)} of {len(targets)} targets available; "
            + ", ".join(describe(t) for t in bad + registering),
            "TargetsDegraded",
            evidence,
            fix,
        )
    return Finding(
        "rds-proxy-targets",
        Status.PASS,
        f"RDS Proxy {name}: {len(available)} of {len(targets)} targets available",
        "TargetsAvailable",
        evidence,
    )


def check_iam_login(run: _Run) -> Finding:
    users = list(dict.fromkeys(run.options.db_users))[: run.options.max_logins]
    if not users:
        return Finding(
            "iam-login",
            Status.SKIP,
            "no database user to try (pass --db-user NAME)",
            "NoUser",
        )
    if not run.has_credentials:
        return Finding(
            "iam-login",
            Status.SKIP,
            "no AWS credentials to sign an IAM auth token with (see the credentials check)",
            "NoCredentials",
        )
    if not run.tls.ok and not run.tls.cert:
        return Finding(
            "iam-login",
            Status.SKIP,
            "the endpoint's TLS is not usable (see upstream-tls)",
            "UpstreamUnavailable",
        )
    if not run.tls.ok:
        return Finding(
            "iam-login",
            Status.SKIP,
            "the endpoint's certificate does not verify (see upstream-tls)",
            "UpstreamUnavailable",
        )
    minter = TokenMinter(run.aws, run.session)
    logins: list[_Login] = []
    for user in users:
        try:
            token = minter.mint(run.host, run.port, user)
        except CredentialsUnavailable as exc:
            logins.append(_Login(user, "error", f"cannot sign a token: {exc.message}"))
            continue
        logins.append(run.login(user, token))
    ident = run.final_identity
    evidence: dict[str, Any] = {
        "database": run.options.db_name,
        "identity": ident["arn"] if ident else None,
        "logins": [x.to_dict() for x in logins],
    }
    refused = [x for x in logins if x.outcome == "iam-refused"]
    no_secret = [x for x in logins if x.outcome == "no-secret"]
    other = [x for x in logins if x.outcome in ("error", "tls-required")]
    ok = [x for x in logins if x.outcome in ("ok", "database-missing")]
    if refused:
        account, prx = run.resource_account
        names = [x.user for x in refused]
        doc = connect_policy(
            run.aws.region, account or "ACCOUNT_ID", prx or "prx-RESOURCE_ID", names
        )
        evidence["policy"] = doc
        principal = principal_for_trust(ident["arn"]) if ident else "the proxy's role"
        attach = principal.rsplit("/", 1)[-1] if ident else "ROLE"
        kind = "user" if ":user/" in principal else "role"
        cmd = (
            f"rdsgate iam policy --region {run.aws.region} --account {account or 'ACCOUNT_ID'}"
            f" --proxy-resource-id {prx or 'prx-RESOURCE_ID'} "
            + " ".join(f"--db-user {u}" for u in names)
            + f" --attach-to-{kind} {attach}"
        )
        fix = (
            f"{principal} needs rds-db:connect for "
            + ", ".join(names)
            + " on this RDS Proxy (least privilege):\n"
            + _indent(_pretty(doc))
            + f"\nAttach it with: {cmd}\n"
            + "Also required: IAM authentication REQUIRED for the user's secret on the proxy "
            "(see rds-proxy-auth), and the token signed for this exact endpoint host, port "
            "and region."
        )
        if not prx:
            fix += (
                "\n(Set aws.proxyResourceId / spec.aws.proxyResourceId to the proxy's prx- id "
                "from aws rds describe-db-proxies --query 'DBProxies[].DBProxyArn'.)"
            )
        return Finding(
            "iam-login",
            Status.FAIL,
            "RDS Proxy refused the IAM login for "
            + ", ".join(f"{x.user} ({x.sqlstate}: {x.message})" for x in refused),
            "IAMAuthFailed",
            evidence,
            fix,
        )
    if no_secret:
        return Finding(
            "iam-login",
            Status.FAIL,
            "RDS Proxy has no credentials for "
            + ", ".join(f"{x.user} ({x.message})" for x in no_secret),
            "NoSecretForUser",
            evidence,
            "Create a Secrets Manager secret with the user's database password (aws "
            "secretsmanager create-secret --name rdsproxy_USER --secret-string "
            '\'{"username":"USER","password":"…"}\') and add it to the proxy with '
            "IAMAuth=REQUIRED (aws rds modify-db-proxy --auth …).",
        )
    if other:
        return Finding(
            "iam-login",
            Status.FAIL,
            "IAM login failed: " + "; ".join(f"{x.user}: {x.message}" for x in other),
            "LoginFailed",
            evidence,
            "See upstream-tls and rds-proxy-auth; the evidence holds the server's answer.",
        )
    missing_db = [x for x in ok if x.outcome == "database-missing"]
    summary = f"IAM login to {run.host} succeeded as {', '.join(x.user for x in ok)}"
    if missing_db:
        return Finding(
            "iam-login",
            Status.WARN,
            summary + f", but database {run.options.db_name!r} does not exist",
            "DatabaseMissing",
            evidence,
            "Pass --db-name with a database that exists.",
        )
    return Finding("iam-login", Status.PASS, summary, "LoggedIn", evidence)


def _principal_policies(run: _Run, principal: str) -> dict[str, Any] | str:
    """Inline sizes and managed counts of an IAM role or user, with the account's quotas."""
    m = re.match(r"^arn:[\w-]+:iam::\d{12}:(role|user)/(?:.*/)?([^/]+)$", principal)
    if not m:
        return f"{principal} is not an IAM role or user"
    kind, name = m.group(1), m.group(2)
    iam = run.client(run.session, "iam")
    try:
        if kind == "role":
            names = iam.list_role_policies(RoleName=name)["PolicyNames"]
            docs = [
                iam.get_role_policy(RoleName=name, PolicyName=n)["PolicyDocument"] for n in names
            ]
            attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        else:
            names = iam.list_user_policies(UserName=name)["PolicyNames"]
            docs = [
                iam.get_user_policy(UserName=name, PolicyName=n)["PolicyDocument"] for n in names
            ]
            attached = iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]
    except (BotoCoreError, ClientError) as exc:
        return f"cannot read the policies of {principal}: {_error_text(exc)}"
    quotas: dict[str, int] = {}
    with contextlib.suppress(BotoCoreError, ClientError):
        summary = iam.get_account_summary()["SummaryMap"]
        quotas = {k: int(v) for k, v in summary.items() if "Quota" in k}
    return {
        "kind": kind,
        "name": name,
        "inline": {n: policy_size(d) for n, d in zip(names, docs, strict=True)},
        "managed": len(attached),
        "quotas": quotas,
    }


def policy_size(document: Mapping[str, Any] | str) -> int:
    """A policy's size as IAM counts it against its limits: characters, whitespace excluded."""
    text = document if isinstance(document, str) else json.dumps(document)
    return sum(1 for ch in text if not ch.isspace())


INLINE_LIMITS = {"user": 2048, "role": 10240}
MANAGED_POLICY_LIMIT = 6144
MANAGED_PER_PRINCIPAL = 10


def check_iam_policy_size(run: _Run) -> Finding:
    ident = run.final_identity
    if ident is None:
        return Finding(
            "iam-policy-size",
            Status.SKIP,
            "no AWS identity to inspect (see the credentials check)",
            "NoCredentials",
        )
    principal = run.role_arn_with_path(ident["arn"])
    info = _principal_policies(run, principal)
    if isinstance(info, str):
        return Finding("iam-policy-size", Status.SKIP, info, "NotChecked")
    kind = str(info["kind"])
    quotas: dict[str, int] = info["quotas"]
    inline_limit = quotas.get(
        "RolePolicySizeQuota" if kind == "role" else "UserPolicySizeQuota", INLINE_LIMITS[kind]
    )
    managed_limit = quotas.get(
        "AttachedPoliciesPerRoleQuota" if kind == "role" else "AttachedPoliciesPerUserQuota",
        MANAGED_PER_PRINCIPAL,
    )
    used = sum(info["inline"].values())
    evidence = {
        "principal": principal,
        "inlinePolicies": info["inline"],
        "inlineCharacters": used,
        "inlineLimit": inline_limit,
        "managedPolicies": info["managed"],
        "managedLimit": managed_limit,
    }
    summary = (
        f"{kind} {info['name']}: inline policies use {used:,} of {inline_limit:,} characters "
        f"(all inline policies share this limit); {info['managed']} of {managed_limit} "
        "managed policies attached"
    )
    if used >= 0.9 * inline_limit or info["managed"] >= managed_limit:
        return Finding(
            "iam-policy-size",
            Status.WARN,
            summary + ": at the limit, the next database may not fit",
            "PolicyNearLimit",
            evidence,
            "Let `rdsgate iam policy … --attach-to-"
            + kind
            + f" {info['name']}` place rds-db:connect in managed policies (6,144 characters "
            "each), use --wildcard, or split databases across roles with assumeRoleArn. IAM "
            "users have a 2,048-character inline limit: prefer roles.",
        )
    return Finding("iam-policy-size", Status.PASS, summary, "WithinLimits", evidence)


_CHECK_FUNCS: dict[str, Callable[[_Run], Finding]] = {
    "credentials": check_credentials,
    "imds": check_imds,
    "assume-role": check_assume_role,
    "endpoint-dns": check_endpoint_dns,
    "endpoint-tcp": check_endpoint_tcp,
    "upstream-tls": check_upstream_tls,
    "rds-proxy-auth": check_rds_proxy_auth,
    "rds-proxy-targets": check_rds_proxy_targets,
    "iam-login": check_iam_login,
    "iam-policy-size": check_iam_policy_size,
}


def diagnose(target: Target, options: Options | None = None) -> list[Finding]:
    """Runs the checks in order (all, or `options.only`); blocking, seconds at most.

    Network waits are bounded by the endpoint's connectTimeout and the IMDS timeout
    (botocore's AWS_METADATA_SERVICE_TIMEOUT); AWS API calls are not retried.
    """
    options = options or Options()
    unknown = set(options.only or ()) - set(CHECKS)
    if unknown:
        raise ValueError(
            f"unknown check {', '.join(sorted(unknown))}: choose from {', '.join(CHECKS)}"
        )
    run = _Run(target, options)
    findings: list[Finding] = []
    for check in CHECKS:
        if options.only is not None and check not in options.only:
            continue
        try:
            findings.append(_CHECK_FUNCS[check](run))
        except Exception as exc:  # a check must never take the others down
            findings.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "CheckError",
                )
            )
    return findings


def run_startup_checks(
    config: ProxyConfig, *, db_users: Sequence[str] = (), db_name: str = "postgres"
) -> list[Finding]:
    """The checks the proxy runs at start-up and periodically (blocking; use a thread).

    Without `db_users` no login is attempted; the IAM policy-size check is left to the CLI.
    """
    only = [c for c in CHECKS if c != "iam-policy-size"]
    return diagnose(
        Target.from_config(config), Options(db_users=db_users, db_name=db_name, only=only)
    )


async def run_startup_checks_async(
    config: ProxyConfig, *, db_users: Sequence[str] = (), db_name: str = "postgres"
) -> list[Finding]:
    """`run_startup_checks` in a worker thread, for the proxy's event loop."""
    return await asyncio.to_thread(run_startup_checks, config, db_users=db_users, db_name=db_name)

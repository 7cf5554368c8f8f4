"""One diagnosis: its inputs (`Target`, `Options`) and `Run`, the steps the checks share.

Each step (the credential chain, STS, IMDS, AssumeRole, the RDS API, DNS, TCP, TLS) is
computed once, on first use, so a subset of checks only does the work it needs.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from .. import imds, wire
from ..aws import make_session
from ..config import AWS, DatabaseRef, ProxyConfig, Upstream
from ..errors import ConfigError
from ..tls import upstream_context
from .aws_errors import denied, error_text
from .certificates import CertInfo, cert_info
from .credential_chain import SOURCES, chain_sources
from .policies import principal_for_trust


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


def ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


@dataclass(frozen=True)
class _Creds:
    session: botocore.session.Session
    method: str | None = None
    error: str | None = None

    @property
    def source(self) -> str | None:
        return SOURCES.get(self.method or "", self.method)


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
class _Tls:
    ok: bool
    evidence: dict[str, Any]
    cert: CertInfo | None = None
    error: str | None = None
    refused: bool = False


class Run:
    """One diagnosis: the inputs and the steps that checks share, each computed once."""

    def __init__(self, target: Target, options: Options) -> None:
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
            return _Creds(session, error=error_text(exc))

    @cached_property
    def sources(self) -> list[dict[str, Any]]:
        return chain_sources(self.base.session)

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
            if denied(exc):
                return (
                    f"the RDS API refused rds:DescribeDBProxies ({error_text(exc)}); grant "
                    "rds:DescribeDBProxies and rds:DescribeDBProxyTargets to run this check"
                )
            return f"the RDS API did not answer: {error_text(exc)}"
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
            return _Dns([], ms(started), error=exc.strerror or str(exc))
        addresses: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in addresses:
                addresses.append(addr)
        return _Dns(addresses, ms(started))

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
            attempts.append({"address": addr, "ok": True, "elapsedMs": ms(started)})
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
            raise NoTLS(answer)
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

    def peer_certificate(self) -> CertInfo | None:
        """The leaf certificate, fetched without verifying it, to say what is wrong with it."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with ctx.wrap_socket(self.open_socket(), server_hostname=self.server_name) as tls:
                der = tls.getpeercert(binary_form=True)
        except (OSError, NoTLS):
            return None
        return cert_info(der) if der else None

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
            cert = cert_info(der) if der else None
            if cert is not None:
                evidence["certificate"] = cert.to_dict()
            return _Tls(True, evidence, cert)
        except NoTLS as exc:
            evidence["sslRequestAnswer"] = exc.answer.decode("latin-1") or "(closed)"
            return _Tls(False, evidence, refused=True, error=str(exc))
        except ConfigError as exc:
            return _Tls(False, evidence, error="; ".join(exc.problems))
        except ssl.SSLCertVerificationError as exc:
            cert = self.peer_certificate()
            if cert is not None:
                evidence["certificate"] = cert.to_dict()
            evidence["verifyError"] = exc.verify_message
            return _Tls(False, evidence, cert, error=str(exc.verify_message or exc))
        except (OSError, ssl.SSLError) as exc:
            return _Tls(False, evidence, error=str(exc) or type(exc).__name__)


class NoTLS(Exception):
    def __init__(self, answer: bytes) -> None:
        super().__init__(
            "the endpoint answered the SSLRequest with "
            + (repr(answer.decode("latin-1")) if answer else "a closed connection")
            + ", not 'S': it does not accept TLS"
        )
        self.answer = answer

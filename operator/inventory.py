"""What AWS says exists: RDS Proxies, their endpoints and tags, read for DatabaseDiscovery.

The only module of the operator that calls the RDS API for discovery. It returns plain
frozen values (`Inventory`), so the pure core (`operator/discovery.py`) decides what to
create, update and delete without touching AWS, and its tests build inventories by hand.
Failures are typed: `AwsAccessDenied` names the missing action so the status can print the
policy; `AwsThrottled` makes the caller back off; anything else is `AwsUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from pydantic import ValidationError

from rdsgate.proxy.aws import explain_no_credentials, make_session
from rdsgate.proxy.config import AWS

EndpointRole = Literal["READ_WRITE", "READ_ONLY"]


@dataclass(frozen=True)
class ProxyEndpoint:
    """One endpoint of an RDS Proxy. The default endpoint has `name` "default"
    (`is_default` True) and the proxy's own `Endpoint` host."""

    name: str
    host: str
    port: int
    role: EndpointRole
    is_default: bool
    status: str  # DescribeDBProxyEndpoints' Status, e.g. "available"


@dataclass(frozen=True)
class ProxyTarget:
    """A database behind an RDS Proxy and its health (DescribeDBProxyTargets)."""

    endpoint: str | None
    port: int | None
    type: str  # RDS_INSTANCE, RDS_SERVERLESS_ENDPOINT, TRACKED_CLUSTER
    role: str | None  # READ_WRITE, READ_ONLY, UNKNOWN
    state: str  # TargetHealth.State: REGISTERING, AVAILABLE, UNAVAILABLE, UNUSED
    reason: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class FoundProxy:
    name: str
    arn: str
    resource_id: str  # the "prx-…" part of the ARN, for rds-db:connect policies
    region: str
    account_id: str
    engine_family: str  # POSTGRESQL, MYSQL, SQLSERVER
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    endpoints: tuple[ProxyEndpoint, ...] = ()
    targets: tuple[ProxyTarget, ...] = ()


@dataclass(frozen=True)
class Inventory:
    proxies: tuple[FoundProxy, ...]
    regions: tuple[str, ...]


class InventoryError(Exception):
    """A user-facing reason the inventory could not be read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AwsAccessDenied(InventoryError):
    def __init__(self, message: str, action: str) -> None:
        super().__init__(message)
        self.action = action  # e.g. "rds:DescribeDBProxyEndpoints" or "sts:AssumeRole"


class AwsThrottled(InventoryError):
    pass


class AwsUnavailable(InventoryError):
    pass


#: The actions discovery needs, for `rdsgate iam policy --discovery` and AccessDenied.
DISCOVERY_ACTIONS: tuple[str, ...] = (
    "rds:DescribeDBProxies",
    "rds:DescribeDBProxyEndpoints",
    "rds:DescribeDBProxyTargets",
    "rds:ListTagsForResource",
)


def read_inventory(
    regions: Sequence[str],
    *,
    assume_role_arn: str | None = None,
    external_id: str | None = None,
) -> Inventory:
    """Reads every RDS Proxy with its endpoints and tags in `regions`, with the process's
    AWS identity (botocore's chain; `AWS_ENDPOINT_URL` is honoured) or the assumed role.

    One botocore session per call (it runs every few minutes) and one client per region,
    closed before returning. Retries are botocore's standard mode with few attempts, so a
    throttle that persists becomes `AwsThrottled` within seconds, not minutes.
    """
    if not regions:
        return Inventory(proxies=(), regions=())
    aws = _aws_config(regions[0], assume_role_arn, external_id)
    session = make_session(aws, "rdsgate-discovery")
    _check_credentials(session, aws)
    found: list[FoundProxy] = []
    for region in regions:
        _aws_config(region, assume_role_arn, external_id)  # validates the region's name
        client = session.create_client("rds", region_name=region, config=_CLIENT_CONFIG)
        try:
            found.extend(_read_region(client, region))
        finally:
            client.close()
    return Inventory(proxies=tuple(found), regions=tuple(regions))


#: The port each RDS Proxy engine family listens on (RDS Proxy has no port setting).
ENGINE_PORTS: dict[str, int] = {"POSTGRESQL": 5432, "MYSQL": 3306, "SQLSERVER": 1433}

_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=20
)
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
#: botocore's standard retry mode's throttling codes (botocore.retries.standard).
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)


def _aws_config(region: str, assume_role_arn: str | None, external_id: str | None) -> AWS:
    try:
        return AWS(region=region, assume_role_arn=assume_role_arn, external_id=external_id)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise AwsUnavailable(f"invalid AWS settings for discovery: {problems}") from None


def _check_credentials(session: Any, aws: AWS) -> None:
    """Resolves credentials first, so a refused sts:AssumeRole is named as such."""
    with _translated("sts:AssumeRole", aws.region):
        try:
            credentials = session.get_credentials()
            if credentials is not None:
                credentials.get_frozen_credentials()
        except NoCredentialsError:
            credentials = None
    if credentials is None:
        raise AwsUnavailable(explain_no_credentials(aws))


@contextmanager
def _translated(action: str, region: str) -> Iterator[None]:
    """botocore's exceptions as the typed, user-facing errors of this module."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or str(exc)
        called = action
        if exc.operation_name == "AssumeRole":
            called = "sts:AssumeRole"
        if code in _DENIED:
            raise AwsAccessDenied(f"{called} was denied in {region}: {message}", called) from None
        if code in _THROTTLED:
            raise AwsThrottled(
                f"{called} is throttled by AWS in {region} ({code}: {message}); "
                "retries did not get through"
            ) from None
        raise AwsUnavailable(f"{called} failed in {region}: {code}: {message}") from None
    except NoCredentialsError as exc:
        raise AwsUnavailable(f"{action} in {region}: {exc}") from None
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        raise AwsUnavailable(
            f"cannot reach the AWS API for {action} in {region}: {exc} "
            "(check DNS, routing and proxies from the operator's pod)"
        ) from None
    except BotoCoreError as exc:
        raise AwsUnavailable(f"{action} failed in {region}: {exc}") from None


def _read_region(client: Any, region: str) -> list[FoundProxy]:
    with _translated("rds:DescribeDBProxies", region):
        proxies = [
            p
            for page in client.get_paginator("describe_db_proxies").paginate()
            for p in page.get("DBProxies", [])
        ]
    if not proxies:
        return []
    with _translated("rds:DescribeDBProxyEndpoints", region):
        endpoints = [
            e
            for page in client.get_paginator("describe_db_proxy_endpoints").paginate()
            for e in page.get("DBProxyEndpoints", [])
        ]
    out: list[FoundProxy] = []
    for proxy in proxies:
        name = str(proxy["DBProxyName"])
        arn = str(proxy["DBProxyArn"])
        with _translated("rds:ListTagsForResource", region):
            tag_list = client.list_tags_for_resource(ResourceName=arn).get("TagList", [])
        with _translated("rds:DescribeDBProxyTargets", region):
            targets = [
                t
                for page in client.get_paginator("describe_db_proxy_targets").paginate(
                    DBProxyName=name
                )
                for t in page.get("Targets", [])
            ]
        out.append(_found(proxy, region, tag_list, endpoints, targets))
    return out


def _found(
    proxy: dict[str, Any],
    region: str,
    tag_list: list[dict[str, Any]],
    endpoints: list[dict[str, Any]],
    targets: list[dict[str, Any]],
) -> FoundProxy:
    name = str(proxy["DBProxyName"])
    arn = str(proxy["DBProxyArn"])
    parts = arn.split(":", 6)  # arn:PARTITION:rds:REGION:ACCOUNT:db-proxy:prx-…
    family = str(proxy.get("EngineFamily", ""))
    port = ENGINE_PORTS.get(family, 0)
    status = str(proxy.get("Status", ""))
    default = ProxyEndpoint(
        name="default",
        host=str(proxy.get("Endpoint", "")),
        port=port,
        role="READ_WRITE",
        is_default=True,
        status=status,
    )
    custom = tuple(
        ProxyEndpoint(
            name=str(e["DBProxyEndpointName"]),
            host=str(e.get("Endpoint", "")),
            port=port,
            role="READ_ONLY" if e.get("TargetRole") == "READ_ONLY" else "READ_WRITE",
            is_default=False,
            status=str(e.get("Status", "")),
        )
        for e in sorted(endpoints, key=lambda e: str(e.get("DBProxyEndpointName")))
        if e.get("DBProxyName") == name and not e.get("IsDefault")
    )
    return FoundProxy(
        name=name,
        arn=arn,
        resource_id=parts[6] if len(parts) == 7 else "",
        region=region,
        account_id=parts[4] if len(parts) == 7 else "",
        engine_family=family,
        status=status,
        tags={str(t["Key"]): str(t.get("Value", "")) for t in tag_list},
        endpoints=(default, *custom),
        targets=tuple(
            ProxyTarget(
                endpoint=t.get("Endpoint"),
                port=t.get("Port"),
                type=str(t.get("Type", "")),
                role=t.get("Role"),
                state=str(t.get("TargetHealth", {}).get("State", "")),
                reason=t.get("TargetHealth", {}).get("Reason"),
                description=t.get("TargetHealth", {}).get("Description"),
            )
            for t in targets
        ),
    )

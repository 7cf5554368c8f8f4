"""RDS Proxy endpoints and throttling for the lab's in-process moto (moto 5.2 lacks them).

moto answers HTTP 500 to `CreateDBProxyEndpoint`, `DescribeDBProxyEndpoints` and
`DeleteDBProxyEndpoint`, so discovery could not be tested with real botocore calls.
`install()` adds those actions to moto's `RDSResponse` (the class `ThreadedMotoServer`
dispatches RDS requests to), keeping the endpoints next to moto's own proxies in its RDS
backend. Shapes follow botocore's service model (`DBProxyEndpoint`); behaviour follows
AWS's documentation where it says something:

* a custom endpoint's host is `NAME.endpoint.proxy-ID.REGION.rds.amazonaws.com` and its
  ARN `arn:aws:rds:REGION:ACCOUNT:db-proxy-endpoint:prx-endpoint-…`;
* `DescribeDBProxyEndpoints` lists the endpoints users created, not the proxy's default
  endpoint (AWS's CLI reference example shows only `IsDefault: false` entries); the
  default endpoint is `DescribeDBProxies`' `Endpoint`;
* `TargetRole` defaults to READ_WRITE; at most 20 endpoints per proxy
  (`DBProxyEndpointQuotaExceededFault`); `MaxRecords` must be 20..100; `Marker` pages;
  `Filters` is accepted and ignored (the API reference: "not currently supported");
* a new endpoint answers `creating` to its create call and `available` afterwards;
* deleting a proxy deletes its endpoints; deleting or describing the targets of an
  unknown proxy gives `DBProxyNotFoundFault` (moto answered 500).

Throttling: `throttle(port, action, times)` makes the server on `port` answer `action`
as RDS does when a caller exceeds its request rate (HTTP 400, `Throttling` /
`Rate exceeded` in the query protocol's XML error), which botocore's retry handlers
classify as throttling. It is seen by any HTTP client of that server (another thread
or process), since the answer is made by the server.

Not covered: `ModifyDBProxy`, `ModifyDBProxyEndpoint`, tags on endpoints
(`ListTagsForResource` of an endpoint ARN), `EndpointNetworkType`.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: AWS's limit of endpoints per proxy ("Limitations for proxy endpoints").
ENDPOINTS_PER_PROXY = 20
_STORE_ATTR = "_rdsgate_proxy_endpoints"
_THROTTLE_XML = (
    '<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/">'
    "<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
    "</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
)

_lock = threading.Lock()
_installed = False
#: (server port, action) → answers left to throttle (None: until cleared).
_throttles: dict[tuple[int, str], int | None] = {}
#: (server port, action) → how many answers were throttled, for tests to assert on.
_throttled: dict[tuple[int, str], int] = {}


@dataclass
class _Endpoint:
    name: str
    arn: str
    proxy_name: str
    vpc_id: str
    security_group_ids: list[str]
    subnet_ids: list[str]
    host: str
    target_role: str
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "creating"

    def shape(self) -> dict[str, Any]:
        """The `DBProxyEndpoint` structure of botocore's RDS model."""
        return {
            "DBProxyEndpointName": self.name,
            "DBProxyEndpointArn": self.arn,
            "DBProxyName": self.proxy_name,
            "Status": self.status,
            "VpcId": self.vpc_id,
            "VpcSecurityGroupIds": list(self.security_group_ids),
            "VpcSubnetIds": list(self.subnet_ids),
            "Endpoint": self.host,
            "CreatedDate": self.created,
            "TargetRole": self.target_role,
            "IsDefault": False,
        }


def throttle(port: int, action: str, times: int | None) -> None:
    """Answer the next `times` calls of `action` (all, when None) with `Throttling`."""
    with _lock:
        _throttles[(port, action)] = times


def clear_throttles(port: int) -> None:
    with _lock:
        for key in [k for k in _throttles if k[0] == port]:
            del _throttles[key]


def throttled_count(port: int, action: str) -> int:
    """How many calls of `action` the server on `port` answered with `Throttling`."""
    with _lock:
        return _throttled.get((port, action), 0)


def _take_throttle(port: int, action: str) -> bool:
    with _lock:
        key = (port, action)
        if key not in _throttles:
            return False
        left = _throttles[key]
        if left is not None:
            if left <= 0:
                del _throttles[key]
                return False
            _throttles[key] = left - 1
        _throttled[key] = _throttled.get(key, 0) + 1
        return True


def _server_port(host: str | None) -> int:
    if host and ":" in host:
        try:
            return int(host.rsplit(":", 1)[1])
        except ValueError:
            return 0
    return 0


def install() -> None:
    """Adds the endpoint actions and throttling to moto's RDS responses (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _install()
        _installed = True


def _install() -> None:
    from moto.ec2.models import ec2_backends
    from moto.rds.exceptions import (
        DBProxyNotFoundFault,
        InvalidParameterValue,
        InvalidSubnet,
        RDSClientError,
    )
    from moto.rds.models import RDSBackend
    from moto.rds.responses import RDSResponse

    class EndpointNotFound(RDSClientError):
        def __init__(self) -> None:
            super().__init__("DBProxyEndpointNotFoundFault", "The DB proxy endpoint doesn't exist.")

    class EndpointExists(RDSClientError):
        def __init__(self) -> None:
            super().__init__(
                "DBProxyEndpointAlreadyExistsFault",
                "The specified DB proxy endpoint name must be unique for all DB proxy "
                "endpoints owned by your Amazon Web Services account in the specified "
                "Amazon Web Services Region.",
            )

    class EndpointQuota(RDSClientError):
        def __init__(self) -> None:
            super().__init__(
                "DBProxyEndpointQuotaExceededFault",
                "The DB proxy already has the maximum number of endpoints.",
            )

    def store(backend: RDSBackend) -> dict[str, _Endpoint]:
        found: dict[str, _Endpoint] | None = getattr(backend, _STORE_ATTR, None)
        if found is None:
            found = {}
            setattr(backend, _STORE_ATTR, found)
        return found

    def proxy_of(backend: RDSBackend, name: str | None) -> Any:
        proxy = backend.db_proxies.get(name or "")
        if proxy is None:
            raise DBProxyNotFoundFault(name or "")
        return proxy

    def page(self: RDSResponse, items: Sequence[Any]) -> tuple[list[Any], str | None]:
        """MaxRecords (20..100, default 100) and an opaque Marker, as RDS pages."""
        raw = self.params.get("MaxRecords")
        size = 100 if raw is None else int(raw)
        if not 20 <= size <= 100:
            raise InvalidParameterValue(
                f"Invalid value {size} for MaxRecords. Must be between 20 and 100"
            )
        start = 0
        marker = self.params.get("Marker")
        if marker:
            try:
                start = int(marker, 16)
            except ValueError:
                raise InvalidParameterValue(f"Invalid marker: {marker}") from None
        chunk = list(items[start : start + size])
        more = start + size < len(items)
        return chunk, (format(start + size, "x") if more else None)

    def create_db_proxy_endpoint(self: RDSResponse) -> Any:
        from moto.core.responses import ActionResult

        proxy = proxy_of(self.backend, self.params.get("DBProxyName"))
        name = str(self.params["DBProxyEndpointName"])
        endpoints = store(self.backend)
        if name in endpoints:
            raise EndpointExists()
        if sum(1 for e in endpoints.values() if e.proxy_name == proxy.db_proxy_name) >= (
            ENDPOINTS_PER_PROXY
        ):
            raise EndpointQuota()
        subnet_ids = [str(s) for s in self.params.get("VpcSubnetIds") or []]
        ec2 = ec2_backends[self.current_account][self.region]
        try:
            subnets = ec2.describe_subnets(subnet_ids=subnet_ids)
        except Exception:  # moto's InvalidSubnetIdError: RDS says InvalidSubnet
            raise InvalidSubnet(",".join(subnet_ids)) from None
        vpcs = {s.vpc_id for s in subnets}
        if len(vpcs) != 1:
            raise InvalidSubnet(",".join(subnet_ids))
        vpc_id = vpcs.pop()
        groups = [str(g) for g in self.params.get("VpcSecurityGroupIds") or []]
        if not groups:
            default = ec2.get_default_security_group(vpc_id)
            groups = [default.id] if default is not None else []
        role = str(self.params.get("TargetRole") or "READ_WRITE")
        endpoint = _Endpoint(
            name=name,
            arn=(
                f"arn:{self.backend.partition}:rds:{self.region}:{self.current_account}:"
                f"db-proxy-endpoint:prx-endpoint-{os.urandom(9).hex()[:17]}"
            ),
            proxy_name=proxy.db_proxy_name,
            vpc_id=vpc_id,
            security_group_ids=groups,
            subnet_ids=subnet_ids,
            host=(f"{name}.endpoint.proxy-{proxy.url_identifier}.{self.region}.rds.amazonaws.com"),
            target_role=role,
        )
        endpoints[name] = endpoint
        answer = endpoint.shape()
        endpoint.status = "available"  # ready for the next describe
        return ActionResult({"DBProxyEndpoint": answer})

    def describe_db_proxy_endpoints(self: RDSResponse) -> Any:
        from moto.core.responses import ActionResult

        proxy_name = self.params.get("DBProxyName")
        endpoint_name = self.params.get("DBProxyEndpointName")
        found = list(store(self.backend).values())
        if proxy_name:
            proxy_of(self.backend, proxy_name)
            found = [e for e in found if e.proxy_name == proxy_name]
        if endpoint_name:
            found = [e for e in found if e.name == endpoint_name]
            if not found:
                raise EndpointNotFound()
        chunk, marker = page(self, found)
        result: dict[str, Any] = {"DBProxyEndpoints": [e.shape() for e in chunk]}
        if marker is not None:
            result["Marker"] = marker
        return ActionResult(result)

    def delete_db_proxy_endpoint(self: RDSResponse) -> Any:
        from moto.core.responses import ActionResult

        endpoint = store(self.backend).pop(str(self.params.get("DBProxyEndpointName")), None)
        if endpoint is None:
            raise EndpointNotFound()
        endpoint.status = "deleting"
        return ActionResult({"DBProxyEndpoint": endpoint.shape()})

    def describe_db_proxies(self: RDSResponse) -> Any:
        """moto's, with DBProxyNotFoundFault and real MaxRecords/Marker paging."""
        from moto.core.responses import ActionResult

        proxies = self.backend.describe_db_proxies(db_proxy_name=self.params.get("DBProxyName"))
        chunk, marker = page(self, proxies)
        result: dict[str, Any] = {"DBProxies": chunk}
        if marker is not None:
            result["Marker"] = marker
        return ActionResult(result)

    def needs_proxy(original: Callable[[RDSResponse], Any]) -> Callable[[RDSResponse], Any]:
        """moto raises KeyError (HTTP 500) for an unknown proxy; RDS says DBProxyNotFoundFault."""

        def checked(self: RDSResponse) -> Any:
            proxy_of(self.backend, self.params.get("DBProxyName"))
            return original(self)

        checked.__name__ = original.__name__
        return checked

    original_delete = needs_proxy(RDSResponse.delete_db_proxy)

    def delete_db_proxy(self: RDSResponse) -> Any:
        name = self.params.get("DBProxyName")
        answer = original_delete(self)
        endpoints = store(self.backend)
        for key in [k for k, e in endpoints.items() if e.proxy_name == name]:
            del endpoints[key]
        return answer

    original_call_action = RDSResponse.call_action

    def call_action(self: RDSResponse) -> Any:
        port = _server_port(self.headers.get("Host"))
        if _take_throttle(port, self._get_action()):
            request_id = str(uuid.uuid4())
            body = _THROTTLE_XML.format(request_id=request_id)
            return 400, {"Content-Type": "text/xml", "x-amzn-RequestId": request_id}, body
        return original_call_action(self)

    patches: dict[str, Callable[[RDSResponse], Any]] = {
        "create_db_proxy_endpoint": create_db_proxy_endpoint,
        "describe_db_proxy_endpoints": describe_db_proxy_endpoints,
        "delete_db_proxy_endpoint": delete_db_proxy_endpoint,
        "describe_db_proxies": describe_db_proxies,
        "delete_db_proxy": delete_db_proxy,
        "describe_db_proxy_targets": needs_proxy(RDSResponse.describe_db_proxy_targets),
        "describe_db_proxy_target_groups": needs_proxy(RDSResponse.describe_db_proxy_target_groups),
        "call_action": call_action,
    }
    for name, method in patches.items():
        setattr(RDSResponse, name, method)

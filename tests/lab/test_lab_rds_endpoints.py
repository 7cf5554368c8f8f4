"""The lab's RDS Proxy endpoints and throttling, seen through real botocore calls.

moto 5.2 answers 500 to the endpoint actions; `rdsgate.lab.rds_endpoints` adds them with
the shapes of botocore's RDS model. Other tests share the session's moto, so every name
here is unique and assertions look only at what this module created.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from rdsgate.lab.aws import AwsLab


def _name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = exc.value.response
    return str(response["Error"]["Code"]), int(response["ResponseMetadata"]["HTTPStatusCode"])


def _rds(aws: AwsLab, **config: Any) -> Any:
    """An RDS client of the lab with a given botocore config (closed by the caller)."""
    creds = aws.admin.credentials
    return aws.session().client(
        "rds",
        endpoint_url=aws.endpoint_url,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        config=Config(**config),
    )


def test_an_endpoint_is_created_described_and_deleted_with_the_real_shape(aws: AwsLab) -> None:
    proxy = aws.create_db_proxy(_name("ep-shape"), [])
    rds = aws.client("rds")
    name = _name("reader")
    proxy_id = proxy.endpoint.split(".")[1].rsplit("-", 1)[1]

    created = rds.create_db_proxy_endpoint(
        DBProxyName=proxy.name,
        DBProxyEndpointName=name,
        VpcSubnetIds=aws._subnet_ids(),
        TargetRole="READ_ONLY",
    )["DBProxyEndpoint"]
    listed = rds.describe_db_proxy_endpoints(DBProxyName=proxy.name)["DBProxyEndpoints"]
    by_name = rds.describe_db_proxy_endpoints(DBProxyEndpointName=name)["DBProxyEndpoints"]
    deleted = rds.delete_db_proxy_endpoint(DBProxyEndpointName=name)["DBProxyEndpoint"]
    with pytest.raises(ClientError) as gone:
        rds.describe_db_proxy_endpoints(DBProxyEndpointName=name)

    assert created["Status"] == "creating"
    assert created["Endpoint"] == (
        f"{name}.endpoint.proxy-{proxy_id}.{aws.region}.rds.amazonaws.com"
    )
    assert re.fullmatch(
        rf"arn:aws:rds:{aws.region}:{aws.account_id}:db-proxy-endpoint:prx-endpoint-[0-9a-f]{{17}}",
        created["DBProxyEndpointArn"],
    )
    assert created["TargetRole"] == "READ_ONLY"
    assert created["IsDefault"] is False
    assert created["VpcSubnetIds"] == aws._subnet_ids()
    assert created["VpcId"].startswith("vpc-")
    assert created["VpcSecurityGroupIds"][0].startswith("sg-")
    # The default endpoint is the proxy's own Endpoint, not listed here (as on AWS).
    assert [(e["DBProxyEndpointName"], e["Status"]) for e in listed] == [(name, "available")]
    assert by_name == listed
    assert created["CreatedDate"] == listed[0]["CreatedDate"]
    assert deleted["Status"] == "deleting"
    assert _error(gone) == ("DBProxyEndpointNotFoundFault", 404)


def test_endpoint_errors_are_the_faults_rds_answers(aws: AwsLab) -> None:
    proxy = aws.create_db_proxy(_name("ep-errors"), [])
    rds = aws.client("rds")
    name = _name("writer")
    subnets = aws._subnet_ids()

    created = rds.create_db_proxy_endpoint(
        DBProxyName=proxy.name, DBProxyEndpointName=name, VpcSubnetIds=subnets
    )["DBProxyEndpoint"]
    with pytest.raises(ClientError) as twice:
        rds.create_db_proxy_endpoint(
            DBProxyName=proxy.name, DBProxyEndpointName=name, VpcSubnetIds=subnets
        )
    with pytest.raises(ClientError) as no_proxy:
        rds.create_db_proxy_endpoint(
            DBProxyName=_name("nowhere"), DBProxyEndpointName=_name("x"), VpcSubnetIds=subnets
        )
    with pytest.raises(ClientError) as no_proxy_listed:
        rds.describe_db_proxy_endpoints(DBProxyName=_name("nowhere"))
    with pytest.raises(ClientError) as no_endpoint:
        rds.delete_db_proxy_endpoint(DBProxyEndpointName=_name("nothing"))
    with pytest.raises(ClientError) as bad_subnet:
        rds.create_db_proxy_endpoint(
            DBProxyName=proxy.name, DBProxyEndpointName=_name("x"), VpcSubnetIds=["subnet-0nope"]
        )

    assert created["TargetRole"] == "READ_WRITE"  # the API's default
    assert _error(twice) == ("DBProxyEndpointAlreadyExistsFault", 400)
    assert _error(no_proxy) == ("DBProxyNotFoundFault", 404)
    assert _error(no_proxy_listed) == ("DBProxyNotFoundFault", 404)
    assert _error(no_endpoint) == ("DBProxyEndpointNotFoundFault", 404)
    assert _error(bad_subnet)[0] == "InvalidSubnet"


def test_endpoints_page_with_max_records_and_marker(aws: AwsLab) -> None:
    """20 endpoints per proxy at most (AWS's limit), pages of 20..100 records."""
    full = aws.create_db_proxy(_name("ep-full"), [])
    other = aws.create_db_proxy(_name("ep-other"), [])
    mine = {aws.create_db_proxy_endpoint(full.name, f"{full.name}-{i}") for i in range(20)}
    mine |= {aws.create_db_proxy_endpoint(other.name, f"{other.name}-{i}") for i in range(2)}
    rds = aws.client("rds")
    unchecked = _rds(aws, parameter_validation=False, retries={"total_max_attempts": 1})

    with pytest.raises(ClientError) as over_quota:
        aws.create_db_proxy_endpoint(full.name, f"{full.name}-20")
    pages = list(
        rds.get_paginator("describe_db_proxy_endpoints").paginate(PaginationConfig={"PageSize": 20})
    )
    of_full = rds.describe_db_proxy_endpoints(DBProxyName=full.name, MaxRecords=20)
    with pytest.raises(ClientError) as too_small:
        unchecked.describe_db_proxy_endpoints(MaxRecords=5)
    unchecked.close()

    hosts = [e["Endpoint"] for page in pages for e in page["DBProxyEndpoints"]]
    assert _error(over_quota) == ("DBProxyEndpointQuotaExceededFault", 400)
    assert len(pages) >= 2
    assert all(len(p["DBProxyEndpoints"]) <= 20 for p in pages)
    assert "Marker" in pages[0] and "Marker" not in pages[-1]
    assert mine <= set(hosts)
    assert len(hosts) == len(set(hosts))  # no endpoint twice across pages
    assert len(of_full["DBProxyEndpoints"]) == 20 and "Marker" not in of_full
    assert _error(too_small) == ("InvalidParameterValue", 400)


def test_deleting_a_proxy_deletes_its_endpoints_and_tags_follow_changes(aws: AwsLab) -> None:
    proxy = aws.create_db_proxy(_name("ep-gone"), [], tags={"env": "prod", "team": "a"})
    aws.create_db_proxy_endpoint(proxy.name, _name("gone-ro"))
    rds = aws.client("rds")

    rds.add_tags_to_resource(ResourceName=proxy.arn, Tags=[{"Key": "tier", "Value": "1"}])
    rds.remove_tags_from_resource(ResourceName=proxy.arn, TagKeys=["team"])
    tags = rds.list_tags_for_resource(ResourceName=proxy.arn)["TagList"]
    rds.delete_db_proxy(DBProxyName=proxy.name)
    left = [
        e
        for page in rds.get_paginator("describe_db_proxy_endpoints").paginate()
        for e in page["DBProxyEndpoints"]
        if e["DBProxyName"] == proxy.name
    ]
    with pytest.raises(ClientError) as again:
        rds.delete_db_proxy(DBProxyName=proxy.name)
    with pytest.raises(ClientError) as targets:
        rds.describe_db_proxy_targets(DBProxyName=proxy.name)

    assert {t["Key"]: t["Value"] for t in tags} == {"env": "prod", "tier": "1"}
    assert left == []
    assert _error(again) == ("DBProxyNotFoundFault", 404)
    assert _error(targets) == ("DBProxyNotFoundFault", 404)


def test_describe_db_proxies_pages_for_real(aws: AwsLab) -> None:
    """moto echoed the caller's Marker; a paginator must see every proxy exactly once.

    In a region of its own, so the 21 proxies do not slow down other tests' listings."""
    region = "ca-central-1"
    creds = aws.admin.credentials
    kwargs: dict[str, Any] = {
        "region_name": region,
        "endpoint_url": aws.endpoint_url,
        "aws_access_key_id": creds.access_key_id,
        "aws_secret_access_key": creds.secret_access_key,
    }
    ec2: Any = aws.session().client("ec2", **kwargs)
    rds: Any = aws.session().client("rds", **kwargs)
    try:
        vpc = ec2.create_vpc(CidrBlock="10.44.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.44.{i}.0/24")["Subnet"]["SubnetId"]
            for i in (1, 2)
        ]
        total = len(rds.describe_db_proxies()["DBProxies"])
        names = {_name("pg-page") for _ in range(max(3, 21 - total))}
        for name in names:
            rds.create_db_proxy(
                DBProxyName=name,
                EngineFamily="POSTGRESQL",
                Auth=[{"AuthScheme": "SECRETS", "SecretArn": "arn:aws:secretsmanager:x"}],
                RoleArn=f"arn:aws:iam::{aws.account_id}:role/rds-proxy-secrets",
                VpcSubnetIds=subnets,
            )
        pages = list(
            rds.get_paginator("describe_db_proxies").paginate(PaginationConfig={"PageSize": 20})
        )
    finally:
        ec2.close()
        rds.close()

    seen = [p["DBProxyName"] for page in pages for p in page["DBProxies"]]
    assert len(pages) >= 2
    assert len(seen) == len(set(seen))
    assert names <= set(seen)


def test_a_throttled_action_answers_as_rds_does_and_botocore_retries_it(aws: AwsLab) -> None:
    one_shot = _rds(aws, retries={"mode": "standard", "total_max_attempts": 1})
    retrying = _rds(aws, retries={"mode": "standard", "total_max_attempts": 3})
    before = aws.throttled("DescribeDBProxies")
    try:
        aws.throttle("DescribeDBProxies", times=1)
        with pytest.raises(ClientError) as refused:
            one_shot.describe_db_proxies()
        after_one = one_shot.describe_db_proxies()

        aws.throttle("DescribeDBProxies", times=2)
        recovered = retrying.describe_db_proxies()

        aws.throttle("DescribeDBProxies")  # until cleared
        for _ in range(2):
            with pytest.raises(ClientError):
                one_shot.describe_db_proxies()
        other_action = one_shot.describe_db_proxy_endpoints()
        # Plain HTTP from outside botocore: moto routes on the credential scope and checks
        # no signature while enforcement is off.
        request = urllib.request.Request(  # noqa: S310 - the lab's http endpoint
            aws.endpoint_url,
            data=b"Action=DescribeDBProxies&Version=2014-10-31",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDLAB/20260101/"
                f"{aws.region}/rds/aws4_request, SignedHeaders=host, Signature=0",
            },
        )
        with pytest.raises(urllib.error.HTTPError) as raw:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310
        body = raw.value.read().decode()
        aws.clear_throttles()
        cleared = one_shot.describe_db_proxies()
    finally:
        aws.clear_throttles()
        one_shot.close()
        retrying.close()

    assert _error(refused) == ("Throttling", 400)
    assert refused.value.response["Error"]["Message"] == "Rate exceeded"
    assert after_one["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert recovered["ResponseMetadata"]["RetryAttempts"] == 2
    assert other_action["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert raw.value.code == 400
    assert "<Code>Throttling</Code><Message>Rate exceeded</Message>" in body
    assert cleared["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert aws.throttled("DescribeDBProxies") - before == 6

"""`read_inventory` against the lab's moto over HTTP: what discovery reads from AWS.

The session's moto is shared with other tests, so proxies and endpoints (whose names, as
on AWS, are unique per account and region) get a unique prefix and the assertions look
only at those. Credentials reach botocore the way they reach the operator:
environment variables and `AWS_ENDPOINT_URL` (`AwsLab.env`).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from rdsgate.lab.aws import AwsLab, IamUser, policy_document, trust_policy_document
from rdsgate.operator.inventory import (
    DISCOVERY_ACTIONS,
    AwsAccessDenied,
    AwsThrottled,
    AwsUnavailable,
    FoundProxy,
    Inventory,
    ProxyEndpoint,
    read_inventory,
)

OTHER_REGION = "ap-southeast-2"


def _mine(inventory: Inventory, prefix: str) -> dict[str, FoundProxy]:
    return {p.name: p for p in inventory.proxies if p.name.startswith(prefix)}


def _use(monkeypatch: pytest.MonkeyPatch, aws: AwsLab, user: IamUser | None = None) -> None:
    for key, value in aws.env((user or aws.admin).credentials).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _proxy_in(aws: AwsLab, region: str, name: str, engine_family: str) -> dict[str, Any]:
    """An RDS Proxy in another region of the lab (AwsLab's helpers use its own region)."""
    session = aws.session()
    kwargs: dict[str, Any] = {"region_name": region, "endpoint_url": aws.endpoint_url}
    ec2: Any = session.client("ec2", **kwargs)
    rds: Any = session.client("rds", **kwargs)
    try:
        vpc = ec2.create_vpc(CidrBlock="10.43.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.43.{i}.0/24")["Subnet"]["SubnetId"]
            for i in (1, 2)
        ]
        proxy: dict[str, Any] = rds.create_db_proxy(
            DBProxyName=name,
            EngineFamily=engine_family,
            Auth=[
                {
                    "AuthScheme": "SECRETS",
                    "SecretArn": "arn:aws:secretsmanager:x",
                    "IAMAuth": "REQUIRED",
                }
            ],
            RoleArn=f"arn:aws:iam::{aws.account_id}:role/rds-proxy-secrets",
            VpcSubnetIds=subnets,
            Tags=[{"Key": "env", "Value": "dr"}],
        )["DBProxy"]
    finally:
        ec2.close()
        rds.close()
    return proxy


def _discovery_user(aws: AwsLab, actions: tuple[str, ...] = DISCOVERY_ACTIONS) -> IamUser:
    document = policy_document({"Effect": "Allow", "Action": list(actions), "Resource": "*"})
    return aws.create_user(f"disc-{os.urandom(3).hex()}", policies={"discovery": document})


def test_reads_proxies_endpoints_tags_ports_and_targets_in_two_regions(
    aws: AwsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"inv{os.urandom(2).hex()}"
    orders = aws.create_db_proxy(f"{prefix}-orders", [], tags={"env": "prod", "team": "shop"})
    reader = aws.create_db_proxy_endpoint(orders.name, f"{prefix}-reporting")
    writer = aws.create_db_proxy_endpoint(orders.name, f"{prefix}-batch", target_role="READ_WRITE")
    mysql = aws.create_db_proxy(f"{prefix}-legacy", [], engine_family="MYSQL")
    far = _proxy_in(aws, OTHER_REGION, f"{prefix}-far", "SQLSERVER")
    rds = aws.client("rds")
    instance = rds.create_db_instance(
        DBInstanceIdentifier=f"{prefix}-db",
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        AllocatedStorage=20,
        MasterUsername="postgres",
        MasterUserPassword="not-a-secret-1",
    )["DBInstance"]
    rds.register_db_proxy_targets(
        DBProxyName=orders.name, DBInstanceIdentifiers=[instance["DBInstanceIdentifier"]]
    )
    _use(monkeypatch, aws)

    inventory = read_inventory([aws.region, OTHER_REGION])

    found = _mine(inventory, prefix)
    assert inventory.regions == (aws.region, OTHER_REGION)
    assert set(found) == {orders.name, mysql.name, far["DBProxyName"]}
    pg = found[orders.name]
    assert (pg.arn, pg.resource_id, pg.region, pg.account_id) == (
        orders.arn,
        orders.resource_id,
        aws.region,
        aws.account_id,
    )
    assert (pg.engine_family, pg.status, pg.tags) == (
        "POSTGRESQL",
        "available",
        {"env": "prod", "team": "shop"},
    )
    assert pg.endpoints == (
        ProxyEndpoint("default", orders.endpoint, 5432, "READ_WRITE", True, "available"),
        ProxyEndpoint(f"{prefix}-batch", writer, 5432, "READ_WRITE", False, "available"),
        ProxyEndpoint(f"{prefix}-reporting", reader, 5432, "READ_ONLY", False, "available"),
    )
    [target] = pg.targets
    assert target.type == "RDS_INSTANCE"
    assert target.port == 5432  # moto leaves a registered instance's Endpoint out
    assert target.state in {"REGISTERING", "AVAILABLE"}
    legacy = found[mysql.name]
    assert legacy.endpoints == (
        ProxyEndpoint("default", mysql.endpoint, 3306, "READ_WRITE", True, "available"),
    )
    assert (legacy.engine_family, legacy.tags) == ("MYSQL", {})
    remote = found[far["DBProxyName"]]
    assert (remote.region, remote.engine_family, remote.tags) == (
        OTHER_REGION,
        "SQLSERVER",
        {"env": "dr"},
    )
    assert remote.endpoints[0].host == far["Endpoint"]
    assert remote.endpoints[0].port == 1433


def test_access_denied_names_the_missing_action(
    aws: AwsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws.create_db_proxy(f"deny-{os.urandom(2).hex()}", [])
    lacking = tuple(a for a in DISCOVERY_ACTIONS if a != "rds:DescribeDBProxyEndpoints")
    user = _discovery_user(aws, lacking)
    _use(monkeypatch, aws, user)

    with aws.iam_enforced(), pytest.raises(AwsAccessDenied) as denied:
        read_inventory([aws.region])

    assert denied.value.action == "rds:DescribeDBProxyEndpoints"
    assert user.arn in denied.value.message
    assert "not authorized to perform: rds:DescribeDBProxyEndpoints" in denied.value.message
    assert user.credentials.secret_access_key not in denied.value.message


def test_a_passing_throttle_is_retried_and_a_lasting_one_is_aws_throttled(
    aws: AwsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"thr-{os.urandom(2).hex()}"
    aws.create_db_proxy(name, [])
    _use(monkeypatch, aws)
    before = aws.throttled("ListTagsForResource")
    try:
        aws.throttle("DescribeDBProxies", times=2)
        recovered = read_inventory([aws.region])
        aws.throttle("ListTagsForResource")
        with pytest.raises(AwsThrottled) as throttled:
            read_inventory([aws.region])
    finally:
        aws.clear_throttles()

    assert name in {p.name for p in recovered.proxies}
    assert "rds:ListTagsForResource" in throttled.value.message
    assert "Rate exceeded" in throttled.value.message
    assert aws.throttled("ListTagsForResource") - before == 3  # few attempts, then give up


def test_assume_role_with_the_right_external_id_and_a_wrong_one(
    aws: AwsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = os.urandom(3).hex()
    name = f"ar-{tag}"
    aws.create_db_proxy(name, [])
    assume = policy_document({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"})
    caller = aws.create_user(f"disc-caller-{tag}", policies={"assume": assume})
    role = aws.create_role(
        f"rdsgate-discovery-{tag}",
        trust_policy_document([caller.arn], external_id=f"ext-{tag}"),
        policies={
            "discovery": policy_document(
                {"Effect": "Allow", "Action": list(DISCOVERY_ACTIONS), "Resource": "*"}
            )
        },
    )
    _use(monkeypatch, aws, caller)

    with aws.iam_enforced():
        found = read_inventory([aws.region], assume_role_arn=role.arn, external_id=f"ext-{tag}")
        with pytest.raises(AwsAccessDenied) as wrong:
            read_inventory([aws.region], assume_role_arn=role.arn, external_id="ext-wrong")
        with pytest.raises(AwsAccessDenied) as itself:
            read_inventory([aws.region])  # the caller alone may not read RDS

    assert name in {p.name for p in found.proxies}
    assert wrong.value.action == "sts:AssumeRole"
    assert "sts:AssumeRole" in wrong.value.message
    assert itself.value.action == "rds:DescribeDBProxies"


def test_no_credentials_and_no_endpoint_are_aws_unavailable(
    aws: AwsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, aws)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    for key in (
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(key, raising=False)

    with pytest.raises(AwsUnavailable) as nothing:
        read_inventory([aws.region])
    _use(monkeypatch, aws)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(AwsUnavailable) as unreachable:
        read_inventory([aws.region])

    assert nothing.value.message.startswith("no AWS credentials found: looked in environment")
    assert "IMDSv2" in nothing.value.message
    assert "cannot reach the AWS API for rds:DescribeDBProxies" in unreachable.value.message
    assert "http://127.0.0.1:9" in unreachable.value.message

"""The AWS lab: moto over HTTP, what a user's SDK sees, and IAM enforcement for AssumeRole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import boto3
import pytest
from botocore.exceptions import ClientError

from rdsgate.lab.aws import (
    AwsCredentials,
    AwsLab,
    IamForProxy,
    policy_document,
    sign_db_auth_token,
    trust_policy_document,
)
from rdsgate.lab.rdsproxy import RdsProxyStandIn


def test_env_points_a_users_sdk_at_the_lab(aws: AwsLab) -> None:
    user = aws.create_user(f"env-{os.urandom(3).hex()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(aws.env(user.credentials))
    script = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"

    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == user.arn
    assert aws.account_id == "123456789012"


def test_the_rds_proxy_in_moto_requires_iam_and_tls(
    aws: AwsLab, rds_proxy: RdsProxyStandIn
) -> None:
    described = aws.client("rds").describe_db_proxies(DBProxyName=rds_proxy.db_proxy_name)
    proxy = described["DBProxies"][0]
    secrets = aws.client("secretsmanager")

    logins = {
        json.loads(secrets.get_secret_value(SecretId=a["SecretArn"])["SecretString"])["username"]
        for a in proxy["Auth"]
    }

    assert proxy["DBProxyArn"].endswith(f":db-proxy:{rds_proxy.resource_id}")
    assert rds_proxy.resource_id.startswith("prx-")
    assert proxy["RequireTLS"] is True
    assert {a["IAMAuth"] for a in proxy["Auth"]} == {"REQUIRED"}
    assert logins == {"app", "reporting"}


def test_connect_policy_is_least_privilege(aws: AwsLab) -> None:
    policy = aws.connect_policy(["app", "reporting"], resource_id="prx-abc")

    assert policy == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "rds-db:connect",
                "Resource": [
                    f"arn:aws:rds-db:eu-west-1:{aws.account_id}:dbuser:prx-abc/app",
                    f"arn:aws:rds-db:eu-west-1:{aws.account_id}:dbuser:prx-abc/reporting",
                ],
            }
        ],
    }


def test_sign_db_auth_token_is_botocores_token_at_a_given_time(rds_iam: IamForProxy) -> None:
    """The test helper for expired tokens signs exactly as generate_db_auth_token does."""
    role = rds_iam.role("app")
    real = role.token("app", port=5432, host="orders.proxy-x.eu-west-1.rds.amazonaws.com")
    signed_at = datetime.strptime(
        dict(parse_qsl(real.split("?", 1)[1]))["X-Amz-Date"], "%Y%m%dT%H%M%SZ"
    )

    again = sign_db_auth_token(
        role.credentials,
        "orders.proxy-x.eu-west-1.rds.amazonaws.com",
        5432,
        "app",
        role.region,
        signed_at=signed_at.replace(tzinfo=UTC),
    )

    assert again == real


def test_assume_role_is_refused_when_the_trust_policy_does_not_name_the_caller(
    aws: AwsLab,
) -> None:
    tag = os.urandom(3).hex()
    assume = policy_document({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"})
    trusted = aws.create_user(f"trusted-{tag}", policies={"assume": assume})
    stranger = aws.create_user(f"stranger-{tag}", policies={"assume": assume})
    role = aws.create_role(
        f"guarded-{tag}", trust_policy_document([trusted.arn], external_id="ext-1")
    )

    with aws.iam_enforced():
        with pytest.raises(ClientError) as refused:
            aws.assume_role(stranger.credentials, role.arn, external_id="ext-1")
        with pytest.raises(ClientError) as wrong_id:
            aws.assume_role(trusted.credentials, role.arn, external_id="ext-2")
        allowed = aws.assume_role(trusted.credentials, role.arn, external_id="ext-1")

    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert refused.value.response["Error"]["Message"] == (
        f"User: {stranger.arn} is not authorized to perform: sts:AssumeRole"
    )
    assert wrong_id.value.response["Error"]["Code"] == "AccessDenied"
    assert allowed.access_key_id.startswith("ASIA")
    assert not aws.iam_enforcement


def test_enforcement_checks_the_callers_own_permissions_and_keys(aws: AwsLab) -> None:
    tag = os.urandom(3).hex()
    powerless = aws.create_user(f"powerless-{tag}")
    role = aws.create_role(f"open-{tag}", trust_policy_document([powerless.arn]))
    unknown = AwsCredentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")

    with aws.iam_enforced():
        with pytest.raises(ClientError) as no_permission:
            aws.assume_role(powerless.credentials, role.arn)
        with pytest.raises(ClientError) as bad_key:
            aws.client("sts", unknown).get_caller_identity()

    assert no_permission.value.response["Error"]["Code"] == "AccessDenied"
    assert bad_key.value.response["Error"]["Code"] == "InvalidClientTokenId"
    sts = boto3.client(
        "sts",
        endpoint_url=aws.endpoint_url,
        region_name=aws.region,
        aws_access_key_id=unknown.access_key_id,
        aws_secret_access_key=unknown.secret_access_key,
    )
    assert sts.get_caller_identity()["Account"] == aws.account_id
    sts.close()

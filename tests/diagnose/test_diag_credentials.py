"""Credentials and AssumeRole, against moto's STS and IAM (with its access control on for
AccessDenied): which source was used, and the trust and permission policies to fix a denial."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rdsgate.lab.aws import AwsLab, policy_document
from tests.diagnose.conftest import Cli, WriteConfig

ENDPOINT = "orders.proxy-abc123def.eu-west-1.rds.amazonaws.com:5432"


def test_no_credentials_lists_every_source_tried(cli: Cli, write_config: WriteConfig) -> None:
    args = ("diagnose", "--config", str(write_config(ENDPOINT)), "--check", "credentials")
    table = cli(*args)
    assert table.code == 1
    assert "AWS credentials │ FAIL" in table.out
    assert "Fix for AWS credentials (NoCredentials):" in table.out
    result = cli(*args, "--json")
    summary = result.finding("credentials")["summary"]
    assert summary.startswith("no AWS credentials found; tried ")
    for source in (
        "environment variables (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set)",
        "IRSA (web identity) (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE not set)",
        "EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI not set)",
        "shared config files (no shared config or credentials file)",
        "EC2 instance profile (IMDS) (disabled by AWS_EC2_METADATA_DISABLED)",
    ):
        assert source in summary, source


def test_static_keys_are_reported_with_the_caller(
    cli: Cli, write_config: WriteConfig, aws: AwsLab
) -> None:
    user = aws.create_user(f"diag-static-{os.urandom(3).hex()}")
    result = cli(
        "diagnose",
        "--config",
        str(write_config(ENDPOINT)),
        "--check",
        "credentials",
        "--json",
        env=aws.env(user.credentials),
    )
    assert result.code == 0
    f = result.finding("credentials")
    assert f["status"] == "pass"
    assert f["evidence"]["used"] == "environment"
    assert f["evidence"]["arn"] == user.arn
    assert f["summary"] == f"credentials from environment variables (env); caller {user.arn}"


def test_irsa_web_identity_is_the_source_used(
    cli: Cli, write_config: WriteConfig, aws: AwsLab, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    role = aws.create_role(
        f"diag-irsa-{os.urandom(3).hex()}",
        policy_document({"Effect": "Allow", "Principal": {"Federated": "x"}, "Action": "*"}),
    )
    env = aws.env() | {
        "AWS_ROLE_ARN": role.arn,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
        "AWS_ROLE_SESSION_NAME": "rdsgate-proxy",
    }
    result = cli(
        "diagnose",
        "--config",
        str(write_config(ENDPOINT)),
        "--check",
        "credentials",
        "--json",
        env=env,
    )
    assert result.code == 0, result.out
    f = result.finding("credentials")
    assert f["evidence"]["used"] == "irsa"
    assert f["evidence"]["method"] == "assume-role-with-web-identity"
    assert f["evidence"]["arn"].endswith(f":assumed-role/{role.name}/rdsgate-proxy")
    irsa = next(s for s in f["evidence"]["sources"] if s["source"] == "irsa")
    assert irsa["present"] is True


def test_assume_role_access_denied_prints_the_trust_and_permission_policies_that_fix_it(
    cli: Cli, write_config: WriteConfig, aws: AwsLab
) -> None:
    suffix = os.urandom(3).hex()
    caller = aws.create_user(f"diag-node-{suffix}")
    someone = f"arn:aws:iam::{aws.account_id}:user/somebody-else"
    role = aws.create_role(
        f"diag-db-role-{suffix}",
        policy_document(
            {"Effect": "Allow", "Principal": {"AWS": someone}, "Action": "sts:AssumeRole"}
        ),
    )
    config = write_config(ENDPOINT, aws={"assumeRoleArn": role.arn, "externalId": "rdsgate-ext-42"})
    args = ("diagnose", "--config", str(config), "--check", "credentials", "--check", "assume-role")

    with aws.iam_enforced():
        denied = cli(*args, "--json", env=aws.env(caller.credentials))
        table = cli(*args, env=aws.env(caller.credentials))

    assert denied.code == 1
    f = denied.finding("assume-role")
    assert f["status"] == "fail"
    assert f["reason"] == "AssumeRoleDenied"
    assert f["summary"] == (f"sts:AssumeRole AccessDenied: {caller.arn} may not assume {role.arn}")
    trust = f["evidence"]["trustPolicy"]
    assert trust["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": caller.arn},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "rdsgate-ext-42"}},
        }
    ]
    permission = f["evidence"]["permissionPolicy"]
    assert permission["Statement"] == [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role.arn}
    ]
    assert f"aws iam update-assume-role-policy --role-name {role.name}" in f["fix"]
    assert (
        f"aws sts assume-role --role-arn {role.arn} --role-session-name "
        "test-trust-relationship --external-id rdsgate-ext-42"
    ) in f["fix"]
    assert '"sts:ExternalId": "rdsgate-ext-42"' in table.out
    assert f'"Resource": "{role.arn}"' in table.out

    # Applying exactly what was printed makes AssumeRole work.
    iam = aws.client("iam")
    iam.update_assume_role_policy(RoleName=role.name, PolicyDocument=json.dumps(trust))
    iam.put_user_policy(
        UserName=caller.name, PolicyName="assume", PolicyDocument=json.dumps(permission)
    )
    with aws.iam_enforced():
        fixed = cli(*args, "--json", env=aws.env(caller.credentials))
    assert fixed.code == 0, fixed.out
    ok = fixed.finding("assume-role")
    assert ok["status"] == "pass"
    assert ok["summary"].startswith(f"assumed {role.arn} as arn:aws:sts::{aws.account_id}:")

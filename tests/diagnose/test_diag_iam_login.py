"""IAM login through the RDS Proxy stand-in (which checks tokens and rds-db:connect as RDS
Proxy does): a refusal prints the least-privilege policy, and running the printed command
makes the login work."""

from __future__ import annotations

import os
import shlex

from rdsgate.lab.aws import AwsLab
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.diagnose.conftest import Cli, WriteConfig


def _config(write_config: WriteConfig, aws: AwsLab, rds_proxy: RdsProxyStandIn) -> str:
    return str(
        write_config(
            rds_proxy.endpoint,
            region=aws.region,
            tls={"caFile": str(rds_proxy.ca_file)},
            aws={"proxyResourceId": rds_proxy.resource_id},
        )
    )


def test_refused_login_prints_the_policy_and_its_command_fixes_it(
    cli: Cli, write_config: WriteConfig, aws: AwsLab, rds_proxy: RdsProxyStandIn
) -> None:
    user = aws.create_user(f"diag-login-{os.urandom(3).hex()}")
    args = (
        "diagnose",
        "--config",
        _config(write_config, aws, rds_proxy),
        "--check",
        "iam-login",
        "--db-user",
        "app",
        "--db-name",
        "orders",
        "--json",
    )

    refused = cli(*args, env=aws.env(user.credentials))

    assert refused.code == 1
    f = refused.finding("iam-login")
    assert f["reason"] == "IAMAuthFailed"
    assert f["summary"] == (
        "RDS Proxy refused the IAM login for app (28P01: The IAM authentication failed for the "
        "role app. Check the IAM token for this role and try again.)"
    )
    arn = f"arn:aws:rds-db:{aws.region}:{aws.account_id}:dbuser:{rds_proxy.resource_id}/app"
    assert f["evidence"]["policy"]["Statement"] == [
        {"Sid": "RdsgateConnect", "Effect": "Allow", "Action": "rds-db:connect", "Resource": [arn]}
    ]
    assert f"{user.arn} needs rds-db:connect for app on this RDS Proxy" in f["fix"]
    command = next(
        line.removeprefix("Attach it with: ")
        for line in f["fix"].splitlines()
        if line.startswith("Attach it with: ")
    )
    assert command == (
        f"rdsgate iam policy --region {aws.region} --account {aws.account_id} "
        f"--proxy-resource-id {rds_proxy.resource_id} --db-user app "
        f"--attach-to-user {user.name}"
    )

    attached = cli(*shlex.split(command)[1:], env=aws.env(aws.admin.credentials))
    assert attached.code == 0, attached.err
    assert f"wrote inline policy rdsgate-rds-db-connect on user {user.name}" in attached.out

    ok = cli(*args, env=aws.env(user.credentials))
    assert ok.code == 0, ok.out
    login = ok.finding("iam-login")
    assert login["status"] == "pass"
    assert login["summary"] == "IAM login to localhost succeeded as app"


def test_user_without_a_secret_on_the_proxy(
    cli: Cli, write_config: WriteConfig, aws: AwsLab, rds_proxy: RdsProxyStandIn, rds_iam: object
) -> None:
    identity = rds_iam.user("postgres")  # type: ignore[attr-defined]
    result = cli(
        "diagnose",
        "--config",
        _config(write_config, aws, rds_proxy),
        "--check",
        "iam-login",
        "--db-user",
        "postgres",
        "--json",
        env=identity.env,
    )
    assert result.code == 1
    f = result.finding("iam-login")
    assert f["reason"] == "NoSecretForUser"
    assert "This RDS proxy has no credentials for the role postgres." in f["summary"]
    assert "aws secretsmanager create-secret" in f["fix"]


def test_login_skipped_without_a_user(
    cli: Cli, write_config: WriteConfig, aws: AwsLab, rds_proxy: RdsProxyStandIn
) -> None:
    result = cli(
        "diagnose",
        "--config",
        _config(write_config, aws, rds_proxy),
        "--check",
        "iam-login",
        "--json",
        env=aws.env(aws.admin.credentials),
    )
    assert result.code == 0
    f = result.finding("iam-login")
    assert (f["status"], f["summary"]) == (
        "skip",
        "no database user to try (pass --db-user NAME)",
    )

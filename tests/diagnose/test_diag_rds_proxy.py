"""RDS Proxy configuration and target health, read from moto's RDS API as from AWS's."""

from __future__ import annotations

import os
from typing import Any

from rdsgate.lab.aws import AwsLab
from tests.diagnose.conftest import Cli, Result, WriteConfig

CHECKS = ("--check", "rds-proxy-auth", "--check", "rds-proxy-targets", "--json")


def _name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def _run(cli: Cli, write_config: WriteConfig, aws: AwsLab, endpoint: str, **aws_cfg: str) -> Result:
    config = write_config(f"{endpoint}:5432", aws=aws_cfg)
    return cli("diagnose", "--config", str(config), *CHECKS, env=aws.env(aws.admin.credentials))


def _target_state(aws: AwsLab, proxy_name: str, health: dict[str, str]) -> None:
    """Sets what moto reports as a target's health (moto only knows REGISTERING/AVAILABLE)."""
    from moto.rds.models import rds_backends

    backend = rds_backends[aws.account_id][aws.region]
    target = backend.db_proxies[proxy_name].proxy_target_groups["default"].targets[0]

    class Reported(type(target)):  # type: ignore[misc]
        __module__ = "moto.rds.models"  # moto's model metaclass files classes by module

        @property
        def target_health(self) -> dict[str, Any]:
            return health

    target.__class__ = Reported


def test_iam_required_and_targets_from_none_to_available_to_unavailable(
    cli: Cli, write_config: WriteConfig, aws: AwsLab
) -> None:
    proxy = aws.create_rds_proxy(_name("diag-ok"), {"app": "pw-app"})

    first = _run(cli, write_config, aws, proxy.endpoint)
    auth = first.finding("rds-proxy-auth")
    assert auth["status"] == "pass" and auth["reason"] == "IAMAuthRequired"
    assert auth["summary"] == (
        f"RDS Proxy {proxy.name}: IAM authentication REQUIRED for all 1 secrets, and the "
        "secrets exist"
    )
    targets = first.finding("rds-proxy-targets")
    assert targets["status"] == "fail" and targets["reason"] == "NoTargets"
    assert f"aws rds register-db-proxy-targets --db-proxy-name {proxy.name}" in targets["fix"]
    assert first.code == 1

    aws.client("rds").register_db_proxy_targets(
        DBProxyName=proxy.name, DBInstanceIdentifiers=["orders-db"]
    )
    available = _run(cli, write_config, aws, proxy.endpoint)
    assert available.code == 0
    assert available.finding("rds-proxy-targets")["summary"] == (
        f"RDS Proxy {proxy.name}: 1 of 1 targets available"
    )

    _target_state(aws, proxy.name, {"State": "REGISTERING"})
    registering = _run(cli, write_config, aws, proxy.endpoint).finding("rds-proxy-targets")
    assert registering["status"] == "warn"
    assert registering["summary"] == (
        f"RDS Proxy {proxy.name}: 0 of 1 targets available; orders-db REGISTERING"
    )

    _target_state(
        aws,
        proxy.name,
        {
            "State": "UNAVAILABLE",
            "Reason": "AUTH_FAILURE",
            "Description": "Proxy does not have any registered credentials",
        },
    )
    down = _run(cli, write_config, aws, proxy.endpoint)
    assert down.code == 1
    f = down.finding("rds-proxy-targets")
    assert f["reason"] == "TargetsUnavailable"
    assert f["summary"] == (
        f"no target of RDS Proxy {proxy.name} is available: orders-db UNAVAILABLE "
        "(AUTH_FAILURE: Proxy does not have any registered credentials)"
    )
    assert "secretsmanager:GetSecretValue" in f["fix"]


def test_iam_auth_disabled_is_a_failure_with_the_modify_command(
    cli: Cli, write_config: WriteConfig, aws: AwsLab
) -> None:
    proxy = aws.create_rds_proxy(_name("diag-noiam"), {"app": "pw"}, iam_auth="DISABLED")
    # Found by its resource id, as when the endpoint is a custom one.
    result = _run(
        cli, write_config, aws, "custom.endpoint.example", proxyResourceId=proxy.resource_id
    )
    f = result.finding("rds-proxy-auth")
    assert result.code == 1
    assert f["reason"] == "IAMAuthDisabled"
    assert "has IAM authentication DISABLED for every secret" in f["summary"]
    assert (
        f"aws rds modify-db-proxy --db-proxy-name {proxy.name} --auth "
        "AuthScheme=SECRETS,SecretArn=SECRET_ARN,IAMAuth=REQUIRED"
    ) in f["fix"]


def test_missing_secret(cli: Cli, write_config: WriteConfig, aws: AwsLab) -> None:
    proxy = aws.create_rds_proxy(_name("diag-nosecret"), {"app": "pw"})
    aws.client("secretsmanager").delete_secret(
        SecretId=proxy.secret_arns[0], ForceDeleteWithoutRecovery=True
    )
    f = _run(cli, write_config, aws, proxy.endpoint).finding("rds-proxy-auth")
    assert f["status"] == "fail" and f["reason"] == "SecretMissing"
    assert f"{proxy.secret_arns[0]} does not exist" in f["summary"]


def test_unknown_proxy_is_a_warning_listing_the_proxies(
    cli: Cli, write_config: WriteConfig, aws: AwsLab
) -> None:
    result = _run(cli, write_config, aws, "nosuch.proxy-zzz.eu-west-1.rds.amazonaws.com")
    f = result.finding("rds-proxy-auth")
    assert f["status"] == "warn" and f["reason"] == "ProxyNotFound"
    assert f["summary"].startswith(
        f"no RDS Proxy in {aws.region} has the endpoint nosuch.proxy-zzz.eu-west-1.rds."
    )
    assert result.finding("rds-proxy-targets")["status"] == "skip"

"""Findings → Database conditions, the proxy's start-up checks, and the IAM policy-size check."""

from __future__ import annotations

import json
import os

import pytest

from rdsgate.lab.aws import AwsLab, policy_document
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from rdsgate.proxy.config import load_config
from rdsgate.proxy.diagnose import Finding, Status, conditions, run_startup_checks_async
from tests.diagnose.conftest import Cli, WriteConfig


def test_conditions_take_failures_first_then_warnings_then_passes() -> None:
    findings = [
        Finding("credentials", Status.PASS, "credentials from IRSA", "CredentialsFound"),
        Finding("imds", Status.SKIP, "not used", "NotUsed"),
        Finding("endpoint-dns", Status.PASS, "resolves", "Resolved"),
        Finding("endpoint-tcp", Status.FAIL, "timed out", "ConnectTimeout"),
        Finding("rds-proxy-auth", Status.WARN, "partly disabled", "IAMAuthPartlyDisabled"),
        Finding("iam-login", Status.PASS, "logged in", "LoggedIn"),
    ]
    assert conditions(findings) == [
        {
            "type": "CredentialsAvailable",
            "status": "True",
            "reason": "CredentialsFound",
            "message": "credentials from IRSA",
        },
        {
            "type": "UpstreamReachable",
            "status": "False",
            "reason": "ConnectTimeout",
            "message": "timed out",
        },
        {
            "type": "UpstreamAuthenticated",
            "status": "True",
            "reason": "IAMAuthPartlyDisabled",
            "message": "partly disabled",
        },
        {
            "type": "TargetsHealthy",
            "status": "Unknown",
            "reason": "NotChecked",
            "message": "no check has run yet",
        },
    ]
    assert json.loads(json.dumps([f.to_dict() for f in findings]))[3]["status"] == "fail"


@pytest.mark.timeout(60)
def test_startup_checks_against_the_rds_proxy_stand_in(
    monkeypatch: pytest.MonkeyPatch,
    write_config: WriteConfig,
    aws: AwsLab,
    rds_proxy: RdsProxyStandIn,
    rds_iam: object,
) -> None:
    identity = rds_iam.user("app")  # type: ignore[attr-defined]
    for key, value in identity.env.items():
        monkeypatch.setenv(key, value)
    config = load_config(
        write_config(
            rds_proxy.endpoint,
            region=aws.region,
            tls={"caFile": str(rds_proxy.ca_file)},
            aws={"proxyResourceId": rds_proxy.resource_id},
        )
    )
    import asyncio

    findings = asyncio.run(run_startup_checks_async(config, db_users=["app"], db_name="orders"))

    by_check = {f.check: f for f in findings}
    assert "iam-policy-size" not in by_check
    assert by_check["iam-login"].status is Status.PASS
    assert by_check["upstream-tls"].status is Status.PASS
    got = {c["type"]: (c["status"], c["reason"]) for c in conditions(findings)}
    assert got == {
        "CredentialsAvailable": ("True", "CredentialsFound"),
        "UpstreamReachable": ("True", "Resolved"),
        "UpstreamAuthenticated": ("True", "IAMAuthRequired"),
        # The lab's RDS Proxy in moto has no registered targets.
        "TargetsHealthy": ("False", "NoTargets"),
    }


def test_inline_policies_near_the_user_limit_warn(
    cli: Cli, write_config: WriteConfig, aws: AwsLab
) -> None:
    big = policy_document(
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [f"arn:aws:s3:::b{i:03d}/*" for i in range(85)],
        }
    )
    user = aws.create_user(f"diag-size-{os.urandom(3).hex()}", policies={"big": big})
    result = cli(
        "diagnose",
        "--config",
        str(write_config("orders.proxy-abc.eu-west-1.rds.amazonaws.com:5432")),
        "--check",
        "iam-policy-size",
        "--json",
        env=aws.env(user.credentials),
    )
    f = result.finding("iam-policy-size")
    assert f["status"] == "warn", f
    assert f["reason"] == "PolicyNearLimit"
    used = f["evidence"]["inlineCharacters"]
    assert 0.9 * 2048 <= used <= 2048
    assert f["summary"] == (
        f"user {user.name}: inline policies use {used:,} of 2,048 characters (all inline "
        "policies share this limit); 0 of 10 managed policies attached: at the limit, the "
        "next database may not fit"
    )

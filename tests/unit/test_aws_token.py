"""The proxy signs RDS IAM auth tokens itself; they must be botocore's, byte for byte."""

from __future__ import annotations

import boto3
import pytest

from rdsgate.proxy.aws import TokenMinter
from rdsgate.proxy.config import AWS


def test_a_minted_token_is_what_the_rds_client_generates(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SESSION_TOKEN": "session-token/with+chars=",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    minter = TokenMinter(AWS(region="eu-west-1"))
    # A session of its own: boto3's default one may hold credentials from earlier tests.
    client = boto3.Session().client("rds", region_name="eu-west-1")
    args = ("orders.proxy-abc.eu-west-1.rds.amazonaws.com", 5432, "app_reader")
    # Both sign with the current second; a pair straddling a second boundary differs.
    for _ in range(5):
        mine = minter.mint(*args)
        theirs = client.generate_db_auth_token(
            DBHostname=args[0], Port=args[1], DBUsername=args[2], Region="eu-west-1"
        )
        if mine == theirs:
            break
    assert mine == theirs
    assert mine.startswith(f"{args[0]}:5432/?Action=connect&DBUser=app_reader&")
    assert "X-Amz-Expires=900" in mine
    assert "X-Amz-Security-Token=" in mine

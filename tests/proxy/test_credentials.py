"""The proxy's AWS identity comes from botocore's chain, set up the way a pod would have it."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rdsgate.lab.aws import AwsLab, IamUser
from rdsgate.lab.imds import ImdsServer, ImdsSettings, sts_credentials
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.fixtures.lab import RdsIam
from tests.fixtures.proxy import RunningProxy

Start = Callable[..., RunningProxy]


def login_as_app(proxy: RunningProxy) -> str:
    with psycopg.connect(proxy.dsn()) as conn:
        row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


def wait_finding(proxy: RunningProxy, check: str, timeout: float = 20) -> dict[str, Any]:
    """One finding of the proxy's start-up diagnostics, once they have run."""
    deadline = time.monotonic() + timeout
    while True:
        findings = json.loads(proxy.http("/diagnose")[1])["findings"]
        for finding in findings:
            if finding["check"] == check:
                return dict(finding)
        assert time.monotonic() < deadline, findings
        time.sleep(0.05)


def wait_unready(proxy: RunningProxy, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = proxy.http("/readyz")
        except OSError:
            status, body = 0, ""
        if status == 503 and text in body:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_static_keys_from_the_environment(start_proxy: Start, rds_iam: RdsIam) -> None:
    identity = rds_iam.user("app")
    assert "AWS_ACCESS_KEY_ID" in identity.env
    proxy = start_proxy(env=identity.env)
    assert login_as_app(proxy) == "app"
    assert proxy.metric("rdsgate_iam_token_mints_total") == 1


def caller_and_role(
    aws: AwsLab, rds_proxy: RdsProxyStandIn, external_id: str | None
) -> tuple[IamUser, str]:
    """An IAM user allowed to call sts:AssumeRole, and a role it may assume to connect as app."""
    caller = aws.create_user(
        f"proxy-caller-{os.urandom(4).hex()}",
        policies={
            "assume": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
            }
        },
    )
    role = aws.create_connect_role(
        ["app"],
        trusted=[caller.arn],
        external_id=external_id,
        resource_id=rds_proxy.resource_id,
    )
    return caller, role.arn


def test_irsa_web_identity(
    start_proxy: Start, aws: AwsLab, rds_proxy: RdsProxyStandIn, tmp_path: Path
) -> None:
    _, role_arn = caller_and_role(aws, rds_proxy, None)
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
    env = aws.env() | {
        "AWS_ROLE_ARN": role_arn,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_SESSION_NAME": "rdsgate-orders",
    }
    proxy = start_proxy(env=env)
    assert login_as_app(proxy) == "app"
    credentials = wait_finding(proxy, "credentials")
    assert credentials["status"] == "pass"
    assert credentials["evidence"]["used"] == "irsa"
    assert credentials["evidence"]["method"] == "assume-role-with-web-identity"


def test_assume_role_with_external_id(
    start_proxy: Start, aws: AwsLab, rds_proxy: RdsProxyStandIn
) -> None:
    caller, role_arn = caller_and_role(aws, rds_proxy, "orders-ext-7")
    with aws.iam_enforced():
        proxy = start_proxy(
            {"aws": {"assumeRoleArn": role_arn, "externalId": "orders-ext-7"}},
            env=aws.env(caller.credentials),
        )
        assert login_as_app(proxy) == "app"


def test_assume_role_access_denied_is_reported(
    start_proxy: Start, aws: AwsLab, rds_proxy: RdsProxyStandIn
) -> None:
    caller, role_arn = caller_and_role(aws, rds_proxy, "right-id")
    with aws.iam_enforced():
        proxy = start_proxy(
            {"aws": {"assumeRoleArn": role_arn, "externalId": "wrong-id"}},
            env=aws.env(caller.credentials),
            wait_ready=False,
        )
        wait_unready(proxy, "AccessDenied")
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn())
    text = str(info.value)
    assert "cannot get AWS credentials" in text
    assert "AccessDenied" in text
    assert "sts:AssumeRole" in text


@pytest.fixture
def imds(aws: AwsLab, rds_proxy: RdsProxyStandIn) -> Iterator[ImdsServer]:
    """An instance metadata service on loopback serving a role allowed to connect as app."""
    caller, role_arn = caller_and_role(aws, rds_proxy, None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    settings = ImdsSettings(
        region=aws.region,
        credentials=sts_credentials(
            aws.endpoint_url,
            role_arn,
            "i-0123456789abcdef0",
            region=aws.region,
            access_key_id=caller.credentials.access_key_id,
            secret_access_key=caller.credentials.secret_access_key,
        ),
    )
    server = ImdsServer(sock, settings)
    server.start()
    yield server
    server.stop()


def test_imdsv2_instance_profile(start_proxy: Start, aws: AwsLab, imds: ImdsServer) -> None:
    host, port = imds.server_address[0], imds.server_address[1]
    host = host.decode() if isinstance(host, bytes) else host
    env: dict[str, Any] = aws.env()
    del env["AWS_EC2_METADATA_DISABLED"]
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = f"http://{host}:{port}"
    proxy = start_proxy(env=env)
    assert login_as_app(proxy) == "app"
    tokened = [r for r in imds.requests if r.method == "PUT" and r.path == "/latest/api/token"]
    assert tokened
    assert tokened[0].status == 200
    assert any(r.method == "GET" and r.with_token for r in imds.requests)

"""Endpoint checks: DNS, and TCP connect with timing, from a pod whose network drops packets.

The pod namespace resolves the endpoint name through its own /etc/hosts (as a VPC's
private DNS would) to an address that the node silently drops, which is what a missing
security-group rule looks like from the client: the SYN gets no answer at all.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from rdsgate.lab.imds import UNROUTABLE_ADDRESS, ImdsLab
from tests.diagnose.conftest import Cli, WriteConfig
from tests.fixtures.netns import rdsgate_in

ENDPOINT = "orders.proxy-abc123def.eu-west-1.rds.amazonaws.com"
OTHER_REGION = "orders.proxy-abc123def.us-east-1.rds.amazonaws.com"
ENDPOINT_CHECKS = ["--check", "endpoint-dns", "--check", "endpoint-tcp", "--json"]


@pytest.mark.timeout(60)
def test_dns_failure_timeout_and_region_mismatch_from_a_pod(
    netns_lab: object, write_config: WriteConfig
) -> None:
    lab: ImdsLab = netns_lab(  # type: ignore[operator]
        hosts={ENDPOINT: UNROUTABLE_ADDRESS, OTHER_REGION: UNROUTABLE_ADDRESS}
    )
    env = {"AWS_EC2_METADATA_DISABLED": "true"}

    timeout = rdsgate_in(
        lab,
        [
            "diagnose",
            "--config",
            str(write_config(f"{ENDPOINT}:5432", connect_timeout="1s")),
            *ENDPOINT_CHECKS,
        ],
        env,
    )
    assert timeout.returncode == 1, timeout.stderr
    dns = timeout.finding("endpoint-dns")
    assert dns["status"] == "pass"
    assert dns["evidence"]["addresses"] == [UNROUTABLE_ADDRESS]
    tcp = timeout.finding("endpoint-tcp")
    assert tcp["status"] == "fail"
    assert tcp["reason"] == "ConnectTimeout"
    assert tcp["summary"] == (
        f"TCP connect to {ENDPOINT}:5432 timed out after 1s: packets are dropped on the way "
        "(security group or routing)"
    )
    assert "Allow inbound TCP 5432 on the RDS Proxy's security group" in tcp["fix"]
    assert f"nc -zv {ENDPOINT} 5432" in tcp["fix"]

    unknown = rdsgate_in(
        lab,
        [
            "diagnose",
            "--config",
            str(write_config("nosuch.proxy-x.eu-west-1.rds.amazonaws.com:5432")),
            *ENDPOINT_CHECKS,
        ],
        env,
    )
    assert unknown.returncode == 1
    dns = unknown.finding("endpoint-dns")
    assert dns["status"] == "fail" and dns["reason"] == "DNSFailure"
    assert dns["summary"].startswith("nosuch.proxy-x.eu-west-1.rds.amazonaws.com does not resolve")
    assert "resolves only inside its VPC" in dns["fix"]
    assert unknown.finding("endpoint-tcp")["status"] == "skip"

    mismatch = rdsgate_in(
        lab,
        [
            "diagnose",
            "--config",
            str(write_config(f"{OTHER_REGION}:5432")),
            "--check",
            "endpoint-dns",
            "--json",
        ],
        env,
    )
    assert mismatch.returncode == 0
    dns = mismatch.finding("endpoint-dns")
    assert dns["status"] == "warn" and dns["reason"] == "RegionMismatch"
    assert "is in us-east-1 but aws.region is eu-west-1" in dns["summary"]
    assert dns["fix"] == "Set aws.region (spec.aws.region) to us-east-1."


def test_refused_connection_names_the_port(cli: Cli, write_config: WriteConfig) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("diagnose", "--config", str(write_config(f"127.0.0.1:{port}")), *ENDPOINT_CHECKS)
    assert result.code == 1
    tcp = result.finding("endpoint-tcp")
    assert tcp["reason"] == "ConnectionRefused"
    assert tcp["summary"] == (
        f"127.0.0.1:{port} refused the connection: nothing listens on port {port} there"
    )


def test_reachable_endpoint_passes_with_timing(cli: Cli, write_config: WriteConfig) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = cli(
            "diagnose", "--config", str(write_config(f"127.0.0.1:{port}")), *ENDPOINT_CHECKS
        )
    assert result.code == 0
    tcp = result.finding("endpoint-tcp")
    assert tcp["status"] == "pass"
    assert tcp["summary"].startswith(f"connected to 127.0.0.1:{port} (127.0.0.1) in ")
    assert tcp["evidence"]["attempts"][0]["elapsedMs"] >= 0
    assert json.loads(result.out)["failed"] is False


def test_config_errors_exit_2(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: {endpoint: nope}\n")
    result = cli("diagnose", "--config", str(bad))
    assert result.code == 2
    assert "upstream.endpoint" in result.err

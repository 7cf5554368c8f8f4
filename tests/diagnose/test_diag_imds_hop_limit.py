"""The IMDSv2 hop limit, as a pod on EKS meets it, in network namespaces (TESTING.md).

An IMDS in its own namespace answers token PUTs with the IP TTL set to the hop limit; a
node namespace forwards; `rdsgate diagnose` runs as a real process in the pod namespace
behind it, with moto (this process's state) for STS and EC2 on the pod's loopback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rdsgate.lab.aws import AwsLab, policy_document
from rdsgate.lab.imds import ImdsLab, ImdsSettings, sts_credentials
from rdsgate.proxy import imds
from tests.fixtures.netns import moto_in, rdsgate_in

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, region: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        json.dumps(
            {
                "database": {"name": "orders", "namespace": "shop"},
                "tls": {"certFile": "/etc/rdsgate/tls/tls.crt", "keyFile": "/etc/rdsgate/tls/k"},
                "upstream": {"endpoint": "orders.proxy-abc123.eu-west-1.rds.amazonaws.com:5432"},
                "aws": {"region": region},
                "access": {"file": "/etc/rdsgate/access/access.yaml"},
            }
        )
    )
    return path


def _node_role(aws: AwsLab) -> tuple[str, str]:
    name = f"eks-node-role-{os.urandom(3).hex()}"
    trust = policy_document(
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    )
    return name, aws.create_role(name, trust).arn


def _lab(
    netns_lab: object, aws: AwsLab, hop_limit: int, http_tokens: str, instance_id: str
) -> tuple[ImdsLab, str]:
    role_name, role_arn = _node_role(aws)
    settings = ImdsSettings(
        hop_limit=hop_limit,
        http_tokens=http_tokens,  # type: ignore[arg-type]
        instance_id=instance_id,
        role_name=role_name,
        region=aws.region,
        account_id=aws.account_id,
        credentials=sts_credentials(aws.endpoint_url, role_arn, instance_id, region=aws.region),
    )
    lab: ImdsLab = netns_lab(settings)  # type: ignore[operator]
    return lab, role_name


CHECKS = ["--check", "credentials", "--check", "imds"]


def test_hop_limit_1_is_reported_with_the_fix_and_hop_limit_2_gives_imdsv2_credentials(
    netns_lab: object, aws: AwsLab, tmp_path: Path
) -> None:
    lab, role_name = _lab(netns_lab, aws, 1, "required", "i-0abc1234def567890")
    env = {"AWS_ENDPOINT_URL": moto_in(lab, lab.pod_ns), "AWS_DEFAULT_REGION": aws.region}
    config = str(_config(tmp_path, aws.region))

    # The lab is the real symptom: one hop away (the node) the PUT answers, from the pod not.
    assert lab.run_in(lab.node_ns, lambda: imds.probe(env={})).verdict == "imdsv2"

    run = rdsgate_in(lab, ["diagnose", "--config", config, *CHECKS, "--json"], env)
    assert run.returncode == 1, run.stderr
    hop = run.finding("imds")
    assert hop["status"] == "fail"
    assert hop["reason"] == "IMDSHopLimit"
    assert "token PUT to http://169.254.169.254 timed out after 1.0s" in hop["summary"]
    assert "token-less GET answered 401" in hop["summary"]
    assert "PUT response hop limit is 1" in hop["summary"]
    assert hop["evidence"]["tcpConnect"]["ok"] is True
    assert hop["evidence"]["tokenPut"]["timedOut"] is True
    fix = hop["fix"]
    assert "aws ec2 modify-instance-metadata-options --instance-id <node-instance-id>" in fix
    assert "--http-put-response-hop-limit 2 --http-tokens required" in fix
    assert "HttpPutResponseHopLimit: 2" in fix
    assert "EC2NodeClass" in fix and "metadataOptions: {httpPutResponseHopLimit: 2" in fix
    assert "IRSA" in fix and "EKS Pod Identity" in fix
    creds = run.finding("credentials")
    assert creds["status"] == "fail" and creds["reason"] == "NoCredentials"
    assert "no AWS credentials found; tried environment variables" in creds["summary"]
    assert (
        "EC2 instance profile (IMDS) (instance profile at http://169.254.169.254)"
        in (creds["summary"])
    )
    # The PUT did reach IMDS: only its answer was lost on the way back.
    assert lab.server is not None
    assert any(r.method == "PUT" and r.status == 200 for r in lab.server.requests)

    # What a user reads in the terminal.
    table = rdsgate_in(lab, ["diagnose", "--config", config, *CHECKS], env)
    assert table.returncode == 1
    assert "Instance metadata (IMDSv2) │ FAIL" in table.stdout
    assert "Fix for Instance metadata (IMDSv2) (IMDSHopLimit):" in table.stdout
    assert "--http-put-response-hop-limit 2 --http-tokens required" in table.stdout

    # The fix: aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2.
    lab.set_hop_limit(2)
    fixed = rdsgate_in(lab, ["diagnose", "--config", config, *CHECKS, "--json"], env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    creds = fixed.finding("credentials")
    assert creds["status"] == "pass"
    assert creds["evidence"]["used"] == "imds"
    assert creds["evidence"]["method"] == "iam-role"
    assert creds["evidence"]["arn"] == (
        f"arn:aws:sts::{aws.account_id}:assumed-role/{role_name}/i-0abc1234def567890"
    )
    assert fixed.finding("imds")["status"] == "pass"
    assert fixed.finding("imds")["reason"] == "IMDSv2"
    assert f"instance profile role {role_name}" in fixed.finding("imds")["summary"]


def test_imdsv1_fallback_is_detected_and_confirmed_by_the_ec2_api(
    netns_lab: object, aws: AwsLab, tmp_path: Path
) -> None:
    ec2 = aws.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        MetadataOptions={"HttpPutResponseHopLimit": 1, "HttpTokens": "optional"},
    )["Instances"][0]["InstanceId"]
    lab, role_name = _lab(netns_lab, aws, 1, "optional", instance)
    env = {"AWS_ENDPOINT_URL": moto_in(lab, lab.pod_ns), "AWS_DEFAULT_REGION": aws.region}

    run = rdsgate_in(
        lab, ["diagnose", "--config", str(_config(tmp_path, aws.region)), *CHECKS, "--json"], env
    )

    assert run.returncode == 0, run.stdout + run.stderr
    creds = run.finding("credentials")
    assert creds["status"] == "pass" and creds["evidence"]["used"] == "imds"
    found = run.finding("imds")
    assert found["status"] == "warn"
    assert found["reason"] == "IMDSv1Fallback"
    assert "IMDSv1 fallback in use" in found["summary"]
    assert f"credentials of {role_name} were fetched without a session token" in found["summary"]
    assert "ec2:DescribeInstances confirms HttpPutResponseHopLimit=1" in found["summary"]
    assert found["evidence"]["ec2MetadataOptions"]["HttpTokens"] == "optional"
    assert f"--instance-id {instance}" in found["fix"]

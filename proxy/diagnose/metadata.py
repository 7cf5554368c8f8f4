"""The imds check: whether the instance metadata service serves this pod (the IMDSv2 hop limit).

`rdsgate.proxy.imds` does the probing; this module turns its verdict into a finding.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws_errors import error_text
from .credential_chain import SOURCE_NAMES
from .findings import Finding, Status
from .run import Run

_HOP_LIMIT_FIX = """\
The token PUT to the instance metadata service gets no answer in this pod: the node's
PUT response hop limit is 1, so the answer dies one hop short of the pod.
Raise it to 2 on the node:
  aws ec2 modify-instance-metadata-options --instance-id {instance} \\
      --http-put-response-hop-limit 2 --http-tokens required
and for new nodes, in the launch template (or the node group's):
  MetadataOptions: {{HttpPutResponseHopLimit: 2, HttpTokens: required}}
or, with Karpenter, in the EC2NodeClass:
  spec:
    metadataOptions: {{httpPutResponseHopLimit: 2, httpTokens: required}}
Better: give the proxy its own IAM role with IRSA (spec.proxy.serviceAccount.roleArn;
`rdsgate iam trust-policy` prints its trust policy) or EKS Pod Identity, so it does not
borrow the node's role at all."""


def _instance_metadata_options(run: Run, instance_id: str) -> dict[str, Any] | str:
    """MetadataOptions of the node from the EC2 API, when this identity may read them."""
    session = run.session if run.has_credentials else run.base.session
    try:
        out = run.client(session, "ec2").describe_instances(InstanceIds=[instance_id])
    except (BotoCoreError, ClientError) as exc:
        return f"ec2:DescribeInstances failed: {error_text(exc)}"
    for reservation in out.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            return dict(instance.get("MetadataOptions", {}))
    return f"ec2:DescribeInstances does not know {instance_id}"


def check_imds(run: Run) -> Finding:
    base = run.base
    if base.method is not None and base.source != "imds":
        return Finding(
            "imds",
            Status.SKIP,
            f"credentials come from {SOURCE_NAMES.get(base.source or '', base.method)}; "
            "the instance metadata service is not used",
            "NotUsed",
        )
    probe = run.imds_probe
    evidence = probe.to_evidence()
    instance = run.options.instance_id or probe.instance_id
    confirm: dict[str, Any] | str | None = None
    if instance and base.method is not None:
        confirm = _instance_metadata_options(run, instance)
        evidence["ec2MetadataOptions"] = confirm
    verdict = probe.verdict
    put_ms = probe.token_put.elapsed_ms if probe.token_put else 0
    if verdict == "disabled":
        return Finding(
            "imds",
            Status.SKIP,
            "IMDS is disabled here (AWS_EC2_METADATA_DISABLED=true)",
            "Disabled",
            evidence,
        )
    if verdict == "unreachable":
        tcp = probe.tcp
        return Finding(
            "imds",
            Status.SKIP if base.method is None else Status.WARN,
            f"no instance metadata service at {probe.endpoint} "
            f"({tcp.error if tcp else 'no answer'}): not on EC2, or blocked by a network policy",
            "Unreachable",
            evidence,
            "Outside EC2 there is no instance profile: use IRSA or EKS Pod Identity. On EC2, "
            "check NetworkPolicies that block 169.254.169.254 and that the instance's "
            "metadata endpoint is enabled (--http-endpoint enabled).",
        )
    if verdict == "hop-limit":
        hop_from_api = confirm.get("HttpPutResponseHopLimit") if isinstance(confirm, dict) else None
        tokenless = probe.tokenless_get
        answered = (
            f"token-less GET answered {tokenless.status}"
            if tokenless is not None and tokenless.status is not None
            else "TCP connect answered"
        )
        fix = _HOP_LIMIT_FIX.format(instance=instance or "<node-instance-id>")
        if not instance:
            fix += (
                "\n(The instance id is the last part of the node's spec.providerID: "
                "kubectl get node NODE -o jsonpath='{.spec.providerID}'.)"
            )
        fix += (
            "\nConfirm with: aws ec2 describe-instances --instance-ids "
            f"{instance or '<node-instance-id>'} "
            "--query 'Reservations[].Instances[].MetadataOptions'"
        )
        confirmed = (
            f"; ec2:DescribeInstances confirms HttpPutResponseHopLimit={hop_from_api}"
            if hop_from_api is not None
            else ""
        )
        if base.source == "imds":
            return Finding(
                "imds",
                Status.WARN,
                f"IMDSv1 fallback in use: the token PUT timed out after {put_ms / 1000:.1f}s "
                f"while the {answered}, so the PUT response hop limit is 1 and credentials "
                f"of {probe.role_name or 'the node role'} were fetched without a session "
                f"token{confirmed}",
                "IMDSv1Fallback",
                evidence,
                fix,
            )
        return Finding(
            "imds",
            Status.FAIL,
            f"IMDSv2 hop limit: the token PUT to {probe.endpoint} timed out after "
            f"{put_ms / 1000:.1f}s while the {answered}, so the PUT response hop limit is 1 "
            f"(the answer cannot reach a pod){confirmed}",
            "IMDSHopLimit",
            evidence,
            fix,
        )
    if verdict == "imdsv2":
        note = ""
        if probe.imdsv1_enabled:
            note = "; IMDSv1 is also enabled on this node (HttpTokens optional)"
        if probe.role_name is None:
            return Finding(
                "imds",
                Status.FAIL if base.method is None else Status.WARN,
                f"IMDSv2 answers (token in {put_ms:.0f} ms) but the instance has no IAM role",
                "NoInstanceProfile",
                evidence,
                "Attach an instance profile to the node, or better give the proxy its own "
                "role with IRSA or EKS Pod Identity.",
            )
        return Finding(
            "imds",
            Status.PASS,
            f"IMDSv2 answers (token in {put_ms:.0f} ms); instance profile role "
            f"{probe.role_name}{note}",
            "IMDSv2",
            evidence,
            "Require tokens: aws ec2 modify-instance-metadata-options --instance-id "
            f"{instance or '<node-instance-id>'} --http-tokens required"
            if probe.imdsv1_enabled
            else None,
        )
    return Finding(
        "imds",
        Status.FAIL if base.method is None else Status.WARN,
        f"the instance metadata service refused a token ({verdict}); see the evidence",
        "IMDSTokenRefused",
        evidence,
        "Check the instance's metadata options (HttpEndpoint enabled, HttpTokens) with aws "
        "ec2 describe-instances, and any proxy (HTTP_PROXY) between the pod and IMDS: the "
        "token PUT must not carry X-Forwarded-For.",
    )

"""The credentials check: which source of the chain gave credentials, and whether STS takes them."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from .aws_errors import error_text
from .credential_chain import SOURCE_NAMES
from .findings import Finding, Status
from .run import Run


def check_credentials(run: Run) -> Finding:
    base = run.base
    evidence: dict[str, Any] = {"sources": run.sources}
    tried = ", ".join(
        f"{SOURCE_NAMES[s['source']]} ({s['detail']})" for s in run.sources if s["source"]
    )
    if base.error is not None:
        evidence["error"] = base.error
        present = [s["source"] for s in run.sources if s["present"]]
        fix = "Fix the credential source that failed"
        if "irsa" in present:
            fix = (
                "IRSA is configured but the web identity exchange failed: check that the "
                "role's trust policy names this cluster's OIDC provider and this "
                "ServiceAccount (`rdsgate iam trust-policy --oidc-issuer URL "
                "--service-account NS/NAME` prints it) and that the token file is mounted"
            )
        return Finding(
            "credentials",
            Status.FAIL,
            f"loading AWS credentials failed: {base.error}",
            "CredentialsError",
            evidence,
            fix,
        )
    if base.method is None:
        return Finding(
            "credentials",
            Status.FAIL,
            f"no AWS credentials found; tried {tried}",
            "NoCredentials",
            evidence,
            "Give the proxy an AWS identity: IRSA (annotate its ServiceAccount with "
            "eks.amazonaws.com/role-arn, or set spec.proxy.serviceAccount.roleArn) or an EKS "
            "Pod Identity association; on EC2 nodes without either, the node's instance "
            "profile through IMDSv2 (see the imds check for why it did not answer).",
        )
    evidence["used"] = base.source
    evidence["method"] = base.method
    used = SOURCE_NAMES.get(base.source or "", base.method)
    ident = run.identity
    if isinstance(ident, BaseException):
        evidence["error"] = error_text(ident)
        if isinstance(ident, EndpointConnectionError | BotoCoreError) and not isinstance(
            ident, ClientError
        ):
            return Finding(
                "credentials",
                Status.WARN,
                f"credentials came from {used}, but STS could not be reached to confirm "
                f"them: {error_text(ident)}",
                "STSUnreachable",
                evidence,
                "Allow HTTPS to sts.REGION.amazonaws.com (or add an STS interface VPC "
                "endpoint in a VPC without internet access).",
            )
        return Finding(
            "credentials",
            Status.FAIL,
            f"credentials came from {used}, but STS rejected them: {error_text(ident)}",
            "CredentialsRejected",
            evidence,
            "The credentials are invalid or expired: rotate the access key, check the "
            "clock (SigV4 allows 5 minutes of skew), or use IRSA / Pod Identity instead of "
            "static keys.",
        )
    evidence.update(ident)
    return Finding(
        "credentials",
        Status.PASS,
        f"credentials from {used} ({base.method}); caller {ident['arn']}",
        "CredentialsFound",
        evidence,
    )

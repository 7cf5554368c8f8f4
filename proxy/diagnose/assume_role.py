"""The assume-role check: sts:AssumeRole of `aws.assumeRoleArn`, and the policies a denial needs."""

from __future__ import annotations

from typing import Any

from .aws_errors import error_code, error_text
from .findings import Finding, Status
from .policies import assume_role_permission_policy, assume_role_trust_policy, indent, pretty
from .run import Run


def check_assume_role(run: Run) -> Finding:
    role = run.aws.assume_role_arn
    if not role:
        return Finding("assume-role", Status.SKIP, "no assumeRoleArn configured", "NotConfigured")
    if run.base.method is None:
        return Finding(
            "assume-role",
            Status.SKIP,
            f"no credentials to assume {role} with (see the credentials check)",
            "NoSourceCredentials",
        )
    result = run.assumed
    evidence: dict[str, Any] = {"roleArn": role, "externalId": bool(run.aws.external_id)}
    if isinstance(result, dict):
        evidence.update(result)
        return Finding(
            "assume-role",
            Status.PASS,
            f"assumed {role} as {result['assumedRoleArn']}",
            "RoleAssumed",
            evidence,
        )
    assert result is not None
    evidence["error"] = error_text(result)
    ident = run.identity
    caller = ident["arn"] if isinstance(ident, dict) else "<this proxy's role ARN>"
    principal = run.role_arn_with_path(caller) if isinstance(ident, dict) else caller
    evidence["caller"] = caller
    trust = assume_role_trust_policy(principal, run.aws.external_id)
    permission = assume_role_permission_policy(role)
    evidence["trustPolicy"] = trust
    evidence["permissionPolicy"] = permission
    if error_code(result) not in ("AccessDenied", "AccessDeniedException"):
        return Finding(
            "assume-role",
            Status.FAIL,
            f"sts:AssumeRole of {role} failed: {error_text(result)}",
            "AssumeRoleFailed",
            evidence,
        )
    role_name = role.rsplit("/", 1)[-1]
    test = f"aws sts assume-role --role-arn {role} --role-session-name test-trust-relationship" + (
        f" --external-id {run.aws.external_id}" if run.aws.external_id else ""
    )
    fix = (
        f"1. The trust policy of {role_name} must let {principal} assume it"
        + (" with this external id" if run.aws.external_id else "")
        + ":\n"
        + indent(pretty(trust))
        + f"\n   aws iam update-assume-role-policy --role-name {role_name} "
        "--policy-document file://trust.json\n"
        + f"2. {principal} needs permission to call sts:AssumeRole on the role (required "
        "across accounts; within one account it may be omitted when the trust policy names "
        "the caller's ARN):\n"
        + indent(pretty(permission))
        + "\n3. If the caller has a permissions boundary, it must allow sts:AssumeRole too.\n"
        + f"Test with: {test}"
    )
    return Finding(
        "assume-role",
        Status.FAIL,
        f"sts:AssumeRole AccessDenied: {caller} may not assume {role}",
        "AssumeRoleDenied",
        evidence,
        fix,
    )

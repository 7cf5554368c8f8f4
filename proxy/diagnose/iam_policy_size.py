"""The iam-policy-size check: how much of its IAM policy limits the proxy's identity uses."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws_errors import error_text
from .findings import Finding, Status
from .policies import INLINE_LIMITS, MANAGED_PER_PRINCIPAL, policy_size
from .run import Run


def _principal_policies(run: Run, principal: str) -> dict[str, Any] | str:
    """Inline sizes and managed counts of an IAM role or user, with the account's quotas."""
    m = re.match(r"^arn:[\w-]+:iam::\d{12}:(role|user)/(?:.*/)?([^/]+)$", principal)
    if not m:
        return f"{principal} is not an IAM role or user"
    kind, name = m.group(1), m.group(2)
    iam = run.client(run.session, "iam")
    try:
        if kind == "role":
            names = iam.list_role_policies(RoleName=name)["PolicyNames"]
            docs = [
                iam.get_role_policy(RoleName=name, PolicyName=n)["PolicyDocument"] for n in names
            ]
            attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        else:
            names = iam.list_user_policies(UserName=name)["PolicyNames"]
            docs = [
                iam.get_user_policy(UserName=name, PolicyName=n)["PolicyDocument"] for n in names
            ]
            attached = iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]
    except (BotoCoreError, ClientError) as exc:
        return f"cannot read the policies of {principal}: {error_text(exc)}"
    quotas: dict[str, int] = {}
    with contextlib.suppress(BotoCoreError, ClientError):
        summary = iam.get_account_summary()["SummaryMap"]
        quotas = {k: int(v) for k, v in summary.items() if "Quota" in k}
    return {
        "kind": kind,
        "name": name,
        "inline": {n: policy_size(d) for n, d in zip(names, docs, strict=True)},
        "managed": len(attached),
        "quotas": quotas,
    }


def check_iam_policy_size(run: Run) -> Finding:
    ident = run.final_identity
    if ident is None:
        return Finding(
            "iam-policy-size",
            Status.SKIP,
            "no AWS identity to inspect (see the credentials check)",
            "NoCredentials",
        )
    principal = run.role_arn_with_path(ident["arn"])
    info = _principal_policies(run, principal)
    if isinstance(info, str):
        return Finding("iam-policy-size", Status.SKIP, info, "NotChecked")
    kind = str(info["kind"])
    quotas: dict[str, int] = info["quotas"]
    inline_limit = quotas.get(
        "RolePolicySizeQuota" if kind == "role" else "UserPolicySizeQuota", INLINE_LIMITS[kind]
    )
    managed_limit = quotas.get(
        "AttachedPoliciesPerRoleQuota" if kind == "role" else "AttachedPoliciesPerUserQuota",
        MANAGED_PER_PRINCIPAL,
    )
    used = sum(info["inline"].values())
    evidence = {
        "principal": principal,
        "inlinePolicies": info["inline"],
        "inlineCharacters": used,
        "inlineLimit": inline_limit,
        "managedPolicies": info["managed"],
        "managedLimit": managed_limit,
    }
    summary = (
        f"{kind} {info['name']}: inline policies use {used:,} of {inline_limit:,} characters "
        f"(all inline policies share this limit); {info['managed']} of {managed_limit} "
        "managed policies attached"
    )
    if used >= 0.9 * inline_limit or info["managed"] >= managed_limit:
        return Finding(
            "iam-policy-size",
            Status.WARN,
            summary + ": at the limit, the next database may not fit",
            "PolicyNearLimit",
            evidence,
            "Let `rdsgate iam policy … --attach-to-"
            + kind
            + f" {info['name']}` place rds-db:connect in managed policies (6,144 characters "
            "each), use --wildcard, or split databases across roles with assumeRoleArn. IAM "
            "users have a 2,048-character inline limit: prefer roles.",
        )
    return Finding("iam-policy-size", Status.PASS, summary, "WithinLimits", evidence)

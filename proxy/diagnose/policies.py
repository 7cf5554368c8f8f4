"""The IAM policy documents that the fixes print, and their size as IAM counts it.

They live in the data plane because it cannot import the operator; `rdsgate.operator.iam`
builds its sizing and attaching on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

POLICY_VERSION = "2012-10-17"


def partition(region: str) -> str:
    """The ARN partition of a region: aws, aws-cn or aws-us-gov."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def dbuser_arn(region: str, account_id: str, proxy_resource_id: str, user: str) -> str:
    """The `rds-db:connect` resource for one database user of one RDS Proxy (user may glob)."""
    return f"arn:{partition(region)}:rds-db:{region}:{account_id}:dbuser:{proxy_resource_id}/{user}"


def policy(*statements: Mapping[str, Any]) -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": [dict(s) for s in statements]}


def connect_statement(resources: Sequence[str], sid: str = "RdsgateConnect") -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": "rds-db:connect",
        "Resource": list(resources),
    }


def connect_policy(
    region: str, account_id: str, proxy_resource_id: str, users: Iterable[str]
) -> dict[str, Any]:
    """The least-privilege policy for IAM login to one RDS Proxy as these database users."""
    arns = [dbuser_arn(region, account_id, proxy_resource_id, u) for u in sorted(set(users))]
    return policy(connect_statement(arns))


def assume_role_trust_policy(principal_arn: str, external_id: str | None = None) -> dict[str, Any]:
    """The trust policy a target role needs so that `principal_arn` may assume it."""
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal_arn},
        "Action": "sts:AssumeRole",
    }
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return policy(statement)


def assume_role_permission_policy(role_arn: str) -> dict[str, Any]:
    """The identity policy the caller needs to call sts:AssumeRole on `role_arn`."""
    return policy({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn})


def principal_for_trust(caller_arn: str) -> str:
    """The ARN a trust policy names for a caller: an assumed-role session → its role.

    The session ARN does not carry the role's path; `Run` looks it up in IAM when it can.
    """
    m = re.match(r"^arn:([\w-]+):sts::(\d{12}):assumed-role/([^/]+)/.+$", caller_arn)
    if m:
        return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}"
    return caller_arn


def pretty(doc: Mapping[str, Any]) -> str:
    """A policy document as the fixes print it."""
    return json.dumps(doc, indent=2)


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def policy_size(document: Mapping[str, Any] | str) -> int:
    """A policy's size as IAM counts it against its limits: characters, whitespace excluded."""
    text = document if isinstance(document, str) else json.dumps(document)
    return sum(1 for ch in text if not ch.isspace())


#: IAM's limits, in characters as `policy_size` counts them: all inline policies of a user or
#: role together, and one managed policy; then managed policies a principal takes by default.
INLINE_LIMITS = {"user": 2048, "role": 10240}
MANAGED_POLICY_LIMIT = 6144
MANAGED_PER_PRINCIPAL = 10

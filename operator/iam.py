"""IAM for rdsgate: least-privilege `rds-db:connect` policies, sized and placed as IAM counts them.

IAM's limits, in characters with whitespace not counted:
- all inline policies of one principal share one aggregate limit, 2,048 for a user and
  10,240 for a role, so splitting into several inline policies does not help;
- a managed policy holds at most 6,144, and a principal takes 10 managed policies by
  default (20 with a quota increase).

So a document goes inline when it fits what is left of the principal's inline budget;
otherwise into managed policies of at most 6,144 each, as many as the principal can still
take; beyond that rdsgate refuses and offers wildcards (`dbuser:prx-…/*`, or per-prefix
globs such as `dbuser:prx-…/app_*`).

The first half of this module is pure (documents, sizes, plans); `attach` and
`apply_trust_policy` below it are the only code that calls AWS. The document builders
shared with diagnostics come from `rdsgate.proxy.diagnose`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from rdsgate.operator.inventory import DISCOVERY_ACTIONS
from rdsgate.proxy.diagnose.policies import (
    INLINE_LIMITS,
    MANAGED_PER_PRINCIPAL,
    MANAGED_POLICY_LIMIT,
    connect_statement,
    dbuser_arn,
    partition,
    policy,
    policy_size,
)

MANAGED_PER_PRINCIPAL_MAX = 20
DEFAULT_POLICY_NAME = "rdsgate-rds-db-connect"
POLICY_PATH = "/rdsgate/"
PrincipalKind = Literal["role", "user"]


class IamError(Exception):
    """An IAM request that cannot be carried out, with what to do about it."""


class PolicyTooLarge(IamError):
    """The documents do not fit what the principal can still take."""

    def __init__(self, message: str, suggested_prefixes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.suggested_prefixes = list(suggested_prefixes)


@dataclass(frozen=True)
class ProxyRef:
    """One RDS Proxy as `rds-db:connect` resources name it."""

    region: str
    account_id: str
    proxy_resource_id: str

    def arn(self, user: str) -> str:
        return dbuser_arn(self.region, self.account_id, self.proxy_resource_id, user)


# ---------------------------------------------------------------------------------------
# Resources


def iam_glob(pattern: str) -> tuple[str, str | None]:
    """A Role's databaseUsers pattern as an IAM resource glob, and a note when it widens.

    Exact names and `*` globs carry over as they are (IAM resources glob with `*`); a
    `^…$` regular expression becomes its literal prefix followed by `*`.
    """
    if not (pattern.startswith("^") and pattern.endswith("$")):
        return pattern, None
    body = pattern[1:-1]
    prefix = ""
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and not body[i + 1].isalnum():
            prefix += body[i + 1]
            i += 2
            continue
        if ch in ".[](){}*+?|^$\\":
            break
        prefix += ch
        i += 1
    if i == len(body):
        return prefix, None
    glob = prefix + "*"
    return glob, f"regular expression {pattern} widened to {glob!r} (IAM has no regexes)"


def resources_for(
    ref: ProxyRef,
    users: Iterable[str],
    *,
    wildcard: bool = False,
    wildcard_prefixes: Sequence[str] = (),
) -> list[str]:
    """The `rds-db:connect` resources for these users, with the wildcards asked for."""
    if wildcard:
        return [ref.arn("*")]
    prefixes = sorted(set(wildcard_prefixes))
    out = {ref.arn(p + "*") for p in prefixes}
    for user in users:
        if any(user.startswith(p) for p in prefixes):
            continue
        out.add(ref.arn(user))
    return sorted(out)


def _document(resources: Sequence[str]) -> dict[str, Any]:
    return policy(connect_statement(resources))


def pack(resources: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Documents of at most `limit` characters each (IAM's count), holding all resources."""
    base = policy_size(_document([]))
    docs: list[dict[str, Any]] = []
    current: list[str] = []
    size = base
    for arn in resources:
        cost = policy_size(json.dumps(arn)) + (1 if current else 0)
        if base + policy_size(json.dumps(arn)) > limit:
            raise IamError(f"the resource {arn} alone does not fit a {limit}-character policy")
        if size + cost > limit:
            docs.append(_document(current))
            current, size = [], base
            cost = policy_size(json.dumps(arn))
        current.append(arn)
        size += cost
    if current or not docs:
        docs.append(_document(current))
    return docs


def suggest_prefixes(users: Iterable[str]) -> list[str]:
    """Name prefixes (up to and including the first `_`, `-` or `.`) shared by 2+ users."""
    counts: dict[str, int] = {}
    for user in users:
        m = re.match(r"^([^_.-]+[_.-])", user)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return sorted(p for p, n in counts.items() if n >= 2)


# ---------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class Plan:
    """Where the documents go: one inline policy, or managed policies (or just printed)."""

    placement: Literal["inline", "managed", "print"]
    documents: list[dict[str, Any]]
    kind: PrincipalKind | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        return [policy_size(d) for d in self.documents]


def _fits_text(size: int) -> str:
    places = [
        f"{what} ({limit:,})"
        for what, limit in (
            ("a user's inline policies", INLINE_LIMITS["user"]),
            ("a role's inline policies", INLINE_LIMITS["role"]),
            ("a managed policy", MANAGED_POLICY_LIMIT),
        )
        if size <= limit
    ]
    return "fits " + ", ".join(places) if places else "fits no single IAM policy"


def plan_unattached(resources: Sequence[str]) -> Plan:
    """Documents to print when no principal is named: one if it fits a managed policy."""
    whole = _document(resources)
    size = policy_size(whole)
    if size <= MANAGED_POLICY_LIMIT:
        notes = [
            f"{len(resources)} resource(s), {size:,} characters as IAM counts them "
            f"(whitespace excluded): {_fits_text(size)}."
        ]
        return Plan("print", [whole], None, notes)
    docs = pack(resources, MANAGED_POLICY_LIMIT)
    notes = [
        f"{len(resources)} resources, {size:,} characters as one document: more than a "
        f"managed policy holds ({MANAGED_POLICY_LIMIT:,}) and more than a role's inline "
        f"policies together ({INLINE_LIMITS['role']:,})"
        if size > INLINE_LIMITS["role"]
        else f"{len(resources)} resources, {size:,} characters as one document: more than "
        f"a managed policy holds ({MANAGED_POLICY_LIMIT:,}); it fits a role's inline "
        f"policies ({INLINE_LIMITS['role']:,})",
        f"split into {len(docs)} managed policies of at most {MANAGED_POLICY_LIMIT:,} "
        f"characters; a principal takes {MANAGED_PER_PRINCIPAL} managed policies by default "
        f"({MANAGED_PER_PRINCIPAL_MAX} with a quota increase)",
    ]
    return Plan("print", docs, None, notes)


def plan_for_principal(
    resources: Sequence[str],
    kind: PrincipalKind,
    *,
    inline_used: int = 0,
    managed_attached: int = 0,
    managed_quota: int = MANAGED_PER_PRINCIPAL,
    inline_limit: int | None = None,
    managed_limit: int = MANAGED_POLICY_LIMIT,
    users: Sequence[str] = (),
) -> Plan:
    """Inline when it fits the principal's remaining inline budget, else managed policies.

    `inline_used` is the size of the principal's other inline policies; `managed_attached`
    the number of other managed policies attached to it. Raises PolicyTooLarge, with
    suggested `--wildcard-prefix` values, when even managed policies cannot hold it.
    """
    limit = INLINE_LIMITS[kind] if inline_limit is None else inline_limit
    whole = _document(resources)
    size = policy_size(whole)
    budget = limit - inline_used
    shared = f"all inline policies of a {kind} share {limit:,} characters"
    if size <= budget:
        return Plan(
            "inline",
            [whole],
            kind,
            [
                f"one inline policy of {size:,} characters (whitespace excluded); with the "
                f"{kind}'s other inline policies ({inline_used:,}) that is "
                f"{inline_used + size:,} of {limit:,} ({shared})"
            ],
        )
    docs = pack(resources, managed_limit)
    slots = managed_quota - managed_attached
    why_not_inline = (
        f"{size:,} characters do not fit the {max(budget, 0):,} left of the {kind}'s inline "
        f"budget ({shared}, so splitting into several inline policies does not help)"
    )
    quota_text = (
        f"a {kind} takes {managed_quota} managed policies"
        + (
            f" (default {MANAGED_PER_PRINCIPAL}, up to {MANAGED_PER_PRINCIPAL_MAX} with a "
            "quota increase)"
            if managed_quota < MANAGED_PER_PRINCIPAL_MAX
            else " (the most a quota increase gives)"
        )
        + f" and has {managed_attached} other(s) attached"
    )
    if len(docs) <= slots:
        return Plan(
            "managed",
            docs,
            kind,
            [
                why_not_inline,
                f"{len(docs)} managed policies of at most {managed_limit:,} characters "
                f"({', '.join(f'{s:,}' for s in (policy_size(d) for d in docs))}); " + quota_text,
            ],
        )
    prefixes = suggest_prefixes(users)
    message = (
        f"{len(resources)} resources need {len(docs)} managed policies of at most "
        f"{managed_limit:,} characters, but {quota_text}, leaving {max(slots, 0)}; "
        f"{why_not_inline}. Use --wildcard (one resource, dbuser:PRX/*, any database user)"
        + (
            " or per-prefix globs: " + " ".join(f"--wildcard-prefix {p}" for p in prefixes)
            if prefixes
            else ""
        )
        + ", request a quota increase for managed policies per "
        + kind
        + (", or use a role (10,240 characters inline) instead of a user" if kind == "user" else "")
        + "."
    )
    raise PolicyTooLarge(message, prefixes)


# ---------------------------------------------------------------------------------------
# Discovery (DatabaseDiscovery reads RDS Proxies, their endpoints, targets and tags)

#: The resource types each discovery action names in AWS's Service Authorization
#: Reference for RDS ("Actions defined by Amazon RDS"): all four support resource-level
#: permissions, so statements are scoped to proxies, their endpoints and target groups.
_DISCOVERY_RESOURCES: dict[str, tuple[str, ...]] = {
    "rds:DescribeDBProxies": ("db-proxy",),
    "rds:DescribeDBProxyEndpoints": ("db-proxy", "db-proxy-endpoint"),
    "rds:DescribeDBProxyTargets": ("db-proxy", "target-group"),
    "rds:ListTagsForResource": ("db-proxy",),
}


def discovery_policy(
    assume_role_arn: str | None = None,
    *,
    account_id: str | None = None,
    regions: Sequence[str] = (),
) -> dict[str, Any]:
    """The least-privilege policy for DatabaseDiscovery's reads, for the identity that
    makes them: the role `assume_role_arn` (whose account and partition scope it), or the
    operator's own. Read-only: it can list proxies but not connect to or change them."""
    part, account = "aws", account_id or "*"
    if assume_role_arn:
        fields = assume_role_arn.split(":")
        if len(fields) >= 5:
            part, account = fields[1] or part, account_id or fields[4] or "*"
    if regions:
        part = partition(regions[0])
    where = sorted(set(regions)) or ["*"]
    by_types: dict[tuple[str, ...], list[str]] = {}
    for action in DISCOVERY_ACTIONS:
        by_types.setdefault(_DISCOVERY_RESOURCES.get(action, ("db-proxy",)), []).append(action)
    statements = []
    for types, actions in by_types.items():
        resources = [
            f"arn:{part}:rds:{region}:{account}:{kind}:*" for kind in types for region in where
        ]
        sid = "RdsgateDiscovery" + "".join(a.split(":")[1] for a in actions)
        statements.append(
            {
                "Sid": sid[:128],
                "Effect": "Allow",
                "Action": actions if len(actions) > 1 else actions[0],
                "Resource": resources if len(resources) > 1 else resources[0],
            }
        )
    return policy(*statements)


def discovery_assume_role_policy(assume_role_arn: str) -> dict[str, Any]:
    """What the operator's own identity needs to read through `assume_role_arn`; the role's
    trust policy must also name that identity (and the external id, if one is set)."""
    return policy(
        {
            "Sid": "RdsgateDiscoveryAssumeRole",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": assume_role_arn,
        }
    )


# ---------------------------------------------------------------------------------------
# Trust policies


def oidc_provider(issuer_url: str) -> str:
    """`oidc.eks.REGION.amazonaws.com/id/XYZ` from the cluster's issuer URL."""
    return re.sub(r"^https?://", "", issuer_url.strip()).rstrip("/")


def irsa_trust_policy(
    account_id: str,
    oidc_issuer: str,
    namespace: str,
    service_account: str,
    *,
    region: str = "us-east-1",
    audience: str = "sts.amazonaws.com",
) -> dict[str, Any]:
    """The trust policy letting one ServiceAccount assume a role through IRSA."""
    provider = oidc_provider(oidc_issuer)
    return policy(
        {
            "Effect": "Allow",
            "Principal": {
                "Federated": f"arn:{partition(region)}:iam::{account_id}:oidc-provider/{provider}"
            },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{provider}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                    f"{provider}:aud": audience,
                }
            },
        }
    )


def pod_identity_trust_policy() -> dict[str, Any]:
    """The trust policy of a role used through an EKS Pod Identity association."""
    return policy(
        {
            "Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
        }
    )


# ---------------------------------------------------------------------------------------
# Applying (the only part that calls AWS)


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    name: str


@dataclass
class ApplyResult:
    plan: Plan
    principal: Principal
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _iam_failure(exc: BotoCoreError | ClientError, doing: str) -> IamError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        text = f"{err.get('Code')}: {err.get('Message')}"
        if "AccessDenied" in _code(exc):
            text += (
                " (this needs iam:GetAccountSummary, iam:List*Policies, iam:Get*Policy, "
                "iam:Put*Policy, iam:CreatePolicy, iam:CreatePolicyVersion, "
                "iam:Attach*Policy, iam:Detach*Policy and iam:DeletePolicy)"
            )
        return IamError(f"{doing}: {text}")
    return IamError(f"{doing}: {exc}")


class _Api:
    """The IAM calls for one principal, role or user alike."""

    def __init__(self, iam: Any, principal: Principal) -> None:
        self.iam = iam
        self.p = principal
        self.key = "RoleName" if principal.kind == "role" else "UserName"
        self.noun = "Role" if principal.kind == "role" else "User"

    def call(self, op: str, **kwargs: Any) -> Any:
        name = op.replace("@", self.noun.lower())
        return getattr(self.iam, name)(**{self.key: self.p.name}, **kwargs)

    def arn(self) -> str:
        out = self.call("get_@")
        return str(out[self.noun]["Arn"])

    def inline(self) -> dict[str, int]:
        names: list[str] = []
        for page in self.iam.get_paginator(f"list_{self.p.kind}_policies").paginate(
            **{self.key: self.p.name}
        ):
            names.extend(page["PolicyNames"])
        return {
            n: policy_size(self.call("get_@_policy", PolicyName=n)["PolicyDocument"]) for n in names
        }

    def attached(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for page in self.iam.get_paginator(f"list_attached_{self.p.kind}_policies").paginate(
            **{self.key: self.p.name}
        ):
            out.extend(page["AttachedPolicies"])
        return out


def _quotas(iam: Any, kind: PrincipalKind) -> tuple[int | None, int | None]:
    """(managed policies per principal, inline limit) from GetAccountSummary, if allowed."""
    try:
        summary = iam.get_account_summary()["SummaryMap"]
    except (BotoCoreError, ClientError):
        return None, None
    noun = "Role" if kind == "role" else "User"
    managed = summary.get(f"AttachedPoliciesPer{noun}Quota")
    inline = summary.get(f"{noun}PolicySizeQuota")
    return (int(managed) if managed else None), (int(inline) if inline else None)


def _write_managed(iam: Any, arn: str, name: str, document: Mapping[str, Any]) -> None:
    text = json.dumps(document)
    try:
        iam.get_policy(PolicyArn=arn)
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        iam.create_policy(
            PolicyName=name,
            Path=POLICY_PATH,
            PolicyDocument=text,
            Description="rds-db:connect for rdsgate (generated by rdsgate iam policy)",
        )
        return
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    old = [v for v in versions if not v["IsDefaultVersion"]]
    if len(versions) >= 5 and old:
        oldest = min(old, key=lambda v: v["CreateDate"])
        iam.delete_policy_version(PolicyArn=arn, VersionId=oldest["VersionId"])
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=text, SetAsDefault=True)


def _delete_managed(iam: Any, arn: str) -> None:
    for v in iam.list_policy_versions(PolicyArn=arn)["Versions"]:
        if not v["IsDefaultVersion"]:
            iam.delete_policy_version(PolicyArn=arn, VersionId=v["VersionId"])
    iam.delete_policy(PolicyArn=arn)


def attach(
    iam: Any,
    principal: Principal,
    resources: Sequence[str],
    *,
    policy_name: str = DEFAULT_POLICY_NAME,
    managed_quota: int | None = None,
    users: Sequence[str] = (),
) -> ApplyResult:
    """Writes the policies onto a role or user: inline if it fits, else managed, replacing
    what an earlier run wrote (the inline policy `policy_name`, managed `policy_name-N`).

    The principal's other inline policies and attached managed policies count against
    its limits; quotas come from GetAccountSummary when readable (`managed_quota`
    overrides them, for an approved increase that the summary does not show yet).
    """
    api = _Api(iam, principal)
    doing = f"reading {principal.kind} {principal.name}"
    try:
        arn = api.arn()
        inline = api.inline()
        attached = api.attached()
        quota_managed, quota_inline = _quotas(iam, principal.kind)
    except ClientError as exc:
        if _code(exc) == "NoSuchEntity":
            raise IamError(f"the IAM {principal.kind} {principal.name} does not exist") from exc
        raise _iam_failure(exc, doing) from exc
    except BotoCoreError as exc:
        raise _iam_failure(exc, doing) from exc
    account = arn.split(":")[4]
    part = arn.split(":")[1]
    ours = re.compile(
        rf"^arn:{re.escape(part)}:iam::{account}:policy{re.escape(POLICY_PATH)}"
        rf"{re.escape(policy_name)}-\d+$"
    )
    own_managed = [a["PolicyArn"] for a in attached if ours.match(a["PolicyArn"])]
    plan = plan_for_principal(
        resources,
        principal.kind,
        inline_used=sum(v for k, v in inline.items() if k != policy_name),
        managed_attached=len(attached) - len(own_managed),
        managed_quota=managed_quota or quota_managed or MANAGED_PER_PRINCIPAL,
        inline_limit=quota_inline,
        users=users,
    )
    result = ApplyResult(plan, principal)
    doing = f"writing the policies of {principal.kind} {principal.name}"
    try:
        if plan.placement == "inline":
            api.call(
                "put_@_policy", PolicyName=policy_name, PolicyDocument=json.dumps(plan.documents[0])
            )
            result.written.append(f"inline policy {policy_name}")
            keep: set[str] = set()
        else:
            keep = set()
            for i, doc in enumerate(plan.documents, start=1):
                name = f"{policy_name}-{i}"
                parn = f"arn:{part}:iam::{account}:policy{POLICY_PATH}{name}"
                _write_managed(iam, parn, name, doc)
                if parn not in own_managed:
                    api.call("attach_@_policy", PolicyArn=parn)
                keep.add(parn)
                result.written.append(f"managed policy {parn}")
            if policy_name in inline:
                api.call("delete_@_policy", PolicyName=policy_name)
                result.removed.append(f"inline policy {policy_name}")
        for parn in own_managed:
            if parn not in keep:
                api.call("detach_@_policy", PolicyArn=parn)
                _delete_managed(iam, parn)
                result.removed.append(f"managed policy {parn}")
    except (BotoCoreError, ClientError) as exc:
        raise _iam_failure(exc, doing) from exc
    return result


def apply_trust_policy(
    iam: Any, role_name: str, document: Mapping[str, Any], *, description: str = ""
) -> Literal["created", "updated"]:
    """Creates the role with this trust policy, or replaces the trust policy of an existing one."""
    text = json.dumps(document)
    try:
        try:
            iam.get_role(RoleName=role_name)
        except ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise
            iam.create_role(
                RoleName=role_name,
                AssumeRolePolicyDocument=text,
                Description=description or "rdsgate proxy (IRSA)",
            )
            return "created"
        iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=text)
    except (BotoCoreError, ClientError) as exc:
        raise _iam_failure(exc, f"applying the trust policy of role {role_name}") from exc
    return "updated"


def oidc_provider_registered(iam: Any, account_id: str, issuer: str) -> bool | None:
    """Whether IAM has the cluster's OIDC provider (None when IAM cannot be asked)."""
    want = oidc_provider(issuer)
    try:
        providers = iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]
    except (BotoCoreError, ClientError):
        return None
    return any(str(p["Arn"]).endswith(f":oidc-provider/{want}") for p in providers)

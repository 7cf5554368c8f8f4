"""`rdsgate iam policy` and `rdsgate iam trust-policy`: the IAM that rdsgate's proxy needs.

`policy` prints (or attaches) least-privilege `rds-db:connect` documents for the database
users that Roles allow on a Database, sized as IAM counts them and placed inline or in
managed policies; beyond what a principal can hold it refuses and offers wildcards.
`trust-policy` prints (or applies) the IRSA trust policy of the proxy's role.
Exit codes: 0 done, 1 AWS refused, 2 bad input, 3 the policies do not fit.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from rdsgate.operator.iam import (
    DEFAULT_POLICY_NAME,
    MANAGED_PER_PRINCIPAL_MAX,
    IamError,
    Plan,
    PolicyTooLarge,
    Principal,
    ProxyRef,
    apply_trust_policy,
    attach,
    discovery_assume_role_policy,
    discovery_policy,
    iam_glob,
    irsa_trust_policy,
    oidc_provider_registered,
    plan_unattached,
    pod_identity_trust_policy,
    resources_for,
)

from .errors import CliError

EXIT_TOO_LARGE = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("iam", help="IAM policies and trust policies for rdsgate")
    iam_sub = p.add_subparsers(dest="iam_command", metavar="COMMAND", required=True)

    pol = iam_sub.add_parser(
        "policy",
        help="least-privilege rds-db:connect policies (print, or attach to a role or user)",
        description="Print or attach the rds-db:connect policies for the database users "
        "that rdsgate logs in as. IAM counts policy size in characters without whitespace: "
        "all inline policies of a user share 2,048, of a role 10,240; a managed policy "
        "holds 6,144 and a principal takes 10 (20 with a quota increase).",
    )
    src = pol.add_argument_group("what to allow (a Database, or the proxy named directly)")
    src.add_argument("--database", metavar="NAME", help="a Database resource (via kubeconfig)")
    src.add_argument("--namespace", "-n", help="namespace of --database")
    src.add_argument("--context", help="kubeconfig context for --database")
    src.add_argument("--region", help="the RDS Proxy's region")
    src.add_argument("--account", help="the RDS Proxy's AWS account id")
    src.add_argument("--proxy-resource-id", metavar="PRX", help="the RDS Proxy's prx- id")
    src.add_argument(
        "--db-user", action="append", default=[], metavar="USER", help="a database user"
    )
    wild = pol.add_mutually_exclusive_group()
    wild.add_argument(
        "--wildcard", action="store_true", help="one resource for every user: dbuser:PRX/*"
    )
    wild.add_argument(
        "--wildcard-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="users starting with PREFIX as one resource dbuser:PRX/PREFIX* (repeatable)",
    )
    to = pol.add_mutually_exclusive_group()
    to.add_argument("--attach-to-role", metavar="ROLE", help="write the policies onto a role")
    to.add_argument("--attach-to-user", metavar="USER", help="write the policies onto a user")
    pol.add_argument(
        "--policy-name", default=DEFAULT_POLICY_NAME, help="inline name / managed name prefix"
    )
    pol.add_argument(
        "--managed-policy-quota",
        type=int,
        choices=range(1, MANAGED_PER_PRINCIPAL_MAX + 1),
        metavar="N",
        help="managed policies the principal may take (default: the account's quota, 10)",
    )
    pol.add_argument("--json", action="store_true", help='print {"policies": [...]}')
    disc = pol.add_argument_group("or the policy DatabaseDiscovery needs")
    disc.add_argument(
        "--discovery",
        action="store_true",
        help="the read-only policy for discovering RDS Proxies (DescribeDBProxies, "
        "DescribeDBProxyEndpoints, DescribeDBProxyTargets, ListTagsForResource); "
        "--account and --region narrow it",
    )
    disc.add_argument(
        "--assume-role-arn",
        metavar="ARN",
        help="with --discovery: the role a DatabaseDiscovery assumes (spec.aws.assumeRoleArn); "
        "also prints the sts:AssumeRole policy for the operator's own identity",
    )
    pol.set_defaults(func=run_policy)

    trust = iam_sub.add_parser(
        "trust-policy",
        help="the IRSA trust policy for the proxy's ServiceAccount (print, or apply to a role)",
    )
    trust.add_argument("--oidc-issuer", metavar="URL", help="the cluster's OIDC issuer URL")
    trust.add_argument("--service-account", metavar="NS/NAME", help="the proxy's ServiceAccount")
    trust.add_argument("--account", help="the role's AWS account id (default: the caller's)")
    trust.add_argument("--region", default=None, help="for the ARN partition (cn-, us-gov-)")
    trust.add_argument("--audience", default="sts.amazonaws.com")
    trust.add_argument(
        "--pod-identity",
        action="store_true",
        help="the EKS Pod Identity trust policy instead of IRSA",
    )
    trust.add_argument("--role", help="the IAM role to create or update (with --apply)")
    trust.add_argument("--apply", action="store_true", help="create the role or update its trust")
    trust.add_argument("--json", action="store_true", help="print only the document")
    trust.set_defaults(func=run_trust_policy)


def _boto(service: str, region: str | None) -> Any:
    import boto3

    return boto3.client(service, region_name=region or "us-east-1")  # type: ignore[call-overload]


def _caller_account(region: str | None) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return str(_boto("sts", region).get_caller_identity()["Account"])
    except (BotoCoreError, ClientError) as exc:
        raise CliError(f"pass --account (cannot ask STS for it: {exc})", exit_code=2) from exc


def _from_database(args: argparse.Namespace) -> tuple[ProxyRef, list[str], list[str]]:
    from .diagnose import allowed_user_patterns, load_database

    db, roles = load_database(args.database, args.namespace, args.context)
    aws = (db.get("spec") or {}).get("aws") or {}
    region = args.region or aws.get("region")
    prx = args.proxy_resource_id or aws.get("proxyResourceId")
    if not region or not prx:
        raise CliError(
            f"Database {args.database} has no spec.aws.region / spec.aws.proxyResourceId; "
            "set them or pass --region and --proxy-resource-id",
            exit_code=2,
        )
    account = args.account or aws.get("accountId") or _caller_account(region)
    users: list[str] = []
    notes: list[str] = []
    for pattern in allowed_user_patterns(db, roles):
        glob, note = iam_glob(pattern)
        users.append(glob)
        if note:
            notes.append(note)
    users += [u for u in args.db_user if u not in users]
    if not users:
        raise CliError(
            f"no Role in the namespace allows any database user on Database {args.database}",
            exit_code=2,
        )
    return ProxyRef(region, str(account), prx), users, notes


def _direct(args: argparse.Namespace) -> tuple[ProxyRef, list[str], list[str]]:
    missing = [
        flag
        for flag, value in (
            ("--region", args.region),
            ("--proxy-resource-id", args.proxy_resource_id),
            ("--db-user", args.db_user),
        )
        if not value
    ]
    if missing:
        raise CliError(
            "pass --database NAME, or " + ", ".join(missing) + " (and --account)", exit_code=2
        )
    account = args.account or _caller_account(args.region)
    return ProxyRef(args.region, account, args.proxy_resource_id), list(args.db_user), []


def _print_plan(console: Console, plan: Plan, notes: list[str], header: str) -> None:
    console.print(header, highlight=False, soft_wrap=True)
    for line in notes + plan.notes:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    for i, doc in enumerate(plan.documents, start=1):
        if len(plan.documents) > 1:
            console.print(f"\n# policy {i} of {len(plan.documents)}", highlight=False)
        print(json.dumps(doc, indent=2))


def run_discovery_policy(args: argparse.Namespace) -> int:
    """`iam policy --discovery`: pure documents, nothing asked of AWS."""
    proxy_args = (args.database, args.db_user, args.proxy_resource_id)
    if any(proxy_args) or args.attach_to_role or args.attach_to_user:
        raise CliError(
            "--discovery prints the discovery policy only: drop --database, --db-user, "
            "--proxy-resource-id and --attach-to-*",
            exit_code=2,
        )
    regions = [args.region] if args.region else []
    reader = discovery_policy(args.assume_role_arn, account_id=args.account, regions=regions)
    documents = [reader]
    if args.assume_role_arn:
        documents.append(discovery_assume_role_policy(args.assume_role_arn))
    if args.json:
        print(json.dumps({"policies": documents}, indent=2))
        return 0
    console = Console(highlight=False)
    who = f"the role {args.assume_role_arn}" if args.assume_role_arn else "the operator's identity"
    console.print(
        f"DatabaseDiscovery reads RDS Proxies with this policy, on {who}:", soft_wrap=True
    )
    print(json.dumps(reader, indent=2))
    if args.assume_role_arn:
        console.print(
            "\nand the operator's own identity (IRSA or Pod Identity role) needs, to assume it "
            "(the role's trust policy must name that identity, with the externalId if set):",
            soft_wrap=True,
        )
        print(json.dumps(documents[1], indent=2))
    return 0


def run_policy(args: argparse.Namespace) -> int:
    if args.discovery:
        return run_discovery_policy(args)
    if args.assume_role_arn:
        raise CliError("--assume-role-arn goes with --discovery", exit_code=2)
    ref, users, notes = _from_database(args) if args.database else _direct(args)
    resources = resources_for(
        ref, users, wildcard=args.wildcard, wildcard_prefixes=args.wildcard_prefix
    )
    if args.wildcard or args.wildcard_prefix:
        notes.append(
            "wildcards allow every database user they match, not only the ones listed; "
            "rdsgate's Roles still decide who may use which"
        )
    principal: Principal | None = None
    if args.attach_to_role:
        principal = Principal("role", args.attach_to_role)
    elif args.attach_to_user:
        principal = Principal("user", args.attach_to_user)
    console = Console(stderr=args.json, highlight=False)
    try:
        if principal is None:
            plan = plan_unattached(resources)
            written: list[str] = []
            removed: list[str] = []
        else:
            result = attach(
                _boto("iam", ref.region),
                principal,
                resources,
                policy_name=args.policy_name,
                managed_quota=args.managed_policy_quota,
                users=users,
            )
            plan, written, removed = result.plan, result.written, result.removed
    except PolicyTooLarge as exc:
        raise CliError(str(exc), exit_code=EXIT_TOO_LARGE) from exc
    except IamError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        out: dict[str, Any] = {"policies": plan.documents, "placement": plan.placement}
        out["notes"] = notes + plan.notes
        if principal is not None:
            out["principal"] = {"kind": principal.kind, "name": principal.name}
            out["written"], out["removed"] = written, removed
        print(json.dumps(out, indent=2))
        return 0
    header = (
        f"rds-db:connect for {len(users)} database user pattern(s) on {ref.proxy_resource_id} "
        f"({ref.region}, account {ref.account_id}):"
    )
    _print_plan(console, plan, notes, header)
    if principal is not None:
        console.print()
        for line in written:
            console.print(f"wrote {line} on {principal.kind} {principal.name}", highlight=False)
        for line in removed:
            console.print(f"removed {line} (replaced)", highlight=False)
    return 0


def run_trust_policy(args: argparse.Namespace) -> int:
    console = Console(stderr=True, highlight=False)
    if args.pod_identity:
        doc = pod_identity_trust_policy()
        what = "EKS Pod Identity"
    else:
        if not args.oidc_issuer or not args.service_account:
            raise CliError("pass --oidc-issuer URL and --service-account NS/NAME", exit_code=2)
        ns, sep, name = args.service_account.partition("/")
        if not sep or not ns or not name:
            raise CliError("--service-account is NAMESPACE/NAME", exit_code=2)
        account = args.account or _caller_account(args.region)
        doc = irsa_trust_policy(
            account,
            args.oidc_issuer,
            ns,
            name,
            region=args.region or "us-east-1",
            audience=args.audience,
        )
        what = f"IRSA for ServiceAccount {ns}/{name}"
    if args.apply:
        if not args.role:
            raise CliError("--apply needs --role ROLE", exit_code=2)
        iam = _boto("iam", args.region)
        if not args.pod_identity:
            registered = oidc_provider_registered(iam, account, args.oidc_issuer)
            if registered is False:
                console.print(
                    f"warning: IAM has no OIDC provider for {args.oidc_issuer}; create it with "
                    "eksctl utils associate-iam-oidc-provider --cluster CLUSTER --approve",
                    soft_wrap=True,
                )
        try:
            done = apply_trust_policy(iam, args.role, doc, description=f"rdsgate proxy ({what})")
        except IamError as exc:
            raise CliError(str(exc)) from exc
        console.print(f"{done} role {args.role} with the {what} trust policy")
    elif not args.json:
        console.print(f"Trust policy ({what}):")
    print(json.dumps(doc, indent=2))
    return 0

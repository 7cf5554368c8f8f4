"""`rdsgate iam policy --attach-to-role/--attach-to-user` and `iam trust-policy --apply`
against moto's IAM: what ends up on the principal, for tens to a thousand database users."""

from __future__ import annotations

import json
import os
from typing import Any

from rdsgate.lab.aws import AwsLab, policy_document
from rdsgate.proxy.diagnose.policies import policy_size
from tests.diagnose.conftest import Cli

PRX = "prx-0123456789abcdef0"


def _users(n: int) -> list[str]:
    return [f"app_user_{i:04d}" for i in range(n)]


def _policy_args(aws: AwsLab, users: list[str], *extra: str) -> list[str]:
    args = ["iam", "policy", "--region", aws.region, "--account", aws.account_id]
    args += ["--proxy-resource-id", PRX]
    for u in users:
        args += ["--db-user", u]
    return args + list(extra)


def _held(aws: AwsLab, kind: str, name: str) -> dict[str, Any]:
    """What the principal holds: inline documents by name, and rdsgate's managed documents."""
    iam = aws.client("iam")
    key = {"RoleName": name} if kind == "role" else {"UserName": name}
    inline = {
        n: getattr(iam, f"get_{kind}_policy")(**key, PolicyName=n)["PolicyDocument"]
        for n in getattr(iam, f"list_{kind}_policies")(**key)["PolicyNames"]
    }
    managed = {}
    for p in getattr(iam, f"list_attached_{kind}_policies")(**key)["AttachedPolicies"]:
        pol = iam.get_policy(PolicyArn=p["PolicyArn"])["Policy"]
        version = iam.get_policy_version(
            PolicyArn=p["PolicyArn"], VersionId=pol["DefaultVersionId"]
        )["PolicyVersion"]["Document"]
        managed[p["PolicyArn"]] = version
    return {"inline": inline, "managed": managed}


def _resources(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(r for d in docs for s in d["Statement"] for r in s["Resource"])


def _arns(aws: AwsLab, users: list[str]) -> list[str]:
    return sorted(f"arn:aws:rds-db:{aws.region}:{aws.account_id}:dbuser:{PRX}/{u}" for u in users)


def _role(aws: AwsLab) -> str:
    name = f"rdsgate-proxy-{os.urandom(3).hex()}"
    trust = policy_document(
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    )
    aws.create_role(name, trust)
    return name


def test_role_inline_then_managed_then_back_to_inline(cli: Cli, aws: AwsLab) -> None:
    role = _role(aws)
    env = aws.env(aws.admin.credentials)

    small = cli(*_policy_args(aws, _users(20), "--attach-to-role", role), env=env)
    assert small.code == 0, small.err
    assert f"wrote inline policy rdsgate-rds-db-connect on role {role}" in small.out
    held = _held(aws, "role", role)
    assert list(held["inline"]) == ["rdsgate-rds-db-connect"]
    assert _resources(list(held["inline"].values())) == _arns(aws, _users(20))

    many = _users(300)
    big = cli(*_policy_args(aws, many, "--attach-to-role", role, "--json"), env=env)
    assert big.code == 0, big.err
    out = big.json()
    assert out["placement"] == "managed"
    assert len(out["policies"]) == 5
    assert out["removed"] == ["inline policy rdsgate-rds-db-connect"]
    held = _held(aws, "role", role)
    assert held["inline"] == {}
    assert sorted(held["managed"]) == [
        f"arn:aws:iam::{aws.account_id}:policy/rdsgate/rdsgate-rds-db-connect-{i}"
        for i in range(1, 6)
    ]
    assert all(policy_size(d) <= 6144 for d in held["managed"].values())
    assert _resources(list(held["managed"].values())) == _arns(aws, many)
    assert "5 managed policies of at most 6,144 characters" in " ".join(out["notes"])
    assert "a role takes 10 managed policies" in " ".join(out["notes"])

    back = cli(*_policy_args(aws, _users(10), "--attach-to-role", role), env=env)
    assert back.code == 0
    held = _held(aws, "role", role)
    assert held["managed"] == {}
    assert _resources(list(held["inline"].values())) == _arns(aws, _users(10))
    assert "removed managed policy" in back.out


def test_a_thousand_users_are_refused_until_wildcards(cli: Cli, aws: AwsLab) -> None:
    role = _role(aws)
    env = aws.env(aws.admin.credentials)
    refused = cli(*_policy_args(aws, _users(1000), "--attach-to-role", role), env=env)
    assert refused.code == 3
    message = " ".join(refused.err.split())
    assert "1000 resources need 14 managed policies of at most 6,144 characters" in message
    assert "--wildcard-prefix app_" in message
    assert _held(aws, "role", role) == {"inline": {}, "managed": {}}

    wild = cli(
        *_policy_args(aws, _users(1000), "--attach-to-role", role, "--wildcard-prefix", "app_"),
        env=env,
    )
    assert wild.code == 0, wild.err
    held = _held(aws, "role", role)
    assert _resources(list(held["inline"].values())) == [
        f"arn:aws:rds-db:{aws.region}:{aws.account_id}:dbuser:{PRX}/app_*"
    ]
    assert "wildcards allow every database user they match" in wild.out


def test_user_and_quota_accounting(cli: Cli, aws: AwsLab) -> None:
    env = aws.env(aws.admin.credentials)
    user = aws.create_user(f"rdsgate-user-{os.urandom(3).hex()}")
    out = cli(*_policy_args(aws, _users(30), "--attach-to-user", user.name, "--json"), env=env)
    assert out.code == 0, out.err
    assert out.json()["placement"] == "managed"
    assert "all inline policies of a user share 2,048 characters" in out.json()["notes"][0]
    assert _resources(list(_held(aws, "user", user.name)["managed"].values())) == _arns(
        aws, _users(30)
    )

    role = _role(aws)
    iam = aws.client("iam")
    for i in range(8):
        arn = aws.create_policy(
            f"other-{role}-{i}",
            policy_document({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}),
        )
        iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    crowded = cli(*_policy_args(aws, _users(300), "--attach-to-role", role), env=env)
    assert crowded.code == 3
    assert "has 8 other(s) attached, leaving 2" in " ".join(crowded.err.split())
    raised = cli(
        *_policy_args(aws, _users(300), "--attach-to-role", role, "--managed-policy-quota", "20"),
        env=env,
    )
    assert raised.code == 0, raised.err
    assert len(_held(aws, "role", role)["managed"]) == 8 + 5


def test_other_inline_policies_share_the_role_budget(cli: Cli, aws: AwsLab) -> None:
    role = _role(aws)
    filler = policy_document(
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [f"arn:aws:s3:::bucket-{i:03d}/*" for i in range(320)],
        }
    )
    aws.client("iam").put_role_policy(
        RoleName=role, PolicyName="existing", PolicyDocument=json.dumps(filler)
    )
    assert policy_size(filler) > 9000
    out = cli(
        *_policy_args(aws, _users(30), "--attach-to-role", role, "--json"),
        env=aws.env(aws.admin.credentials),
    )
    assert out.code == 0, out.err
    assert out.json()["placement"] == "managed"
    assert "splitting into several inline policies does not help" in out.json()["notes"][0]
    assert list(_held(aws, "role", role)["inline"]) == ["existing"]


def test_trust_policy_print_and_apply(cli: Cli, aws: AwsLab) -> None:
    issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123"
    args = ["iam", "trust-policy", "--oidc-issuer", issuer, "--service-account", "shop/orders"]
    env = aws.env(aws.admin.credentials)
    printed = cli(*args, "--json", env=env)
    assert printed.code == 0
    doc = json.loads(printed.out)
    provider = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123"
    statement = doc["Statement"][0]
    assert statement["Principal"] == {
        "Federated": f"arn:aws:iam::{aws.account_id}:oidc-provider/{provider}"
    }
    assert statement["Condition"]["StringEquals"][f"{provider}:sub"] == (
        "system:serviceaccount:shop:orders"
    )

    role = f"rdsgate-irsa-{os.urandom(3).hex()}"
    created = cli(*args, "--role", role, "--apply", env=env)
    assert created.code == 0, created.err
    assert f"created role {role} with the IRSA for ServiceAccount shop/orders trust" in " ".join(
        created.err.split()
    )
    assert "IAM has no OIDC provider for" in created.err
    held = aws.client("iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert held == doc

    aws.client("iam").create_open_id_connect_provider(
        Url=issuer, ClientIDList=["sts.amazonaws.com"], ThumbprintList=["a" * 40]
    )
    updated = cli(*args, "--service-account", "shop/other", "--role", role, "--apply", env=env)
    assert updated.code == 0
    assert f"updated role {role}" in updated.err
    assert "no OIDC provider" not in updated.err
    held = aws.client("iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert held["Statement"][0]["Condition"]["StringEquals"][f"{provider}:sub"] == (
        "system:serviceaccount:shop:other"
    )


def test_missing_inputs_are_usage_errors(cli: Cli) -> None:
    result = cli("iam", "policy", "--region", "eu-west-1")
    assert result.code == 2
    assert "pass --database NAME, or --proxy-resource-id, --db-user" in result.err

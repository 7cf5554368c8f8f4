"""`rdsgate iam policy --discovery`: enough for `read_inventory`, and nothing in it is spare.

moto evaluates RDS requests against the resource `*` only (it has no per-resource
authorization for RDS), so the lab can check the policy's actions, not its resource
scoping: the printed statements are attached with `Resource: *`, and the scoping is
checked separately against the ARNs the lab's RDS hands out.
"""

from __future__ import annotations

import copy
import fnmatch
import os
from typing import Any

import pytest

from rdsgate.lab.aws import AwsLab
from rdsgate.operator.inventory import DISCOVERY_ACTIONS, AwsAccessDenied, read_inventory
from tests.diagnose.conftest import Cli


def _printed(cli: Cli, *args: str) -> list[dict[str, Any]]:
    result = cli("iam", "policy", "--discovery", "--json", *args)
    assert result.code == 0, result.err
    policies: list[dict[str, Any]] = result.json()["policies"]
    return policies


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _resources(statement: dict[str, Any]) -> list[str]:
    resource = statement["Resource"]
    return [resource] if isinstance(resource, str) else list(resource)


def _as_moto_checks(document: dict[str, Any], without: str | None = None) -> dict[str, Any]:
    """The document with `Resource: *` (all moto compares) and maybe one action less."""
    out = copy.deepcopy(document)
    statements = []
    for statement in out["Statement"]:
        actions = [a for a in _actions(statement) if a != without]
        if actions:
            statements.append({**statement, "Action": actions, "Resource": "*"})
    out["Statement"] = statements
    return out


def _use(monkeypatch: pytest.MonkeyPatch, aws: AwsLab, user: Any) -> None:
    for key, value in aws.env(user.credentials).items():
        monkeypatch.setenv(key, value)


def test_the_printed_policy_is_enough_and_each_action_is_needed(
    aws: AwsLab, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = aws.create_db_proxy(f"disc-pol-{os.urandom(2).hex()}", [])
    aws.create_db_proxy_endpoint(proxy.name, f"{proxy.name}-ro")
    [document] = _printed(cli, "--account", aws.account_id)
    tag = os.urandom(3).hex()
    full = aws.create_user(f"disc-all-{tag}", policies={"d": _as_moto_checks(document)})
    lacking = {
        action: aws.create_user(
            f"disc-no{action.split(':')[1][:20]}-{tag}",
            policies={"d": _as_moto_checks(document, without=action)},
        )
        for action in DISCOVERY_ACTIONS
    }

    _use(monkeypatch, aws, full)
    with aws.iam_enforced():
        found = read_inventory([aws.region])
        denied: dict[str, str] = {}
        for action, user in lacking.items():
            _use(monkeypatch, aws, user)
            with pytest.raises(AwsAccessDenied) as refused:
                read_inventory([aws.region])
            denied[action] = refused.value.action

    assert sorted(a for s in document["Statement"] for a in _actions(s)) == sorted(
        DISCOVERY_ACTIONS
    )
    assert proxy.name in {p.name for p in found.proxies}
    assert denied == {action: action for action in DISCOVERY_ACTIONS}


def test_the_statements_are_scoped_to_proxies_endpoints_and_target_groups(
    aws: AwsLab, cli: Cli
) -> None:
    proxy = aws.create_db_proxy(f"disc-arn-{os.urandom(2).hex()}", [])
    aws.create_db_proxy_endpoint(proxy.name, f"{proxy.name}-an")
    rds = aws.client("rds")
    endpoint_arn = rds.describe_db_proxy_endpoints(DBProxyName=proxy.name)["DBProxyEndpoints"][0][
        "DBProxyEndpointArn"
    ]
    [narrow] = _printed(cli, "--account", aws.account_id, "--region", aws.region)
    role = f"arn:aws:iam::{aws.account_id}:role/rdsgate-discovery"
    reader, assume = _printed(cli, "--assume-role-arn", role)

    by_action = {a: _resources(s) for s in narrow["Statement"] for a in _actions(s)}

    def allows(action: str, arn: str) -> bool:
        return any(fnmatch.fnmatchcase(arn, pattern) for pattern in by_action[action])

    assert "*" not in {r for rs in by_action.values() for r in rs}
    for action in DISCOVERY_ACTIONS:
        assert allows(action, proxy.arn), action
    assert allows("rds:DescribeDBProxyEndpoints", endpoint_arn)
    assert allows(
        "rds:DescribeDBProxyTargets",
        f"arn:aws:rds:{aws.region}:{aws.account_id}:target-group:prx-tg-0123456789abcdef0",
    )
    assert not allows("rds:DescribeDBProxies", proxy.arn.replace(aws.region, "us-east-1"))
    assert not allows("rds:DescribeDBProxies", proxy.arn.replace(aws.account_id, "999999999999"))
    assert all(
        r.startswith(f"arn:aws:rds:*:{aws.account_id}:")
        for s in reader["Statement"]
        for r in _resources(s)
    )
    assert assume["Statement"] == [
        {
            "Sid": "RdsgateDiscoveryAssumeRole",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": role,
        }
    ]


def test_discovery_takes_no_database_arguments(cli: Cli) -> None:
    result = cli("iam", "policy", "--discovery", "--db-user", "app")

    assert result.code == 2
    assert "--discovery prints the discovery policy only" in result.err

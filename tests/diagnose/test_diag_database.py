"""`--database NAME`: the Database resource read through a kubeconfig (the Kubernetes API
emulator) gives the same inputs as the proxy's config, for diagnose and for iam policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rdsgate.lab.aws import AwsLab
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.diagnose.conftest import Cli
from tests.fixtures.k8s import Api, ApiServer


def _database(api: Api, namespace: str, aws: AwsLab, rds_proxy: RdsProxyStandIn) -> dict[str, Any]:
    ca_pem = rds_proxy.ca_file.read_text()
    db = api.create(
        {
            "kind": "Database",
            "metadata": {"name": "orders", "namespace": namespace, "labels": {"env": "test"}},
            "spec": {
                "engine": "postgres",
                "endpoint": rds_proxy.endpoint,
                "aws": {
                    "region": aws.region,
                    "accountId": aws.account_id,
                    "proxyResourceId": rds_proxy.resource_id,
                },
                "tls": {"mode": "verify-full", "caBundle": ca_pem},
            },
        }
    )
    for name, selector, users in (
        ("app-rw", {"matchLabels": {"env": "test"}}, ["app", "^rep_[a-z]+$"]),
        ("elsewhere", {"matchLabels": {"env": "prod"}}, ["nobody"]),
    ):
        api.create(
            {
                "kind": "Role",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"allow": {"databases": selector, "databaseUsers": users}},
            }
        )
    return db


def test_diagnose_and_iam_policy_from_a_database_resource(
    cli: Cli,
    api: Api,
    k8s_api: ApiServer,
    namespace: str,
    aws: AwsLab,
    rds_proxy: RdsProxyStandIn,
    rds_iam: object,
    tmp_path: Path,
) -> None:
    _database(api, namespace, aws, rds_proxy)
    kubeconfig = k8s_api.kubeconfig(tmp_path / "kubeconfig")
    identity = rds_iam.user("app")  # type: ignore[attr-defined]
    env = {**identity.env, "KUBECONFIG": str(kubeconfig)}

    result = cli(
        "diagnose",
        "--database",
        "orders",
        "--namespace",
        namespace,
        "--check",
        "upstream-tls",
        "--check",
        "iam-login",
        "--db-user",
        "app",
        "--db-name",
        "orders",
        "--json",
        env=env,
    )
    assert result.code == 0, result.out + result.err
    out = result.json()
    assert out["database"] == {"name": "orders", "namespace": namespace}
    assert out["endpoint"] == rds_proxy.endpoint
    assert result.finding("upstream-tls")["status"] == "pass"  # verified with spec.tls.caBundle
    assert result.finding("iam-login")["summary"] == "IAM login to localhost succeeded as app"

    policy = cli(
        "iam", "policy", "--database", "orders", "--namespace", namespace, "--json", env=env
    )
    assert policy.code == 0, policy.err
    doc = json.loads(policy.out)
    prefix = f"arn:aws:rds-db:{aws.region}:{aws.account_id}:dbuser:{rds_proxy.resource_id}/"
    assert doc["policies"][0]["Statement"][0]["Resource"] == [prefix + "app", prefix + "rep_*"]
    assert (
        "regular expression ^rep_[a-z]+$ widened to 'rep_*' (IAM has no regexes)" in (doc["notes"])
    )

    missing = cli("diagnose", "--database", "nope", "--namespace", namespace, env=env)
    assert missing.code == 2
    assert f"Database {namespace}/nope not found" in missing.err

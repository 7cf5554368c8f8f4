"""The operator's own metrics: reconciles counted by kind and result."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.k8s import Api, ApiServer, OperatorProcess, start_operator, wait_for


@pytest.fixture(scope="module")
def op(
    private_k8s_api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = start_operator(private_k8s_api, tmp_path_factory.mktemp("op"))
    yield process
    process.stop()


def metric(op: OperatorProcess, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reconciles_are_counted(
    op: OperatorProcess, private_k8s_api: ApiServer, tmp_path: Path
) -> None:
    api = Api(private_k8s_api.url)
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": "orders", "namespace": "metrics"},
            "spec": {
                "endpoint": "orders.proxy-x.eu-west-1.rds.amazonaws.com:5432",
                "aws": {"region": "eu-west-1"},
            },
        }
    )
    ok = 'rdsgate_operator_reconciles_total{kind="database",result="ok"}'
    wait_for(lambda: metric(op, ok) >= 1, "a counted Database reconcile", 20, op.tail)
    assert metric(op, 'rdsgate_operator_reconcile_seconds_count{kind="database"}') >= 1
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Role",
            "metadata": {"name": "readers", "namespace": "metrics"},
            "spec": {"allow": {"databases": {}, "databaseNames": ["*"], "databaseUsers": ["r"]}},
        }
    )
    access = 'rdsgate_operator_reconciles_total{kind="access",result="ok"}'
    wait_for(lambda: metric(op, access) >= 1, "a counted access sync", 20, op.tail)


def test_tokens_from_before_the_webhooks_are_counted_and_say_so(
    op: OperatorProcess, private_k8s_api: ApiServer
) -> None:
    """No webhooks are registered here, as before an upgrade: Tokens carry no requester."""
    api = Api(private_k8s_api.url)
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Token",
            "metadata": {"name": "old", "namespace": "metrics"},
            "spec": {"roles": ["readers"]},
        }
    )
    gauge = 'rdsgate_operator_tokens_unverified{namespace="metrics"}'
    wait_for(lambda: metric(op, gauge) == 1, "the unverified Token counted", 20, op.tail)

    def verified() -> dict[str, str] | None:
        return Api.condition(api.get("Token", "metrics", "old"), "RequesterVerified")

    cond = wait_for(verified, "RequesterVerified", 20, op.tail)
    assert (cond["status"], cond["reason"]) == ("False", "CreatedBeforeAdmission")
    assert "re-create it to record its requester" in cond["message"]
    ready = Api.condition(api.get("Token", "metrics", "old"), "Ready")
    assert ready is not None and ready["reason"] != "RequesterUnverified"
    api.delete("Token", "metrics", "old")
    wait_for(lambda: metric(op, gauge) == 0, "the gauge to drop", 20, op.tail)

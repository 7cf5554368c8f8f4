"""The reconcilers in this process against the API emulator over HTTP: exact, repeatable steps.

These call `Reconciler.reconcile_database` / `sync_access` directly (what every kopf
handler calls) so a test can count the writes a reconcile makes; the operator process
itself, with kopf triggering the same code, is in test_op_operator.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml

from rdsgate.operator.handlers import Config, Reconciler
from rdsgate.operator.kube import Kube
from rdsgate.proxy.access import parse_access, secret_digest
from tests.fixtures.k8s import EXAMPLES_DIR, OPERATOR_NAMESPACE, Api, ApiServer


@pytest.fixture
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    """Not the session's: the operator process must not act on these namespaces."""
    return private_k8s_api


@pytest.fixture
def reconciler(k8s_api: ApiServer) -> Iterator[Reconciler]:
    configuration = kubernetes.client.Configuration()
    configuration.host = k8s_api.url
    client = kubernetes.client.ApiClient(configuration)
    kube = Kube(client)
    yield Reconciler(
        kube,
        Config("rdsgate:test", OPERATOR_NAMESPACE),
        Reconciler.load_ca(kube, OPERATOR_NAMESPACE),
    )
    client.close()


def example(name: str, namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / name).read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


def writes_during(k8s_api: ApiServer, fn: Any) -> list[tuple[str, str]]:
    before = len(k8s_api.emulator.writes)
    fn()
    return k8s_api.emulator.writes[before:]


def children(api: Api, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for kind in (
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ):
        for obj in api.objects(kind, namespace):
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def test_a_second_reconcile_changes_nothing(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    api.create(example("role-app-rw.yaml", namespace))
    api.create(example("token-orders-app.yaml", namespace))
    first = writes_during(k8s_api, lambda: reconciler.reconcile_database(namespace, "orders"))
    assert ("create", f"deployments/{namespace}/orders-rdsgate") in first
    versions = {k: o["metadata"]["resourceVersion"] for k, o in children(api, namespace).items()}
    assert writes_during(k8s_api, lambda: reconciler.reconcile_database(namespace, "orders")) == []
    assert writes_during(k8s_api, lambda: reconciler.sync_access(namespace)) == []
    assert {
        k: o["metadata"]["resourceVersion"] for k, o in children(api, namespace).items()
    } == versions
    assert set(versions) == {
        ("ServiceAccount", "orders-rdsgate"),
        ("ConfigMap", "orders-rdsgate"),
        ("Secret", "orders-rdsgate-tls"),
        ("Secret", "orders-rdsgate-access"),
        ("Secret", "orders-app-db"),
        ("Deployment", "orders-rdsgate"),
        ("Service", "orders"),
        ("PodDisruptionBudget", "orders-rdsgate"),
    }


def test_drift_is_repaired_exactly(reconciler: Reconciler, api: Api, namespace: str) -> None:
    api.create(example("database.yaml", namespace))
    reconciler.reconcile_database(namespace, "orders")
    want_service = api.get("Service", namespace, "orders")
    want_deployment = api.get("Deployment", namespace, "orders-rdsgate")
    assert want_service is not None and want_deployment is not None
    ports = copy.deepcopy(want_service["spec"]["ports"])
    ports[0]["port"] = 15432
    api.patch("Service", namespace, "orders", {"spec": {"ports": ports}})
    api.delete("Deployment", namespace, "orders-rdsgate")
    api.patch(
        "ConfigMap",
        namespace,
        "orders-rdsgate",
        {"data": {"config.yaml": "hacked: true\n", "extra": "x"}},
    )

    reconciler.reconcile_database(namespace, "orders")
    service = api.get("Service", namespace, "orders")
    deployment = api.get("Deployment", namespace, "orders-rdsgate")
    assert service is not None and deployment is not None
    assert service["spec"]["ports"] == want_service["spec"]["ports"]
    assert [p["port"] for p in service["spec"]["ports"]] == [5432, 9187]
    assert deployment["spec"] == want_deployment["spec"]
    assert deployment["metadata"]["uid"] != want_deployment["metadata"]["uid"]
    config_map = api.get("ConfigMap", namespace, "orders-rdsgate")
    assert config_map is not None
    assert config_map["data"]["config.yaml"].startswith("database:")
    assert config_map["data"]["extra"] == "x"  # keys the operator does not own are left alone


def test_an_access_change_does_not_roll_the_proxies(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    api.create(example("role-app-rw.yaml", namespace))
    reconciler.reconcile_database(namespace, "orders")
    deployment = api.get("Deployment", namespace, "orders-rdsgate")
    access = api.get("Secret", namespace, "orders-rdsgate-access")
    assert deployment is not None and access is not None
    assert parse_access(yaml.safe_load(Api.secret_text(access, "access.yaml"))).file.grants == []

    api.create(example("token-orders-app.yaml", namespace))
    reconciler.sync_access(namespace)
    reconciler.reconcile_database(namespace, "orders")
    after = api.get("Secret", namespace, "orders-rdsgate-access")
    assert after is not None
    policy = parse_access(yaml.safe_load(Api.secret_text(after, "access.yaml")))
    token_secret = api.get("Secret", namespace, "orders-app-db")
    assert token_secret is not None
    grant = policy.grant_for_secret(Api.secret_text(token_secret, "token"))
    assert grant is not None and grant.identity == f"{namespace}/orders-app"
    dep_after = api.get("Deployment", namespace, "orders-rdsgate")
    assert dep_after is not None
    assert dep_after["metadata"]["resourceVersion"] == deployment["metadata"]["resourceVersion"]


def test_the_token_secret_is_generated_once(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    api.create(example("role-app-rw.yaml", namespace))
    api.create(example("token-orders-app.yaml", namespace))
    reconciler.sync_access(namespace)
    secret = api.get("Secret", namespace, "orders-app-db")
    assert secret is not None
    value = Api.secret_text(secret, "token")
    assert Api.secret_text(secret, "PGPASSWORD") == value
    assert Api.secret_text(secret, "PGHOST") == f"orders.{namespace}.svc"
    api.patch("Token", namespace, "orders-app", {"spec": {"databaseUser": "app_reports"}})
    reconciler.sync_access(namespace)
    again = api.get("Secret", namespace, "orders-app-db")
    assert again is not None
    assert Api.secret_text(again, "token") == value
    assert Api.secret_text(again, "PGUSER") == "app_reports"
    access = api.get("Secret", namespace, "orders-rdsgate-access")
    assert access is not None
    text = Api.secret_text(access, "access.yaml")
    assert secret_digest(value) in text
    assert value not in text
    events = [(e["type"], e["reason"]) for e in api.events(namespace, "orders-app")]
    assert events == [("Normal", "SecretWritten")]

    # Deleting the Secret rotates the credential: a new secret, a new digest, the old one out.
    api.delete("Secret", namespace, "orders-app-db")
    reconciler.sync_access(namespace)
    rotated = api.get("Secret", namespace, "orders-app-db")
    assert rotated is not None
    new_value = Api.secret_text(rotated, "token")
    assert new_value != value
    access = api.get("Secret", namespace, "orders-rdsgate-access")
    assert access is not None
    text = Api.secret_text(access, "access.yaml")
    assert secret_digest(new_value) in text
    assert secret_digest(value) not in text


def test_a_foreign_secret_is_never_overwritten(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(
        {
            "kind": "Secret",
            "metadata": {"name": "orders-app-db", "namespace": namespace},
            "stringData": {"token": "mine"},
        }
    )
    api.create(example("database.yaml", namespace))
    api.create(example("role-app-rw.yaml", namespace))
    api.create(example("token-orders-app.yaml", namespace))
    reconciler.sync_access(namespace)
    reconciler.sync_access(namespace)
    foreign = api.get("Secret", namespace, "orders-app-db")
    assert foreign is not None and Api.secret_text(foreign, "token") == "mine"
    token = api.get("Token", namespace, "orders-app")
    ready = Api.condition(token, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "SecretConflict")
    assert "set spec.secretName to a free name" in ready["message"]
    warnings = [e for e in api.events(namespace, "orders-app") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["SecretConflict"]  # once, not per reconcile
    access = api.get("Secret", namespace, "orders-rdsgate-access")
    assert access is not None and "orders-app" not in Api.secret_text(access, "access.yaml")


def test_a_foreign_child_is_a_condition_not_a_takeover(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(
        {
            "kind": "Service",
            "metadata": {"name": "orders", "namespace": namespace},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    api.create(example("database.yaml", namespace))
    reconciler.reconcile_database(namespace, "orders")
    service = api.get("Service", namespace, "orders")
    assert service is not None and service["spec"]["ports"] == [{"port": 80}]
    db = api.get("Database", namespace, "orders")
    degraded = Api.condition(db, "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "NameConflict")
    assert (
        degraded["message"]
        == "Service 'orders' already exists and is not managed by Database 'orders'; "
        "delete or rename it"
    )
    assert api.get("Deployment", namespace, "orders-rdsgate") is not None


def test_optional_children_follow_the_spec(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    reconciler.reconcile_database(namespace, "orders")
    sa = api.get("ServiceAccount", namespace, "orders-rdsgate")
    assert sa is not None
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(
        ":role/rdsgate-orders"
    )
    assert api.get("PodDisruptionBudget", namespace, "orders-rdsgate") is not None

    api.patch(
        "Database",
        namespace,
        "orders",
        {"spec": {"proxy": {"replicas": 1, "serviceAccount": None}}},
    )
    reconciler.reconcile_database(namespace, "orders")
    assert api.get("PodDisruptionBudget", namespace, "orders-rdsgate") is None
    sa = api.get("ServiceAccount", namespace, "orders-rdsgate")
    assert sa is not None and "eks.amazonaws.com/role-arn" not in (
        sa["metadata"].get("annotations") or {}
    )

    api.patch(
        "Database", namespace, "orders", {"spec": {"proxy": {"serviceAccount": {"name": "shared"}}}}
    )
    reconciler.reconcile_database(namespace, "orders")
    assert api.get("ServiceAccount", namespace, "orders-rdsgate") is None
    degraded = Api.condition(api.get("Database", namespace, "orders"), "Degraded")
    assert degraded is not None and degraded["reason"] == "ReferenceNotFound"
    assert "ServiceAccount 'shared' does not exist" in degraded["message"]
    deployment = api.get("Deployment", namespace, "orders-rdsgate")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "shared"


def test_an_invalid_spec_keeps_the_running_children(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    reconciler.reconcile_database(namespace, "orders")
    config_before = api.get("ConfigMap", namespace, "orders-rdsgate")
    api.patch("Database", namespace, "orders", {"spec": {"endpoint": "nope"}})
    reconciler.reconcile_database(namespace, "orders")
    assert api.get("ConfigMap", namespace, "orders-rdsgate") == config_before
    db = api.get("Database", namespace, "orders")
    degraded = Api.condition(db, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "InvalidSpec"
    assert degraded["message"].startswith("spec.endpoint: String should match pattern")
    assert degraded["observedGeneration"] == db["metadata"]["generation"] == 2  # type: ignore[index]


def test_cert_manager_missing_is_reported(reconciler: Reconciler, api: Api, namespace: str) -> None:
    db = example("database.yaml", namespace)
    db["spec"]["proxy"]["issuerRef"] = {"name": "corp-ca"}
    api.create(db)
    reconciler.reconcile_database(namespace, "orders")
    degraded = Api.condition(api.get("Database", namespace, "orders"), "Degraded")
    assert degraded is not None and degraded["reason"] == "ReferenceNotFound"
    assert "cert-manager is not installed" in degraded["message"]

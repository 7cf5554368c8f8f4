"""The reconcilers in this process against the API emulator over HTTP: exact, repeatable steps.

These call `Reconciler.reconcile_database` / `sync_access` directly (what every kopf
handler calls) so a test can count the writes a reconcile makes; the operator process
itself, with kopf triggering the same code, is in test_op_operator.py.
"""

from __future__ import annotations

import base64
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from rdsgate.operator.handlers import Reconciler, Retry
from rdsgate.proxy.access import AccessPolicy, parse_access, secret_digest
from tests.fixtures.k8s import Api, ApiCall, ApiServer
from tests.operator.hooks import Gate, in_front_of, webhook
from tests.operator.world import example, reconciler_for, token


@pytest.fixture
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    """Not the session's: the operator process must not act on these namespaces."""
    return private_k8s_api


@pytest.fixture
def reconciler(k8s_api: ApiServer) -> Iterator[Reconciler]:
    with reconciler_for(k8s_api) as reconciler:
        yield reconciler


def writes_during(k8s_api: ApiServer, fn: Any) -> list[tuple[str, str]]:
    before = len(k8s_api.emulator.writes)
    fn()
    return k8s_api.emulator.writes[before:]


def policy_of(api: Api, namespace: str, db: str = "orders") -> AccessPolicy:
    secret = api.get("Secret", namespace, f"{db}-rdsgate-access")
    assert secret is not None, f"{db} has no access Secret"
    return parse_access(yaml.safe_load(Api.secret_text(secret, "access.yaml")))


def identities(api: Api, namespace: str, db: str = "orders") -> list[str]:
    return [g.identity for g in policy_of(api, namespace, db).file.grants]


def mark_rolled_out(api: Api, namespace: str, name: str = "orders-rdsgate") -> None:
    """What the Deployment controller would report once every proxy is ready."""
    dep = api.get("Deployment", namespace, name)
    assert dep is not None
    n = dep["spec"]["replicas"]
    status = {"observedGeneration": dep["metadata"]["generation"], "replicas": n}
    status |= {"updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}
    api.patch("Deployment", namespace, name, {"status": status}, sub="status")


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
        ("ConfigMap", "rdsgate-ca"),
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


# One bad Token, and the reconcilers' share of the work


def secret_named(name: str) -> Callable[[ApiCall, Any], bool]:
    def matches(call: ApiCall, body: Any) -> bool:
        return call.resource == "secrets" and (
            call.name == name or ((body or {}).get("metadata") or {}).get("name") == name
        )

    return matches


def test_a_token_the_api_refuses_does_not_stop_its_namespace(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    ns = namespace
    api.create(example("database.yaml", ns))
    api.create(example("role-app-rw.yaml", ns))
    api.create(example("token-orders-app.yaml", ns))
    api.create(token(ns, "leaver"))
    reconciler.sync_access(ns)
    reconciler.reconcile_database(ns, "orders")
    assert identities(api, ns) == [f"{ns}/leaver", f"{ns}/orders-app"]

    # A webhook refuses one Token's Secret; meanwhile another Token is deleted.
    stuck = secret_named("stuck-rdsgate")
    denied = 'admission webhook "secrets.policy.example.com" denied the request: not today'
    refuse = webhook(k8s_api, lambda call, body: denied if stuck(call, body) else None)
    with in_front_of(k8s_api, refuse):
        api.create(token(ns, "stuck"))
        api.delete("Token", ns, "leaver")
        with pytest.raises(Retry, match="denied the request"):
            reconciler.sync_access(ns)
        # The deleted Token's grant is gone all the same: revocation does not wait for it.
        assert identities(api, ns) == [f"{ns}/orders-app"]
        ready = Api.condition(api.get("Token", ns, "stuck"), "Ready")
        assert ready is not None
        assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
        assert denied in ready["message"]
        assert [(e["type"], e["reason"]) for e in api.events(ns, "stuck")] == [
            ("Warning", "ApplyFailed")
        ]
        granted = Api.condition(api.get("Token", ns, "orders-app"), "Ready")
        assert granted is not None and granted["reason"] == "Granted"

        # A Database of the namespace still gets its proxies and its access.
        billing = example("database.yaml", ns)
        billing["metadata"]["name"] = "billing"
        api.create(billing)
        reconciler.reconcile_database(ns, "billing")
        assert api.get("Deployment", ns, "billing-rdsgate") is not None
        degraded = Api.condition(api.get("Database", ns, "billing"), "Degraded")
        assert degraded is not None and degraded["status"] == "False", degraded
        assert identities(api, ns, "billing") == [f"{ns}/orders-app"]

    # Once the API takes the Secret, the Token is granted.
    reconciler.sync_access(ns)
    assert identities(api, ns) == [f"{ns}/orders-app", f"{ns}/stuck"]
    ready = Api.condition(api.get("Token", ns, "stuck"), "Ready")
    assert ready is not None and ready["reason"] == "Granted"


def test_a_token_secret_edited_into_garbage_is_that_tokens_problem(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    ns = namespace
    api.create(example("database.yaml", ns))
    api.create(example("role-app-rw.yaml", ns))
    api.create(example("token-orders-app.yaml", ns))
    api.create(token(ns, "other"))
    reconciler.sync_access(ns)
    not_text = base64.b64encode(b"\xff\xfe not UTF-8").decode()
    api.patch("Secret", ns, "orders-app-db", {"data": {"token": not_text}})
    with pytest.raises(Retry):
        reconciler.sync_access(ns)
    assert identities(api, ns) == [f"{ns}/other"]
    ready = Api.condition(api.get("Token", ns, "orders-app"), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert ready["message"].startswith("cannot write Secret 'orders-app-db': ")
    assert "delete it and the operator writes it anew" in ready["message"]
    assert "Traceback" not in ready["message"]
    api.delete("Secret", ns, "orders-app-db")
    reconciler.sync_access(ns)
    assert identities(api, ns) == [f"{ns}/orders-app", f"{ns}/other"]


def test_a_long_token_name_still_gets_its_secret(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    ns = namespace

    def label_validation(call: ApiCall, body: Any) -> str | None:
        """The API server's own check, which the emulator does not make."""
        labels = ((body or {}).get("metadata") or {}).get("labels") or {}
        long = sorted(k for k, v in labels.items() if v is not None and len(str(v)) > 63)
        return (
            f"metadata.labels: Invalid value: {long}: must be no more than 63 characters"
            if long
            else None
        )

    name = "quarterly-reporting-" + "x" * 80
    with in_front_of(k8s_api, webhook(k8s_api, label_validation)):
        api.create(example("database.yaml", ns))
        api.create(example("role-app-rw.yaml", ns))
        api.create(token(ns, name))
        reconciler.sync_access(ns)
    secret = api.get("Secret", ns, f"{name}-rdsgate")
    assert secret is not None
    assert secret["metadata"]["annotations"]["rdsgate.dev/token-name"] == name
    assert identities(api, ns) == [f"{ns}/{name}"]
    ready = Api.condition(api.get("Token", ns, name), "Ready")
    assert ready is not None and ready["reason"] == "Granted"

    # A name so long that the default Secret name would not be a name: say what to set.
    longest = "y" * 250
    api.create(token(ns, longest))
    reconciler.sync_access(ns)
    ready = Api.condition(api.get("Token", ns, longest), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "is longer than 253 characters; set spec.secretName" in ready["message"]
    assert identities(api, ns) == [f"{ns}/{name}"]


def test_a_database_reconcile_does_not_compile_the_namespace(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    ns = namespace
    api.create(example("database.yaml", ns))
    api.create(example("role-app-rw.yaml", ns))
    api.create(example("token-orders-app.yaml", ns))
    reconciler.sync_access(ns)
    reconciler.reconcile_database(ns, "orders")

    # What wakes most reconciles: the Deployment's status. It reads no Role and no Token.
    mark_rolled_out(api, ns)
    before = len(k8s_api.emulator.calls)
    reconciler.reconcile_database(ns, "orders")
    calls = k8s_api.emulator.calls[before:]
    assert [c for c in calls if c.resource in ("roles", "tokens")] == []
    assert [c.verb for c in calls if c.resource == "secrets" and c.name.endswith("-access")] == [
        "get"
    ]
    ready = Api.condition(api.get("Database", ns, "orders"), "Ready")
    assert ready is not None and ready["reason"] == "ProxiesReady"

    # A reconcile needs its own access Secret to exist: when it is gone, a compile writes it.
    api.delete("Secret", ns, "orders-rdsgate-access")
    reconciler.reconcile_database(ns, "orders")
    assert identities(api, ns) == [f"{ns}/orders-app"]


def test_the_operator_knows_the_events_of_its_own_writes(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    api.create(example("role-app-rw.yaml", namespace))
    api.create(example("token-orders-app.yaml", namespace))
    reconciler.sync_access(namespace)
    reconciler.reconcile_database(namespace, "orders")
    for kind, name in [
        ("Secret", "orders-rdsgate-access"),
        ("Secret", "orders-app-db"),
        ("Deployment", "orders-rdsgate"),
    ]:
        obj = api.get(kind, namespace, name)
        assert obj is not None and reconciler.wrote(obj), f"{kind} {name}"
    api.patch("Secret", namespace, "orders-rdsgate-access", {"data": {"access.yaml": "e30="}})
    edited = api.get("Secret", namespace, "orders-rdsgate-access")
    assert edited is not None and not reconciler.wrote(edited)
    reconciler.sync_access(namespace)  # the hand edit is repaired
    assert identities(api, namespace) == [f"{namespace}/orders-app"]


# The diagnosis timer and the reconcile share the Database's conditions


def is_pod_list(namespace: str) -> Callable[[ApiCall], bool]:
    return lambda c: (c.verb, c.resource, c.namespace) == ("list", "pods", namespace)


def test_the_diagnosis_merges_into_what_the_reconcile_wrote(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    ns = namespace
    api.create(example("database.yaml", ns))
    reconciler.reconcile_database(ns, "orders")
    asking_proxies = Gate(is_pod_list(ns))
    with in_front_of(k8s_api, asking_proxies):
        diagnosing = threading.Thread(target=reconciler.diagnose_database, args=(ns, "orders"))
        diagnosing.start()
        assert asking_proxies.arrived.wait(10)
        # While the diagnosis asks the proxies, they become ready and the reconcile says so.
        mark_rolled_out(api, ns)
        reconciler.reconcile_database(ns, "orders")
        asking_proxies.opened.set()
        diagnosing.join(10)
    assert not diagnosing.is_alive()
    db = api.get("Database", ns, "orders")
    ready, creds = Api.condition(db, "Ready"), Api.condition(db, "CredentialsAvailable")
    assert ready is not None and ready["reason"] == "ProxiesReady"
    assert creds is not None and creds["reason"] == "NoProxyPods"


def test_the_reconcile_and_the_diagnosis_take_turns(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    ns = namespace
    api.create(example("database.yaml", ns))
    reconciler.reconcile_database(ns, "orders")
    mark_rolled_out(api, ns)
    writing_status = Gate(
        lambda c: (
            (c.verb, c.resource, c.subresource, c.namespace) == ("patch", "databases", "status", ns)
        )
    )
    asked_proxies = Gate(is_pod_list(ns), hold=False)
    with in_front_of(k8s_api, writing_status, asked_proxies):
        reconciling = threading.Thread(target=reconciler.reconcile_database, args=(ns, "orders"))
        reconciling.start()
        assert writing_status.arrived.wait(10)  # it has read the Database and merged
        diagnosing = threading.Thread(target=reconciler.diagnose_database, args=(ns, "orders"))
        diagnosing.start()
        assert asked_proxies.arrived.wait(10)  # the diagnosis is ready to write as well
        writing_status.opened.set()
        reconciling.join(10)
        diagnosing.join(10)
    assert not reconciling.is_alive() and not diagnosing.is_alive()
    db = api.get("Database", ns, "orders")
    ready, creds = Api.condition(db, "Ready"), Api.condition(db, "CredentialsAvailable")
    assert ready is not None and ready["reason"] == "ProxiesReady"
    assert creds is not None and creds["reason"] == "NoProxyPods"


# What a Database may run, and what rolls its proxies


def test_a_proxy_image_the_operator_does_not_allow_is_not_run(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    ns = namespace
    api.create(example("database.yaml", ns))
    reconciler.reconcile_database(ns, "orders")
    before = api.get("Deployment", ns, "orders-rdsgate")
    assert before is not None
    api.patch("Database", ns, "orders", {"spec": {"proxy": {"image": "docker.io/evil/miner:1"}}})
    reconciler.reconcile_database(ns, "orders")
    after = api.get("Deployment", ns, "orders-rdsgate")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "rdsgate:test"
    degraded = Api.condition(api.get("Database", ns, "orders"), "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "ImageNotAllowed")
    assert degraded["message"].startswith(
        "spec.proxy.image 'docker.io/evil/miner:1' is not an allowed proxy image "
        "(allowed: rdsgate (any tag or digest))"
    )
    assert ("Warning", "ImageNotAllowed") in [
        (e["type"], e["reason"]) for e in api.events(ns, "orders")
    ]
    # Another tag of the operator's own image is fine.
    api.patch("Database", ns, "orders", {"spec": {"proxy": {"image": "rdsgate:next"}}})
    reconciler.reconcile_database(ns, "orders")
    dep = api.get("Deployment", ns, "orders-rdsgate")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "rdsgate:next"

    # A new Database with an image not allowed gets no Deployment at all.
    evil = example("database.yaml", ns)
    evil["metadata"]["name"] = "evil"
    evil["spec"]["proxy"]["image"] = "docker.io/evil/miner:1"
    api.create(evil)
    reconciler.reconcile_database(ns, "evil")
    assert api.get("Deployment", ns, "evil-rdsgate") is None
    degraded = Api.condition(api.get("Database", ns, "evil"), "Degraded")
    assert degraded is not None and degraded["reason"] == "ImageNotAllowed"


def test_a_renewed_server_certificate_does_not_roll_the_proxies(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    reconciler.reconcile_database(namespace, "orders")
    tls = api.get("Secret", namespace, "orders-rdsgate-tls")
    deployment = api.get("Deployment", namespace, "orders-rdsgate")
    assert tls is not None and deployment is not None
    # A new certificate, as a renewal writes one (the proxy reloads the files itself).
    api.delete("Secret", namespace, "orders-rdsgate-tls")
    reconciler.reconcile_database(namespace, "orders")
    renewed = api.get("Secret", namespace, "orders-rdsgate-tls")
    assert renewed is not None
    assert renewed["data"]["tls.crt"] != tls["data"]["tls.crt"]
    after = api.get("Deployment", namespace, "orders-rdsgate")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == deployment["metadata"]["resourceVersion"]

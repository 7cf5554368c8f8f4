"""spec.proxy.autoscaling: a HorizontalPodAutoscaler owns the proxies' replicas, and the
operator does not fight it.

Render checks (valid Kubernetes 1.33 objects, the Deployment without replicas, the PDB
following minReplicas), then the Reconciler against the API emulator over HTTP. The emulator
runs no HPA controller and no metrics-server: a test writes the Deployment's `spec.replicas`
as the HPA controller would (another client's merge patch; the emulator has no `scale`
subresource, which the real controller writes through, and no field managers, which the
operator's merge-patch apply does not rely on), and the Deployment's status as the
Deployment controller would. The CRD's CEL rule (maxReplicas ≥ minReplicas) is not evaluated
here (no CEL evaluator on this machine); the operator's own check of the same rule is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rdsgate.operator import render
from rdsgate.operator.handlers import Reconciler
from rdsgate.operator.kube import merge_patch, strip_none
from rdsgate.operator.status import InvalidSpec
from tests.fixtures.k8s import CRD_DIR, EXAMPLES_DIR, Api, ApiServer
from tests.operator.world import example, reconciler_for

EXAMPLE = yaml.safe_load((EXAMPLES_DIR / "database.yaml").read_text())
SETTINGS = render.Settings("rdsgate:1")
HPA = "HorizontalPodAutoscaler"
CHILD = "orders-rdsgate"


def make_db(**proxy: Any) -> render.Database:
    """The example Database with spec.proxy fields changed (None removes one)."""
    obj = copy.deepcopy(EXAMPLE)
    obj["metadata"] |= {"uid": "db-uid", "generation": 3}
    for key, value in proxy.items():
        if value is None:
            obj["spec"]["proxy"].pop(key, None)
        else:
            obj["spec"]["proxy"][key] = value
    return render.Database(obj)


# Rendering


def test_the_hpa_is_a_valid_autoscaling_v2_object_for_the_deployment() -> None:
    db = make_db(autoscaling={"minReplicas": 3, "maxReplicas": 9})
    hpa = render.horizontal_pod_autoscaler(db)
    assert hpa is not None
    kubernetes_validate.validate(strip_none(hpa), "1.33.0", strict=True)
    assert (hpa["apiVersion"], hpa["kind"], hpa["metadata"]["name"]) == (
        "autoscaling/v2",
        HPA,
        CHILD,
    )
    (owner,) = hpa["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Database", "db-uid", True)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": CHILD,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    (metric,) = hpa["spec"]["metrics"]
    assert metric == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    assert render.horizontal_pod_autoscaler(make_db()) is None


def test_with_autoscaling_the_deployment_sets_replicas_only_when_created() -> None:
    db = make_db(replicas=7, autoscaling={"minReplicas": 3, "maxReplicas": 9})
    created = render.deployment(db, SETTINGS, "h", creating=True)
    applied = render.deployment(db, SETTINGS, "h")
    for dep in (created, applied):
        kubernetes_validate.validate(strip_none(dep), "1.33.0", strict=True)
    assert created["spec"]["replicas"] == 3  # minReplicas, not spec.proxy.replicas
    assert "replicas" not in applied["spec"]
    # The operator's apply is a merge patch of what it renders: an HPA's 6 stays.
    scaled = copy.deepcopy(created)
    scaled["spec"]["replicas"] = 6
    assert merge_patch(scaled, applied) == {}
    # Without autoscaling the operator owns replicas, created or not.
    plain = make_db(replicas=4)
    assert render.deployment(plain, SETTINGS, "h")["spec"]["replicas"] == 4
    assert merge_patch(scaled, render.deployment(plain, SETTINGS, "h")) == {"spec": {"replicas": 4}}


@pytest.mark.parametrize(
    ("replicas", "autoscaling", "pdb"),
    [
        (3, {"minReplicas": 1, "maxReplicas": 5}, False),
        (1, {"minReplicas": 2, "maxReplicas": 5}, True),
        (1, {"maxReplicas": 5}, True),  # minReplicas defaults to 2
        (1, None, False),
        (2, None, True),
    ],
)
def test_the_pdb_follows_min_replicas_with_autoscaling(
    replicas: int, autoscaling: dict[str, int] | None, pdb: bool
) -> None:
    found = render.pod_disruption_budget(make_db(replicas=replicas, autoscaling=autoscaling))
    assert (found is not None) is pdb
    if found is not None:
        kubernetes_validate.validate(strip_none(found), "1.33.0", strict=True)


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        (
            {"autoscaling": {"minReplicas": 4, "maxReplicas": 3}},
            "spec.proxy.autoscaling.maxReplicas (3) must be at least minReplicas (4)",
        ),
        (
            {"autoscaling": {"minReplicas": 0, "maxReplicas": 3}},
            "spec.proxy.autoscaling.minReplicas must be a whole number, 1 or more",
        ),
        (
            {"autoscaling": {"minReplicas": 1}},
            "spec.proxy.autoscaling.maxReplicas must be a whole number, 1 or more",
        ),
        (
            {"autoscaling": {"maxReplicas": 3}, "resources": {"requests": {"memory": "1Gi"}}},
            "set spec.proxy.resources.requests.cpu",
        ),
    ],
)
def test_an_autoscaling_spec_the_hpa_cannot_serve_is_refused(
    proxy: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSpec) as refused:
        render.horizontal_pod_autoscaler(make_db(**proxy))
    assert message in str(refused.value)


def test_a_cpu_limit_alone_will_do_the_api_server_defaults_the_request_to_it() -> None:
    db = make_db(autoscaling={"maxReplicas": 3}, resources={"limits": {"cpu": "500m"}})
    assert render.horizontal_pod_autoscaler(db) is not None
    # The defaults (no spec.proxy.resources) carry a CPU request.
    assert render.horizontal_pod_autoscaler(make_db(autoscaling={"maxReplicas": 3}, resources=None))


def test_the_crd_schema_checks_autoscaling() -> None:
    crd = yaml.safe_load((CRD_DIR / "databases.rdsgate.dev.yaml").read_text())
    version = crd["spec"]["versions"][0]
    validator = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    prop = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["proxy"][
        "properties"
    ]["autoscaling"]

    def errors(autoscaling: Any) -> list[str]:
        doc = copy.deepcopy(EXAMPLE)
        doc["spec"]["proxy"]["autoscaling"] = autoscaling
        return [e.message for e in validator.iter_errors(doc)]

    assert errors({"minReplicas": 3, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60}) == []
    assert errors({"minReplicas": 0, "maxReplicas": 6}) == ["0 is less than the minimum of 1"]
    assert errors({"minReplicas": 2}) == ["'maxReplicas' is a required property"]
    assert prop["properties"]["minReplicas"]["default"] == render.DEFAULT_REPLICAS
    assert prop["properties"]["targetCPUUtilizationPercentage"]["default"] == (
        render.DEFAULT_CPU_TARGET
    )
    (rule,) = prop["x-kubernetes-validations"]
    assert rule["rule"] == "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas"


def test_status_reports_the_replicas_the_hpa_asks_for() -> None:
    db = make_db(replicas=2, autoscaling={"minReplicas": 2, "maxReplicas": 8})
    dep = {
        "metadata": {"generation": 5},
        "spec": {"replicas": 6},
        "status": {"observedGeneration": 5, "replicas": 6, "updatedReplicas": 6}
        | {"readyReplicas": 4},
    }
    fields, conditions = render.database_status(db, dep, [])
    assert (fields["replicas"], fields["readyReplicas"]) == (6, 4)
    ready, progressing, _ = conditions
    assert ready.status == "True"
    assert progressing.message == "6/6 proxies updated, 4/6 ready"
    dep["spec"]["replicas"] = 0  # scaled to 0 by hand: the HPA stops
    ready = render.database_status(db, dep, [])[1][0]
    assert (ready.reason, ready.status) == ("ScaledToZero", "False")
    assert "turns its HorizontalPodAutoscaler off" in ready.message


# The Reconciler against the API emulator


@pytest.fixture
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    """Not the session's: the operator process must not act on these namespaces."""
    return private_k8s_api


@pytest.fixture
def reconciler(k8s_api: ApiServer) -> Iterator[Reconciler]:
    with reconciler_for(k8s_api) as reconciler:
        yield reconciler


def writes_during(k8s_api: ApiServer, fn: Callable[[], object]) -> list[tuple[str, str]]:
    before = len(k8s_api.emulator.writes)
    fn()
    return k8s_api.emulator.writes[before:]


def autoscaled(namespace: str, **autoscaling: int) -> dict[str, Any]:
    db = example("database.yaml", namespace)
    db["spec"]["proxy"]["autoscaling"] = autoscaling
    return db


def replicas(api: Api, namespace: str) -> int:
    dep = api.get("Deployment", namespace, CHILD)
    assert dep is not None
    return int(dep["spec"]["replicas"])


def scale_like_the_hpa(api: Api, namespace: str, n: int) -> None:
    """What the HPA controller does when the CPU is over target: another client sets the
    Deployment's replicas; then the Deployment controller reports them ready."""
    api.patch("Deployment", namespace, CHILD, {"spec": {"replicas": n}})
    dep = api.get("Deployment", namespace, CHILD)
    assert dep is not None
    status = {"observedGeneration": dep["metadata"]["generation"], "replicas": n}
    status |= {"updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}
    api.patch("Deployment", namespace, CHILD, {"status": status}, sub="status")


def test_the_hpa_is_created_and_its_scaling_survives_reconciles_and_resyncs(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    api.create(autoscaled(namespace, minReplicas=3, maxReplicas=10))
    reconciler.reconcile_database(namespace, "orders")
    hpa = api.get(HPA, namespace, CHILD)
    assert hpa is not None
    db = api.get("Database", namespace, "orders")
    assert db is not None
    assert [r["uid"] for r in hpa["metadata"]["ownerReferences"]] == [db["metadata"]["uid"]]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["scaleTargetRef"]["name"] == CHILD
    assert replicas(api, namespace) == 3  # created at minReplicas, not spec.proxy.replicas 2
    assert api.get("PodDisruptionBudget", namespace, CHILD) is not None

    scale_like_the_hpa(api, namespace, 7)
    # A reconcile (what a watch event of that write triggers) and a resync leave it alone.
    wrote = writes_during(k8s_api, lambda: reconciler.reconcile_database(namespace, "orders"))
    assert not [w for w in wrote if w[1].startswith("deployments/")], wrote
    reconciler.resync_access(namespace, 0)
    reconciler.reconcile_database(namespace, "orders")
    assert replicas(api, namespace) == 7
    status = (api.get("Database", namespace, "orders") or {})["status"]
    assert (status["replicas"], status["readyReplicas"]) == (7, 7)
    ready = Api.condition(api.get("Database", namespace, "orders"), "Ready")
    assert ready is not None and ready["status"] == "True"

    # A config change rolls the proxies (a new template) and still keeps the HPA's count.
    template_before = (api.get("Deployment", namespace, CHILD) or {})["spec"]["template"]
    api.patch("Database", namespace, "orders", {"spec": {"proxy": {"maxConnections": 200}}})
    reconciler.reconcile_database(namespace, "orders")
    dep = api.get("Deployment", namespace, CHILD)
    assert dep is not None
    assert dep["spec"]["template"] != template_before
    assert dep["spec"]["replicas"] == 7


def test_a_hand_edited_hpa_is_put_back(reconciler: Reconciler, api: Api, namespace: str) -> None:
    api.create(autoscaled(namespace, minReplicas=2, maxReplicas=4))
    reconciler.reconcile_database(namespace, "orders")
    want = (api.get(HPA, namespace, CHILD) or {})["spec"]
    api.patch(HPA, namespace, CHILD, {"spec": {"maxReplicas": 40, "metrics": []}})
    reconciler.reconcile_database(namespace, "orders")  # what the periodic resync runs
    assert (api.get(HPA, namespace, CHILD) or {})["spec"] == want


def test_turning_autoscaling_off_deletes_the_hpa_and_replicas_apply_again(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    api.create(autoscaled(namespace, minReplicas=1, maxReplicas=5))
    reconciler.reconcile_database(namespace, "orders")
    assert api.get(HPA, namespace, CHILD) is not None
    assert api.get("PodDisruptionBudget", namespace, CHILD) is None  # minReplicas 1
    scale_like_the_hpa(api, namespace, 4)

    api.patch("Database", namespace, "orders", {"spec": {"proxy": {"autoscaling": None}}})
    reconciler.reconcile_database(namespace, "orders")
    assert api.get(HPA, namespace, CHILD) is None
    assert replicas(api, namespace) == 2  # spec.proxy.replicas again
    assert api.get("PodDisruptionBudget", namespace, CHILD) is not None

    # On again: the HPA comes back and the Deployment keeps the count it has until the HPA
    # changes it (no jump to minReplicas on an existing Deployment).
    api.patch(
        "Database",
        namespace,
        "orders",
        {"spec": {"proxy": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}}},
    )
    reconciler.reconcile_database(namespace, "orders")
    assert api.get(HPA, namespace, CHILD) is not None
    assert replicas(api, namespace) == 2
    assert api.get("PodDisruptionBudget", namespace, CHILD) is None


def test_an_impossible_autoscaling_spec_is_a_condition_and_changes_nothing(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    api.create(example("database.yaml", namespace))
    reconciler.reconcile_database(namespace, "orders")
    api.patch(
        "Database",
        namespace,
        "orders",
        {"spec": {"proxy": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}},
    )
    wrote = writes_during(k8s_api, lambda: reconciler.reconcile_database(namespace, "orders"))
    assert [w for w in wrote if not w[1].startswith(("databases/", "events/"))] == []
    degraded = Api.condition(api.get("Database", namespace, "orders"), "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "maxReplicas (2) must be at least minReplicas (5)" in degraded["message"]
    assert api.get(HPA, namespace, CHILD) is None
    assert replicas(api, namespace) == 2

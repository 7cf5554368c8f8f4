"""DatabaseDiscovery through the real operator, the Kubernetes API emulator and the lab's moto.

One `rdsgate-operator` process per module, on an API emulator of the module's own (no other
operator writes the DatabaseDiscoveries' status), with the lab's AWS in its environment
(`AWS_ENDPOINT_URL`, the lab admin's keys): the discoverer makes real botocore calls
(DescribeDBProxies, DescribeDBProxyEndpoints, ListTagsForResource, STS AssumeRole) against
moto and the lab's endpoint extension. Each test tags its proxies with a value of its own
and deletes its DatabaseDiscovery at the end, so the daemons of earlier tests neither see
its proxies nor call AWS behind a later test's back.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdsgate.lab.aws import AwsLab, DbProxy, policy_document, trust_policy_document
from rdsgate.operator.inventory import DISCOVERY_ACTIONS
from tests.fixtures.k8s import Api, ApiError, ApiServer, OperatorProcess, start_operator, wait_for

KIND = "DatabaseDiscovery"
API_VERSION = "rdsgate.dev/v1alpha1"


@pytest.fixture(scope="module")
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    return private_k8s_api


@pytest.fixture(scope="module")
def operator(
    k8s_api: ApiServer, aws: AwsLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = start_operator(
        k8s_api,
        tmp_path_factory.mktemp("discovery-operator"),
        "--resync-interval",
        "600",
        "--diagnose-interval",
        "600",
        environment=aws.env(aws.admin.credentials),
    )
    try:
        yield op
    finally:
        op.stop()


class Lab:
    """One test's proxies (tagged `test=<id>`), its DatabaseDiscoveries and waits."""

    def __init__(self, aws: AwsLab, api: Api, ns: str, op: OperatorProcess) -> None:
        self.aws, self.api, self.ns, self.op = aws, api, ns, op
        self.id = os.urandom(3).hex()
        self.discoveries: list[str] = []

    def proxy(self, name: str, family: str = "POSTGRESQL", **tags: str) -> DbProxy:
        full = f"{name}-{self.id}"
        secret = self.aws.create_secret(f"{full}-login", "app", "secret-pw")
        return self.aws.create_db_proxy(
            full, [secret], engine_family=family, tags={"test": self.id, **tags}
        )

    def discovery(self, name: str = "prod", **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "aws": {"regions": [self.aws.region]},
            "match": {"tags": {"test": self.id}},
            "interval": "1s",
            "deletionGracePeriod": "2s",
        }
        for key, value in spec.items():
            if isinstance(value, dict) and isinstance(body.get(key), dict):
                body[key] = {**body[key], **value}
            else:
                body[key] = value
        self.discoveries.append(name)
        return self.api.create(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": name, "namespace": self.ns},
                "spec": body,
            }
        )

    def get(self, name: str = "prod") -> dict[str, Any] | None:
        return self.api.get(KIND, self.ns, name)

    def condition(self, type_: str, name: str = "prod") -> dict[str, Any]:
        return Api.condition(self.get(name), type_) or {}

    def wait(self, probe: Callable[[], Any], what: str, timeout: float = 20) -> Any:
        return wait_for(probe, what, timeout, self.diagnostics)

    def diagnostics(self) -> str:
        """What the discoveries say, their Databases' names and annotations, the log."""
        found = {name: (self.get(name) or {}).get("status") for name in self.discoveries}
        dbs = {n: d["metadata"].get("annotations") for n, d in self.databases().items()}
        return f"discoveries: {json.dumps(found)}\ndatabases: {dbs}\n{self.op.tail()}"

    def wait_condition(
        self, type_: str, status: str, reason: str | None = None, name: str = "prod"
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            c = self.condition(type_, name)
            ok = c.get("status") == status and (reason is None or c.get("reason") == reason)
            return c if ok else None

        found: dict[str, Any] = self.wait(probe, f"{type_}={status} ({reason}) on {name}")
        return found

    def database(self, name: str) -> dict[str, Any] | None:
        return self.api.get("Database", self.ns, name)

    def databases(self) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.api.objects("Database", self.ns)}

    def events(self, reason: str) -> list[str]:
        return [e["message"] for e in self.api.events(self.ns) if e.get("reason") == reason]


@pytest.fixture
def lab(aws: AwsLab, api: Api, namespace: str, operator: OperatorProcess) -> Iterator[Lab]:
    lab = Lab(aws, api, namespace, operator)
    try:
        yield lab
    finally:
        for name in lab.discoveries:
            with contextlib.suppress(ApiError):  # already gone
                api.delete(KIND, namespace, name)
        for name in lab.discoveries:
            wait_for(
                lambda n=name: lab.get(n) is None,  # type: ignore[misc]
                f"DatabaseDiscovery {name} to be deleted",
                20,
                operator.tail,
            )


def test_tags_names_and_engine_families_select_proxies_and_endpoints(lab: Lab) -> None:
    orders = lab.proxy("orders", env="prod", team="shop", **{"Cost Center": "R&D 42"})
    lab.proxy("orders-dev", env="dev", team="shop")  # tag mismatch
    lab.proxy("billing", env="prod", team="money")  # name mismatch
    lab.proxy("orders-my", family="MYSQL", env="prod", team="shop")  # engine
    reader_host = lab.aws.create_db_proxy_endpoint(orders.name, f"reporting-{lab.id}")
    lab.discovery(match={"tags": {"env": "prod", "team": "*"}, "names": ["orders-*"]})

    rw_name, ro_name = orders.name, f"{orders.name}-reporting-{lab.id}"
    lab.wait(lambda: {rw_name, ro_name} <= set(lab.databases()), "both Databases")
    lab.wait_condition("Synced", "True")
    dbs = lab.databases()
    assert set(dbs) == {rw_name, ro_name}
    rw, ro = dbs[rw_name], dbs[ro_name]
    assert rw["spec"]["endpoint"] == f"{orders.endpoint}:5432"
    assert ro["spec"]["endpoint"] == f"{reader_host}:5432"
    assert rw["spec"]["aws"] == {
        "region": lab.aws.region,
        "accountId": lab.aws.account_id,
        "proxyResourceId": orders.resource_id,
    }
    assert rw["metadata"]["labels"] | {} == {
        "test": lab.id,
        "env": "prod",
        "team": "shop",
        "Cost-Center": "R-D-42",
        "rdsgate.dev/discovered-by": "prod",
        "rdsgate.dev/endpoint-role": "read-write",
        "rdsgate.dev/aws-proxy-name": orders.name,
    }
    assert ro["metadata"]["labels"]["rdsgate.dev/endpoint-role"] == "read-only"
    owner = rw["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (KIND, "prod", True)

    status = (lab.get() or {})["status"]
    assert status["found"] == 2 and status["databases"] == 2
    assert status["created"] == sorted([rw_name, ro_name])
    assert status["skipped"] == [
        {
            "proxy": f"orders-my-{lab.id}",
            "reason": "engine family MYSQL is not in spec.match.engineFamilies",
        }
    ]
    assert status["lastSyncTime"]
    assert lab.condition("Ready")["status"] == "True"
    assert len(lab.events("DatabaseCreated")) == 2

    # The Database reconciler takes them on like hand-written ones: proxies get rendered.
    lab.wait(lambda: lab.api.get("Deployment", lab.ns, f"{ro_name}-rdsgate"), "the proxies")


def test_tag_change_updates_labels_and_gone_proxies_are_deleted_after_grace(lab: Lab) -> None:
    orders = lab.proxy("orders", env="prod", tier="gold")
    # Grace long enough to see the mark on a loaded machine before the deletion.
    lab.discovery(deletionGracePeriod="5s")
    db = lab.wait(lambda: lab.database(orders.name), "the Database")
    assert db["metadata"]["labels"]["tier"] == "gold"

    rds = lab.aws.client("rds")
    rds.add_tags_to_resource(ResourceName=orders.arn, Tags=[{"Key": "env", "Value": "staging"}])
    rds.remove_tags_from_resource(ResourceName=orders.arn, TagKeys=["tier"])

    def relabelled() -> bool:
        labels = (lab.database(orders.name) or {}).get("metadata", {}).get("labels", {})
        return labels.get("env") == "staging" and "tier" not in labels

    lab.wait(relabelled, "the labels to follow the tags")

    # Gone from AWS: Ready=False GoneFromAWS on the Database during the grace period, then
    # deleted.
    rds.delete_db_proxy(DBProxyName=orders.name)

    def gone() -> dict[str, Any] | None:
        c = Api.condition(lab.database(orders.name), "Ready") or {}
        return c if c.get("reason") == "GoneFromAWS" else None

    def listed() -> list[str] | None:
        status = (lab.get() or {}).get("status") or {}
        return [g["database"] for g in status.get("goneFromAWS") or []] or None

    # The discovery's status lists it in the round that marks it, before the Database's
    # reconcile shows the condition.
    assert lab.wait(listed, "the discovery's status to list the gone Database") == [orders.name]
    ready = lab.wait(gone, "Ready=False GoneFromAWS on the Database")
    assert ready["status"] == "False"
    assert "no longer found" in ready["message"]
    lab.wait(lambda: lab.database(orders.name) is None, "the Database to be deleted")
    assert lab.events("GoneFromAWS") and lab.events("DatabaseDeleted")


def test_a_proxy_that_comes_back_in_time_is_kept(lab: Lab) -> None:
    orders = lab.proxy("orders", env="prod")
    lab.discovery(deletionGracePeriod="1h", match={"tags": {"env": "prod"}})
    lab.wait(lambda: lab.database(orders.name), "the Database")
    rds = lab.aws.client("rds")
    rds.add_tags_to_resource(ResourceName=orders.arn, Tags=[{"Key": "env", "Value": "dev"}])
    gone_key = "rdsgate.dev/gone-from-aws-since"

    def annotations() -> dict[str, str]:
        return dict((lab.database(orders.name) or {}).get("metadata", {}).get("annotations", {}))

    lab.wait(lambda: gone_key in annotations(), "the Database to be marked gone")
    rds.add_tags_to_resource(ResourceName=orders.arn, Tags=[{"Key": "env", "Value": "prod"}])
    lab.wait(lambda: gone_key not in annotations(), "the mark to go")
    lab.wait(
        lambda: (
            (Api.condition(lab.database(orders.name), "Ready") or {}).get("reason") != "GoneFromAWS"
        ),
        "the Database's Ready to leave GoneFromAWS",
    )


def test_a_hand_made_database_is_a_conflict_and_left_alone(lab: Lab) -> None:
    orders = lab.proxy("orders")
    hand_made = {
        "apiVersion": API_VERSION,
        "kind": "Database",
        "metadata": {"name": orders.name, "namespace": lab.ns, "labels": {"mine": "yes"}},
        "spec": {"endpoint": "db.example.com:5432", "aws": {"region": lab.aws.region}},
    }
    lab.api.create(hand_made)
    before = lab.database(orders.name)
    assert before is not None
    lab.discovery()
    ready = lab.wait_condition("Ready", "False", "NameConflict")
    assert f"Database {orders.name!r} exists and is not managed by this" in ready["message"]
    (conflict,) = (lab.get() or {})["status"]["conflicts"]
    assert conflict["database"] == orders.name
    after = lab.database(orders.name) or {}
    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"] == {"mine": "yes"}
    assert "ownerReferences" not in after["metadata"]
    # Deleting the discovery leaves it too.
    lab.api.delete(KIND, lab.ns, "prod")
    lab.wait(lambda: lab.get() is None, "the discovery to go")
    assert lab.database(orders.name) is not None


def _discovery_role(aws: AwsLab, actions: tuple[str, ...], external_id: str | None) -> str:
    role = aws.create_role(
        f"discovery-{os.urandom(3).hex()}",
        trust_policy_document([aws.admin.arn], external_id=external_id),
        policies={
            "discovery": policy_document(
                {"Effect": "Allow", "Action": list(actions), "Resource": "*"}
            )
        },
    )
    return role.arn


def test_access_denied_names_the_permission_and_prints_the_policy(lab: Lab) -> None:
    lab.proxy("orders")
    lacking = tuple(a for a in DISCOVERY_ACTIONS if a != "rds:DescribeDBProxyEndpoints")
    role = _discovery_role(lab.aws, lacking, "xid-1")
    with lab.aws.iam_enforced():
        lab.discovery(aws={"assumeRoleArn": role, "externalId": "xid-1"}, interval="1h")
        denied = lab.wait_condition("AccessDenied", "True")
    message = denied["message"]
    assert "rds:DescribeDBProxyEndpoints" in message
    policy = json.loads(message[message.index("{") :])
    actions = [s["Action"] for s in policy["Statement"]]
    allowed = {a for a in actions if isinstance(a, str)} | {
        a for group in actions if isinstance(group, list) for a in group
    }
    assert set(DISCOVERY_ACTIONS) <= allowed
    assert lab.condition("Ready")["status"] == "False"
    assert lab.databases() == {}
    assert any("rds:DescribeDBProxyEndpoints" in m for m in lab.events("AccessDenied"))


def test_assume_role_with_external_id(lab: Lab) -> None:
    orders = lab.proxy("orders")
    role = _discovery_role(lab.aws, DISCOVERY_ACTIONS, "xid-right")
    with lab.aws.iam_enforced():
        lab.discovery(aws={"assumeRoleArn": role, "externalId": "xid-wrong"}, interval="1h")
        denied = lab.wait_condition("AccessDenied", "True")
        assert "sts:AssumeRole" in denied["message"]
        assert lab.databases() == {}
        # A spec change is acted on at once (the interval is an hour).
        lab.api.patch(
            KIND,
            lab.ns,
            "prod",
            {"spec": {"aws": {"externalId": "xid-right"}}},
        )
        lab.wait(lambda: lab.database(orders.name), "the Database, read through the role")
        lab.wait_condition("AccessDenied", "False")
        lab.wait_condition("Synced", "True")


def test_throttling_backs_off_then_recovers(lab: Lab) -> None:
    orders = lab.proxy("orders")
    # Each read makes up to 3 attempts: two whole rounds are throttled.
    lab.aws.throttle("DescribeDBProxies", times=6)
    try:
        lab.discovery(interval="30s")
        throttled = lab.wait_condition("Throttled", "True")
        assert "next try in" in throttled["message"]
        lab.wait(lambda: lab.database(orders.name), "the Database after the back-off")
        lab.wait_condition("Throttled", "False")
        lab.wait_condition("Synced", "True")
    finally:
        lab.aws.clear_throttles()
    waits = [m for m in lab.events("Throttled") if "next try in" in m]
    assert any("next try in 1s" in m for m in waits), waits
    assert any("next try in 2s" in m for m in waits), waits
    assert lab.aws.throttled("DescribeDBProxies") >= 6


def test_the_discovery_with_its_databases_goes(lab: Lab) -> None:
    orders = lab.proxy("orders")
    lab.discovery()
    lab.wait(lambda: lab.database(orders.name), "the Database")
    lab.api.delete(KIND, lab.ns, "prod")
    lab.wait(lambda: lab.database(orders.name) is None, "its Databases to be collected")


def test_a_spec_change_is_acted_on_at_once(lab: Lab) -> None:
    orders = lab.proxy("orders")
    lab.discovery(match={"names": ["nothing-*"]}, interval="1h")
    lab.wait_condition("Synced", "True")
    assert lab.databases() == {}
    lab.api.patch(KIND, lab.ns, "prod", {"spec": {"match": {"names": ["orders-*"]}}})
    lab.wait(lambda: lab.database(orders.name), "the Database, well before the hour is up", 10)

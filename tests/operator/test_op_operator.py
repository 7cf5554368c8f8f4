"""The real `rdsgate-operator` process (kopf) against the Kubernetes API emulator over HTTP.

Each test works in a namespace of its own and asserts what `kubectl` would show: objects,
status conditions and Events. The emulator has no controllers, so where a test needs the
Deployment to report ready pods it writes the Deployment's status as the Deployment
controller would.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from rdsgate.proxy.access import AccessPolicy, parse_access, utcnow
from rdsgate.proxy.rbac import authorize
from tests.fixtures.k8s import (
    EXAMPLES_DIR,
    Api,
    ApiCall,
    ApiServer,
    OperatorProcess,
    operator_command,
    start_operator,
    wait_for,
)
from tests.operator.hooks import in_front_of, webhook

CHILDREN = [
    ("ServiceAccount", "orders-rdsgate"),
    ("ConfigMap", "orders-rdsgate"),
    ("Secret", "orders-rdsgate-tls"),
    ("Secret", "orders-rdsgate-access"),
    ("Deployment", "orders-rdsgate"),
    ("Service", "orders"),
    ("PodDisruptionBudget", "orders-rdsgate"),
]


def example(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / name).read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(spec)
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    return doc


def condition_is(
    api: Api, kind: str, ns: str, name: str, type_: str, status: str, reason: str | None = None
) -> dict[str, Any] | None:
    cond = Api.condition(api.get(kind, ns, name), type_)
    if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
        return cond
    return None


def access_policy(api: Api, ns: str, db: str = "orders") -> AccessPolicy | None:
    secret = api.get("Secret", ns, f"{db}-rdsgate-access")
    if secret is None:
        return None
    return parse_access(yaml.safe_load(Api.secret_text(secret, "access.yaml")))


def bundle(api: Api, ns: str) -> tuple[list[str], list[str]] | None:
    """The role names and grant identities in the orders access bundle."""
    policy = access_policy(api, ns)
    if policy is None:
        return None
    return [r.name for r in policy.file.roles], [g.identity for g in policy.file.grants]


def resource_version(api: Api, kind: str, ns: str, name: str) -> str:
    obj = api.get(kind, ns, name)
    assert obj is not None, f"{kind} {name} is missing"
    return str(obj["metadata"]["resourceVersion"])


def can_login(
    api: Api, ns: str, token_secret: str, user: str, dbname: str, db: str = "orders"
) -> bool:
    """What the proxy would decide, from the access Secret and the Token's Secret."""
    policy = access_policy(api, ns, db)
    secret = api.get("Secret", ns, token_secret)
    database = api.get("Database", ns, db)
    if policy is None or secret is None or database is None:
        return False
    grant = policy.grant_for_secret(Api.secret_text(secret, "token"))
    if grant is None:
        return False
    labels = database["metadata"].get("labels") or {}
    return authorize(policy, grant, labels, user, dbname, utcnow()).allowed


def deploy_orders(api: Api, ns: str, op: OperatorProcess) -> None:
    api.create(example("database.yaml", ns))
    api.create(example("role-app-rw.yaml", ns))
    api.create(example("token-orders-app.yaml", ns))
    for kind, name in CHILDREN:
        wait_for(partial(api.get, kind, ns, name), f"{kind} {name}", diagnostics=op.tail)
    wait_for(
        lambda: can_login(api, ns, "orders-app-db", "app", "orders"),
        "the token to be granted",
        diagnostics=op.tail,
    )


def mark_rolled_out(api: Api, ns: str) -> None:
    """What the Deployment controller and kubelets would report once the pods are ready."""
    dep = api.get("Deployment", ns, "orders-rdsgate")
    assert dep is not None
    n = dep["spec"]["replicas"]
    api.patch(
        "Deployment",
        ns,
        "orders-rdsgate",
        {
            "status": {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": n,
                "updatedReplicas": n,
                "readyReplicas": n,
                "availableReplicas": n,
            }
        },
        sub="status",
    )


def test_a_database_gets_its_proxies_and_reports_ready(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess
) -> None:
    ns, op = namespace, rdsgate_operator
    deploy_orders(api, ns, op)
    db = api.get("Database", ns, "orders")
    assert db is not None
    for kind, name in CHILDREN:
        child = api.get(kind, ns, name)
        assert child is not None
        assert child["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "rdsgate.dev/v1alpha1",
                "kind": "Database",
                "name": "orders",
                "uid": db["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    progressing = wait_for(
        lambda: condition_is(api, "Database", ns, "orders", "Progressing", "True", "RollingOut"),
        "Progressing",
        diagnostics=op.tail,
    )
    assert progressing["message"] == "0/2 proxies updated, 0/2 ready"
    assert condition_is(api, "Database", ns, "orders", "Ready", "False", "ProxiesNotReady")

    mark_rolled_out(api, ns)
    ready = wait_for(
        lambda: condition_is(api, "Database", ns, "orders", "Ready", "True"),
        "Ready",
        diagnostics=op.tail,
    )
    assert ready["reason"] == "ProxiesReady"
    assert ready["message"] == f"serving orders.{ns}.svc:5432"
    db = api.get("Database", ns, "orders")
    assert db is not None
    status = db["status"]
    assert status["readyReplicas"] == 2
    assert status["serviceName"] == "orders"
    assert status["observedGeneration"] == db["metadata"]["generation"]
    assert (status["roles"], status["grants"]) == (1, 1)
    assert Api.condition(db, "Degraded")["status"] == "False"  # type: ignore[index]
    assert Api.condition(db, "Progressing")["reason"] == "RolloutComplete"  # type: ignore[index]
    for cond in status["conditions"]:
        assert (
            cond["lastTransitionTime"]
            and cond["observedGeneration"] == db["metadata"]["generation"]
        )
    events = api.events(ns, "orders")
    assert [(e["type"], e["reason"]) for e in events] == [("Normal", "ProxiesReady")]
    assert events[0]["involvedObject"]["uid"] == db["metadata"]["uid"]
    # What the operator wrote is valid for Kubernetes 1.33, as stored and served.
    for obj in [*(api.get(kind, ns, name) for kind, name in CHILDREN), *api.events(ns)]:
        assert obj is not None
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_a_config_change_rolls_the_proxies_and_an_access_change_does_not(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess
) -> None:
    ns, op = namespace, rdsgate_operator
    deploy_orders(api, ns, op)

    def config_hash() -> str:
        dep = api.get("Deployment", ns, "orders-rdsgate")
        assert dep is not None
        return str(dep["spec"]["template"]["metadata"]["annotations"]["rdsgate.dev/config-hash"])

    before = config_hash()
    dep_rv = resource_version(api, "Deployment", ns, "orders-rdsgate")
    api.patch("Role", ns, "app-rw", {"spec": {"allow": {"databaseUsers": ["app_reports"]}}})
    wait_for(
        lambda: not can_login(api, ns, "orders-app-db", "app", "orders"),
        "the Role edit to reach the access Secret",
        diagnostics=op.tail,
    )
    assert can_login(api, ns, "orders-app-db", "app_reports", "orders")
    assert resource_version(api, "Deployment", ns, "orders-rdsgate") == dep_rv

    api.patch("Database", ns, "orders", {"spec": {"proxy": {"maxConnections": 7}}})

    def config_text() -> str:
        config_map = api.get("ConfigMap", ns, "orders-rdsgate")
        return str(config_map["data"]["config.yaml"]) if config_map else ""

    wait_for(lambda: "maxConnections: 7" in config_text(), "the new config", diagnostics=op.tail)
    wait_for(lambda: config_hash() != before, "the pods to roll", diagnostics=op.tail)


def test_drift_is_repaired(api: Api, namespace: str, rdsgate_operator: OperatorProcess) -> None:
    ns, op = namespace, rdsgate_operator
    deploy_orders(api, ns, op)
    service = api.get("Service", ns, "orders")
    deployment = api.get("Deployment", ns, "orders-rdsgate")
    assert service is not None and deployment is not None
    edited = copy.deepcopy(service["spec"]["ports"])
    edited[0]["port"] = 15432
    api.patch("Service", ns, "orders", {"spec": {"ports": edited}})
    api.delete("Deployment", ns, "orders-rdsgate")

    def repaired() -> bool:
        svc = api.get("Service", ns, "orders")
        dep = api.get("Deployment", ns, "orders-rdsgate")
        return bool(
            svc
            and dep
            and svc["spec"]["ports"] == service["spec"]["ports"]
            and dep["metadata"]["uid"] != deployment["metadata"]["uid"]
        )

    wait_for(repaired, "the Service port and the Deployment to come back", diagnostics=op.tail)
    svc = api.get("Service", ns, "orders")
    dep = api.get("Deployment", ns, "orders-rdsgate")
    assert svc is not None and dep is not None
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("postgres", 5432),
        ("metrics", 9187),
    ]
    assert dep["spec"] == deployment["spec"]


def test_roles_tokens_and_labels_recompile_access(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess
) -> None:
    ns, op = namespace, rdsgate_operator
    deploy_orders(api, ns, op)
    token_secret = api.get("Secret", ns, "orders-app-db")
    assert token_secret is not None
    assert Api.secret_text(token_secret, "PGHOST") == f"orders.{ns}.svc"
    assert Api.secret_text(token_secret, "PGPASSWORD") == Api.secret_text(token_secret, "token")
    token = wait_for(
        lambda: condition_is(api, "Token", ns, "orders-app", "Ready", "True"),
        "the Token to be Ready",
        diagnostics=op.tail,
    )
    assert token["message"] == f"{ns}/orders-app may log in to orders"
    role = wait_for(
        lambda: condition_is(api, "Role", ns, "app-rw", "Ready", "True"),
        "the Role to be Ready",
        diagnostics=op.tail,
    )
    assert role["message"] == "selects 1 Database(s): orders"

    # The Database leaves the Role's selector, then comes back.
    api.patch("Database", ns, "orders", {"metadata": {"labels": {"env": "staging"}}})
    wait_for(
        lambda: not can_login(api, ns, "orders-app-db", "app", "orders"),
        "relabelling to drop the grant",
        diagnostics=op.tail,
    )
    wait_for(
        lambda: condition_is(api, "Token", ns, "orders-app", "Ready", "False", "NoDatabase"),
        "the Token to say why",
        diagnostics=op.tail,
    )
    api.patch("Database", ns, "orders", {"metadata": {"labels": {"env": "prod"}}})
    wait_for(
        lambda: can_login(api, ns, "orders-app-db", "app", "orders"),
        "relabelling to restore the grant",
        diagnostics=op.tail,
    )

    # Deleting a Token removes its grant and its Secret; deleting a Role, every grant it made.
    api.create(example("token-oncall.yaml", ns, roles=["app-rw"], ttl=None))
    both = (["app-rw"], [f"{ns}/oncall-alice", f"{ns}/orders-app"])
    wait_for(lambda: bundle(api, ns) == both, "a second grant", diagnostics=op.tail)
    api.delete("Token", ns, "orders-app")
    assert api.get("Secret", ns, "orders-app-db") is None
    one = (["app-rw"], [f"{ns}/oncall-alice"])
    wait_for(lambda: bundle(api, ns) == one, "the grant to leave", diagnostics=op.tail)
    api.delete("Role", ns, "app-rw")
    wait_for(lambda: bundle(api, ns) == ([], []), "the Role's grants to leave", diagnostics=op.tail)
    wait_for(
        lambda: condition_is(
            api, "Token", ns, "oncall-alice", "Ready", "False", "ReferenceNotFound"
        ),
        "the Token to report the missing Role",
        diagnostics=op.tail,
    )


def test_secrets_the_access_compile_wrote_are_put_back(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess
) -> None:
    ns, op = namespace, rdsgate_operator
    deploy_orders(api, ns, op)
    # An access Secret edited by hand is written again at once.
    empty = base64.b64encode(b"version: 1\n").decode()
    api.patch("Secret", ns, "orders-rdsgate-access", {"data": {"access.yaml": empty}})
    wait_for(
        lambda: can_login(api, ns, "orders-app-db", "app", "orders"),
        "the access Secret to be repaired",
        diagnostics=op.tail,
    )
    # A Token Secret deleted is a rotation: a new secret, and only the new one logs in.
    old = api.get("Secret", ns, "orders-app-db")
    assert old is not None
    api.delete("Secret", ns, "orders-app-db")

    def rotated() -> bool:
        new = api.get("Secret", ns, "orders-app-db")
        return bool(
            new
            and Api.secret_text(new, "token") != Api.secret_text(old, "token")
            and can_login(api, ns, "orders-app-db", "app", "orders")
        )

    wait_for(rotated, "the Token Secret to be written anew", diagnostics=op.tail)
    policy = access_policy(api, ns)
    assert policy is not None and policy.grant_for_secret(Api.secret_text(old, "token")) is None


def test_a_token_the_api_refuses_leaves_its_namespace_working(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess, k8s_api: ApiServer
) -> None:
    ns, op = namespace, rdsgate_operator
    denied = 'admission webhook "secrets.policy.example.com" denied the request: not today'

    def refuse(call: ApiCall, body: Any) -> str | None:
        name = call.name or ((body or {}).get("metadata") or {}).get("name")
        stuck = (call.namespace, call.resource, name) == (ns, "secrets", "stuck-rdsgate")
        return denied if stuck else None

    with in_front_of(k8s_api, webhook(k8s_api, refuse)):
        api.create(
            {"kind": "Token", "metadata": {"name": "stuck", "namespace": ns}}
            | {"spec": {"roles": ["app-rw"]}}
        )
        deploy_orders(api, ns, op)  # the Database gets its proxies, orders-app its grant
        stuck = wait_for(
            lambda: condition_is(api, "Token", ns, "stuck", "Ready", "False", "ApplyFailed"),
            "the refused Token to say so",
            diagnostics=op.tail,
        )
        assert denied in stuck["message"]
        assert condition_is(api, "Database", ns, "orders", "Degraded", "False")
        assert bundle(api, ns) == (["app-rw"], [f"{ns}/orders-app"])
    # Once the API takes it, the next compile (any change in the namespace) grants it.
    api.create({"kind": "Role", "metadata": {"name": "nudge", "namespace": ns}, "spec": {}})
    wait_for(
        lambda: condition_is(api, "Token", ns, "stuck", "Ready", "True", "Granted"),
        "the Token to be granted",
        diagnostics=op.tail,
    )


def test_a_token_expires(api: Api, namespace: str, rdsgate_operator: OperatorProcess) -> None:
    ns, op = namespace, rdsgate_operator
    api.create(example("database.yaml", ns))
    api.create(example("role-app-rw.yaml", ns))
    api.create(example("token-orders-app.yaml", ns, ttl="3s"))
    wait_for(
        lambda: can_login(api, ns, "orders-app-db", "app", "orders"),
        "the grant",
        diagnostics=op.tail,
    )
    # The status is written right after the access Secrets, in the same compile.
    token = wait_for(
        lambda: (
            (t := api.get("Token", ns, "orders-app"))
            and (t.get("status") or {}).get("expiresAt")
            and t
        ),
        "the Token's status",
        diagnostics=op.tail,
    )
    expires_at = token["status"]["expiresAt"]
    policy = access_policy(api, ns)
    assert policy is not None
    assert policy.file.grants[0].expires_at is not None
    assert policy.file.grants[0].expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") == expires_at

    expired = wait_for(
        lambda: condition_is(api, "Token", ns, "orders-app", "Expired", "True"),
        "the Token to expire",
        timeout=15,
        diagnostics=op.tail,
    )
    assert expired["reason"] == "TTLElapsed"
    assert expired["message"].startswith(f"the grant expired at {expires_at}")
    assert condition_is(api, "Token", ns, "orders-app", "Ready", "False", "Expired")
    policy = access_policy(api, ns)
    assert policy is not None and policy.file.grants == []
    after = api.get("Token", ns, "orders-app")
    assert after is not None and after["status"]["expiresAt"] == expires_at
    assert ("Warning", "TTLElapsed") in [
        (e["type"], e["reason"]) for e in api.events(ns, "orders-app")
    ]
    api.delete("Token", ns, "orders-app")
    wait_for(
        lambda: api.get("Token", ns, "orders-app") is None,
        "the finalizer to be released",
        diagnostics=op.tail,
    )


def test_invalid_input_is_reported_not_crashed_on(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess
) -> None:
    ns, op = namespace, rdsgate_operator
    bad_db = example("database.yaml", ns, endpoint="orders-without-port")
    bad_db["metadata"]["name"] = "broken"
    api.create(bad_db)
    api.create(
        {
            "kind": "Role",
            "metadata": {"name": "regex", "namespace": ns},
            "spec": {
                "allow": {"databases": {}, "databaseUsers": ["^app_[$"], "databaseNames": ["*"]}
            },
        }
    )
    api.create(
        {
            "kind": "Token",
            "metadata": {"name": "lost", "namespace": ns},
            "spec": {"roles": ["no-such-role"]},
        }
    )

    degraded = wait_for(
        lambda: condition_is(api, "Database", ns, "broken", "Degraded", "True", "InvalidSpec"),
        "the Database problem",
        diagnostics=op.tail,
    )
    assert degraded["message"].startswith("spec.endpoint: String should match pattern")
    role = wait_for(
        lambda: condition_is(api, "Role", ns, "regex", "Ready", "False", "InvalidSpec"),
        "the Role problem",
        diagnostics=op.tail,
    )
    assert role["message"].startswith(
        "spec.allow.databaseUsers.0: invalid regular expression '^app_[$'"
    )
    token = wait_for(
        lambda: condition_is(api, "Token", ns, "lost", "Ready", "False", "ReferenceNotFound"),
        "the Token problem",
        diagnostics=op.tail,
    )
    assert token["message"] == (
        f"Role 'no-such-role' does not exist in namespace '{ns}': "
        "create it or remove it from spec.roles"
    )
    for obj in (degraded, role, token):
        assert "Traceback" not in obj["message"]

    def warnings() -> set[tuple[str, str]]:
        return {
            (e["involvedObject"]["name"], e["reason"])
            for e in api.events(ns)
            if e["type"] == "Warning"
        }

    wait_for(
        lambda: (
            {("broken", "InvalidSpec"), ("regex", "InvalidSpec"), ("lost", "ReferenceNotFound")}
            <= warnings()
        ),
        "Warning Events",
        diagnostics=op.tail,
    )
    assert api.get("Deployment", ns, "broken-rdsgate") is None

    # Fixing the input clears the problems; the operator kept working all along.
    api.patch("Database", ns, "broken", {"spec": {"endpoint": "orders.example.com:5432"}})
    wait_for(
        lambda: api.get("Deployment", ns, "broken-rdsgate"),
        "the fixed Database's proxies",
        diagnostics=op.tail,
    )
    wait_for(
        lambda: condition_is(api, "Database", ns, "broken", "Degraded", "False"),
        "Degraded to clear",
        diagnostics=op.tail,
    )
    api.create({"kind": "Role", "metadata": {"name": "no-such-role", "namespace": ns}, "spec": {}})
    wait_for(
        lambda: condition_is(api, "Token", ns, "lost", "Ready", "False", "NoDatabase"),
        "the Token to find its Role",
        diagnostics=op.tail,
    )
    assert op.process.poll() is None


def test_deleting_a_database_removes_its_children(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess
) -> None:
    ns, op = namespace, rdsgate_operator
    deploy_orders(api, ns, op)
    api.delete("Database", ns, "orders")
    wait_for(
        lambda: api.get("Database", ns, "orders") is None,
        "the Database to go (kopf releases its finalizer)",
        diagnostics=op.tail,
    )
    for kind, name in CHILDREN:
        assert api.get(kind, ns, name) is None, f"{kind} {name} survived its Database"
    assert api.get("Secret", ns, "orders-app-db") is not None  # the Token's, not the Database's
    wait_for(
        lambda: condition_is(api, "Token", ns, "orders-app", "Ready", "False", "ReferenceNotFound"),
        "the Token to notice",
        diagnostics=op.tail,
    )


def test_the_operator_logs_json_lines(rdsgate_operator: OperatorProcess) -> None:
    lines = rdsgate_operator.log().splitlines()
    assert lines
    parsed = rdsgate_operator.log_lines()
    assert len(parsed) == len(lines)
    assert parsed[0]["message"].startswith("starting rdsgate-operator")
    assert all({"message", "severity", "timestamp"} <= set(p) for p in parsed)


def test_a_namespaced_operator_leaves_other_namespaces_alone(tmp_path: Path) -> None:
    server = ApiServer().start()
    try:
        api = Api(server.url)
        for ns in ("team-a1", "team-b1"):
            api.create({"kind": "Namespace", "metadata": {"name": ns}})
        api.create(example("database.yaml", "team-b1"))
        op = start_operator(server, tmp_path, "--namespace", "team-a*", "--log-format", "text")
        try:
            api.create(example("database.yaml", "team-a1"))
            wait_for(
                lambda: api.get("Deployment", "team-a1", "orders-rdsgate"),
                "team-a1's proxies",
                diagnostics=op.tail,
            )
            ignored = api.get("Database", "team-b1", "orders")
            assert ignored is not None
            assert "status" not in ignored
            assert not ignored["metadata"].get("finalizers")
            assert api.objects("Deployment", "team-b1") == []
            assert op.log().startswith("[")  # text, not JSON
        finally:
            op.stop()
    finally:
        server.stop()


def test_an_unusable_ca_secret_stops_the_operator_with_a_message(tmp_path: Path) -> None:
    server = ApiServer().start()
    try:
        api = Api(server.url)
        junk = {"tls.crt": "junk"}
        api.create(
            {
                "kind": "Secret",
                "metadata": {"name": "rdsgate-ca", "namespace": "ops"},
                "stringData": junk,
            }
        )
        env = {**os.environ, "KUBECONFIG": str(server.kubeconfig(tmp_path / "kubeconfig"))}
        done = subprocess.run(
            [*operator_command(), "--operator-namespace", "ops"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        last = json.loads(done.stderr.strip().splitlines()[-1])
        assert last["severity"] == "error"
        assert last["message"] == (
            "cannot start: Secret ops/rdsgate-ca holds no usable CA (tls.crt and tls.key, PEM); "
            "delete it and the operator creates a new CA on its next start"
        )
        assert "Traceback" not in done.stderr
    finally:
        server.stop()


def test_the_ca_config_map_is_always_the_operators(
    api: Api, namespace: str, rdsgate_operator: OperatorProcess
) -> None:
    """People verify the proxies with `rdsgate-ca`: one made or edited by someone else is
    taken over, as Kubernetes keeps kube-root-ca.crt."""
    ns, op = namespace, rdsgate_operator
    forged = "-----BEGIN CERTIFICATE-----\nnot the rdsgate CA\n-----END CERTIFICATE-----\n"
    api.create(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "rdsgate-ca", "namespace": ns},
            "data": {"ca.crt": forged},
        }
    )
    api.create(example("database.yaml", ns))
    ca_secret = api.get("Secret", "rdsgate-system", "rdsgate-ca")
    assert ca_secret is not None
    real = base64.b64decode(ca_secret["data"]["tls.crt"]).decode()

    def ca_in_config_map() -> str | None:
        found = api.get("ConfigMap", ns, "rdsgate-ca")
        value = (found or {}).get("data", {}).get("ca.crt")
        return str(value) if value is not None else None

    wait_for(lambda: ca_in_config_map() == real, "the operator's CA in rdsgate-ca", 20, op.tail)
    taken = api.get("ConfigMap", ns, "rdsgate-ca")
    assert taken is not None
    assert taken["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rdsgate-operator"
    assert [r["name"] for r in taken["metadata"]["ownerReferences"]] == ["orders"]
    # Edited again, even with its label removed: put back.
    api.patch(
        "ConfigMap",
        ns,
        "rdsgate-ca",
        {
            "metadata": {"labels": {"app.kubernetes.io/managed-by": None}},
            "data": {"ca.crt": forged},
        },
    )
    wait_for(lambda: ca_in_config_map() == real, "the CA to be put back", 20, op.tail)

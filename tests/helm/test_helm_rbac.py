"""The chart's RBAC against what the operator really does: nothing missing, nothing extra.

The real `rdsgate-operator` process runs against the Kubernetes API emulator with the
environment the chart's Deployment gives it, through a scenario that reaches every API call
it makes: Databases, Roles and Tokens created, updated (IRSA role changed, a named
ServiceAccount, replicas down to 1, a cert-manager issuer set, changed and removed,
autoscaling on and off), drift repaired (an HPA too), a Token's ttl elapsing, deletion. The
emulator records each request as the API server's authorizer sees it (verb, group,
resource, subresource, namespace, name); then

- every request the operator made is allowed by the rules the chart binds to its
  ServiceAccount (Role rules only in their namespace), discovery URLs aside;
- every verb on every resource the chart grants was used, but for the short list below.

Run once cluster-wide (the default values: one ClusterRole) and once in namespaced mode
(`watchNamespaces`: a Role per namespace, a Role for the CA, a small ClusterRole).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import socket
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import kmock
import pytest
import yaml

from rdsgate.lab.aws import AwsLab
from tests.fixtures.k8s import (
    EXAMPLES_DIR,
    Api,
    ApiCall,
    ApiError,
    ApiServer,
    OperatorProcess,
    start_operator,
    wait_for,
)
from tests.helm.chart import (
    NAMESPACE,
    Atom,
    Grant,
    env_of,
    grants_for,
    is_discovery,
    one,
    operator_container,
    render,
)

#: Granted but never sent as a request, with the reason. Nothing else may be unused.
NOT_A_REQUEST = {
    # The API server checks `bind` on the roleRef'ed ClusterRole when the operator patches the
    # proxies' TokenReview binding (RBAC escalation prevention): it holds no
    # `create tokenreviews` itself, so without `bind` the patch is refused.
    ("rbac.authorization.k8s.io", "clusterroles", "bind"),
}

WATCHED = ("shop", "other")  # namespaced mode; the scenario runs in the first
USER = "test-token"  # the emulator's kubeconfig identity: the operator's requests


# The operator, configured by the chart


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def operator_environment(
    docs: list[dict[str, Any]], health_port: int, webhook_port: int
) -> dict[str, str]:
    """The Deployment's environment as the kubelet would give it, in this process's world:
    the downward API filled in, kopf's health endpoint and the webhooks on free loopback
    ports."""
    env: dict[str, str] = {}
    for name, value in env_of(operator_container(docs)).items():
        if isinstance(value, Mapping):
            field = value["fieldRef"]["fieldPath"]
            env[name] = {"metadata.namespace": NAMESPACE, "metadata.name": "rdsgate-0"}[field]
        else:
            env[name] = str(value)
    # kopf serves its health endpoint on every interface in the pod; here on loopback.
    url = urlsplit(env["RDSGATE_LIVENESS"])
    assert url.hostname and ipaddress.ip_address(url.hostname).is_unspecified, url
    env["RDSGATE_LIVENESS"] = urlunsplit(("http", f"127.0.0.1:{health_port}", url.path, "", ""))
    host, _, _ = env["RDSGATE_ADMISSION_LISTEN"].rpartition(":")
    assert ipaddress.ip_address(host).is_unspecified, env["RDSGATE_ADMISSION_LISTEN"]
    env["RDSGATE_ADMISSION_LISTEN"] = f"127.0.0.1:{webhook_port}"
    return env


@dataclass
class Run:
    docs: list[dict[str, Any]]
    calls: list[ApiCall]
    grants: list[Grant]


def example(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / name).read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(spec)
    return doc


def register_cert_manager(server: ApiServer) -> None:
    """cert-manager's Certificate API, as if cert-manager were installed."""
    server.emulator.resources["cert-manager.io/v1/certificates"] = kmock.ResourceInfo(
        kind="Certificate",
        singular="certificate",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames=set(),
        categories=set(),
        subresources={"status"},
    )


def certificate(api: Api, ns: str, name: str) -> dict[str, Any] | None:
    path = f"/apis/cert-manager.io/v1/namespaces/{ns}/certificates/{name}"
    try:
        found: dict[str, Any] = api.request("GET", path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return found


def condition(api: Api, kind: str, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    return Api.condition(api.get(kind, ns, name), type_)


def scenario(api: Api, op: OperatorProcess, binding: str, health_url: str, aws: AwsLab) -> None:
    """Everything the operator does, once: the calls it makes are the RBAC it needs."""
    ns = WATCHED[0]
    w = partial(wait_for, diagnostics=op.tail)

    # kopf's health endpoint, where the chart's probes point, answers once it has started.
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(health_url, timeout=5) as resp:  # noqa: S310 - loopback
                return bool(resp.status == 200)
        except OSError:
            return False

    w(healthy, "the health endpoint to answer 200")

    # The operator puts its CA into the webhook configurations the chart installed.
    def ca_bundles() -> bool:
        return all(
            hook["clientConfig"].get("caBundle")
            for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
            for hook in (api.get(kind, None, "rdsgate-tokens") or {"webhooks": [{}]})["webhooks"]
        )

    w(ca_bundles, "the caBundle of both webhook configurations")

    # Create: a Database with IRSA (generated ServiceAccount, PDB), one with a cert-manager
    # issuer and autoscaling (an HPA), a Role, a secret Token with a ttl and a ServiceAccount
    # Token.
    api.create({"kind": "ServiceAccount", "metadata": {"name": "orders-own", "namespace": ns}})
    api.create(example("database.yaml", ns))
    billing = example("database.yaml", ns)
    billing["metadata"]["name"] = "billing"
    billing["spec"]["proxy"] = {
        "replicas": 1,
        "issuerRef": {"name": "ca", "kind": "Issuer"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
    }
    api.create(billing)
    api.create(example("role-app-rw.yaml", ns))
    api.create(example("token-orders-app.yaml", ns, ttl="4s"))
    api.create(example("token-web-serviceaccount.yaml", ns))
    for kind, name in [
        ("Deployment", "orders-rdsgate"),
        ("PodDisruptionBudget", "orders-rdsgate"),
        ("ServiceAccount", "orders-rdsgate"),
        ("Service", "orders"),
        ("Secret", "orders-app-db"),
        ("Deployment", "billing-rdsgate"),
        ("HorizontalPodAutoscaler", "billing-rdsgate"),
    ]:
        w(partial(api.get, kind, ns, name), f"{kind} {name}")
    w(lambda: certificate(api, ns, "billing-rdsgate"), "billing's Certificate")
    w(
        lambda: (condition(api, "Token", ns, "web-sa", "Ready") or {}).get("status") is not None,
        "the ServiceAccount Token's status",
    )

    # The proxies' ServiceAccounts become the subjects of the TokenReview binding.
    def subjects() -> list[tuple[str, str]]:
        crb = api.request(
            "GET", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}"
        )
        return sorted((s["namespace"], s["name"]) for s in crb.get("subjects") or [])

    w(
        lambda: subjects() == [(ns, "billing-rdsgate"), (ns, "orders-rdsgate")],
        "the TokenReview binding's subjects",
    )

    # The Deployment controller reports the proxies ready: the Database says so, with an Event.
    dep = api.get("Deployment", ns, "orders-rdsgate")
    assert dep is not None
    n = dep["spec"]["replicas"]
    api.patch(
        "Deployment",
        ns,
        "orders-rdsgate",
        {
            "status": {"observedGeneration": dep["metadata"]["generation"], "replicas": n}
            | {"updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}
        },
        sub="status",
    )
    w(
        lambda: (condition(api, "Database", ns, "orders", "Ready") or {}).get("status") == "True",
        "orders Ready",
    )

    # Drift: a Service port, a PDB and an HPA edited by hand, the ServiceAccount's annotation
    # removed.
    service = api.get("Service", ns, "orders")
    assert service is not None
    ports = copy.deepcopy(service["spec"]["ports"])
    ports[0]["port"] = 15432
    api.patch("Service", ns, "orders", {"spec": {"ports": ports}})
    api.patch("PodDisruptionBudget", ns, "orders-rdsgate", {"spec": {"maxUnavailable": 2}})
    api.patch("HorizontalPodAutoscaler", ns, "billing-rdsgate", {"spec": {"maxReplicas": 9}})
    api.patch(
        "ServiceAccount",
        ns,
        "orders-rdsgate",
        {"metadata": {"annotations": {"eks.amazonaws.com/role-arn": None}}},
    )
    w(
        lambda: (
            (api.get("Service", ns, "orders") or {}).get("spec", {}).get("ports")
            == service["spec"]["ports"]
        ),
        "the Service port to come back",
    )
    w(
        lambda: (
            (api.get("PodDisruptionBudget", ns, "orders-rdsgate") or {})
            .get("spec", {})
            .get("maxUnavailable")
            == 1
        ),
        "the PDB to come back (resync)",
    )
    w(
        lambda: (
            (api.get("HorizontalPodAutoscaler", ns, "billing-rdsgate") or {})
            .get("spec", {})
            .get("maxReplicas")
            == 3
        ),
        "the HPA to come back (resync)",
    )
    w(
        lambda: (
            "eks.amazonaws.com/role-arn"
            in ((api.get("ServiceAccount", ns, "orders-rdsgate") or {}).get("metadata") or {}).get(
                "annotations", {}
            )
        ),
        "the IRSA annotation to come back (resync)",
    )

    # Updates: a named ServiceAccount (the generated one goes), one replica (the PDB goes),
    # a new issuer (the Certificate is patched), then no issuer (the Certificate goes), no
    # autoscaling (the HPA goes).
    api.patch(
        "Database",
        ns,
        "orders",
        {
            "spec": {
                "proxy": {"replicas": 1, "serviceAccount": {"roleArn": None, "name": "orders-own"}}
            }
        },
    )
    w(lambda: api.get("ServiceAccount", ns, "orders-rdsgate") is None, "the generated SA to go")
    w(lambda: api.get("PodDisruptionBudget", ns, "orders-rdsgate") is None, "the PDB to go")
    w(
        lambda: subjects() == [(ns, "billing-rdsgate"), (ns, "orders-own")],
        "the binding to follow the named ServiceAccount",
    )
    api.patch("Database", ns, "billing", {"spec": {"proxy": {"issuerRef": {"name": "other-ca"}}}})
    w(
        lambda: (
            (certificate(api, ns, "billing-rdsgate") or {})
            .get("spec", {})
            .get("issuerRef", {})
            .get("name")
            == "other-ca"
        ),
        "the Certificate to follow the issuer",
    )
    api.patch("Database", ns, "billing", {"spec": {"proxy": {"issuerRef": None}}})
    w(lambda: certificate(api, ns, "billing-rdsgate") is None, "the Certificate to go")
    api.patch("Database", ns, "billing", {"spec": {"proxy": {"autoscaling": None}}})
    w(lambda: api.get("HorizontalPodAutoscaler", ns, "billing-rdsgate") is None, "the HPA to go")

    # The ttl elapses.
    w(
        lambda: (
            (condition(api, "Token", ns, "orders-app", "Expired") or {}).get("status") == "True"
        ),
        "the Token to expire",
        timeout=20,
    )

    # Deletion: kopf releases its finalizers; the binding forgets the Databases.
    api.delete("Token", ns, "orders-app")
    api.delete("Database", ns, "orders")
    api.delete("Database", ns, "billing")
    w(lambda: api.get("Database", ns, "orders") is None, "orders to go")
    w(lambda: api.get("Token", ns, "orders-app") is None, "the Token to go")
    w(lambda: subjects() == [], "the binding to lose its subjects")

    # DatabaseDiscovery: a Database created for an RDS Proxy in the lab's AWS, then deleted
    # once the proxy is gone from AWS for the grace period.
    tag = os.urandom(3).hex()
    proxy = aws.create_db_proxy(
        f"found-{tag}",
        [aws.create_secret(f"found-{tag}-login", "app", "pw")],
        tags={"rbac-test": tag},
    )
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "DatabaseDiscovery",
            "metadata": {"name": "found", "namespace": ns},
            "spec": {
                "aws": {"regions": [aws.region]},
                "match": {"tags": {"rbac-test": tag}},
                "interval": "1s",
                "deletionGracePeriod": "1s",
            },
        }
    )
    w(partial(api.get, "Database", ns, proxy.name), "the discovered Database")
    aws.client("rds").delete_db_proxy(DBProxyName=proxy.name)
    w(lambda: api.get("Database", ns, proxy.name) is None, "the discovered Database to go")
    api.delete("DatabaseDiscovery", ns, "found")
    w(lambda: api.get("DatabaseDiscovery", ns, "found") is None, "the discovery to go")


def run_operator(tmp_path: Path, values: Mapping[str, Any], aws: AwsLab) -> Run:
    """Render the chart, start the operator as it configures it, run the scenario."""
    docs = render(values)
    server = ApiServer().start()
    try:
        api = Api(server.url)
        register_cert_manager(server)
        for ns in (*WATCHED, NAMESPACE):
            api.create({"kind": "Namespace", "metadata": {"name": ns}})
        # What `helm install` creates that the operator works with: the TokenReview binding.
        binding = one(docs, "ClusterRoleBinding", "rdsgate-proxy-tokenreview")
        api.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        # ... and the webhook configurations (the operator only gets and patches them), whose
        # Service the emulator routes to the operator's loopback port.
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            api.create(one(docs, kind))
        service = one(docs, "Service", "rdsgate-webhook")["metadata"]
        port, webhook_port = free_port(), free_port()
        server.emulator.services[(service["namespace"], service["name"], 443)] = (
            "127.0.0.1",
            webhook_port,
        )
        env = operator_environment(docs, port, webhook_port) | aws.env(aws.admin.credentials)
        op = start_operator(server, tmp_path / "operator", environment=env)
        try:
            scenario(api, op, binding["metadata"]["name"], f"http://127.0.0.1:{port}/healthz", aws)
        finally:
            op.stop()
        calls = [c for c in server.emulator.calls if c.user == USER]
    finally:
        server.stop()
    sa = one(docs, "ServiceAccount")["metadata"]
    return Run(docs, calls, grants_for(docs, sa["namespace"], sa["name"]))


FAST = {"operator": {"resyncInterval": 1, "diagnoseInterval": 1}}


@pytest.fixture(scope="module")
def clusterwide(tmp_path_factory: pytest.TempPathFactory, aws: AwsLab) -> Run:
    return run_operator(tmp_path_factory.mktemp("clusterwide"), FAST, aws)


@pytest.fixture(scope="module")
def namespaced(tmp_path_factory: pytest.TempPathFactory, aws: AwsLab) -> Run:
    return run_operator(
        tmp_path_factory.mktemp("namespaced"), {**FAST, "watchNamespaces": list(WATCHED)}, aws
    )


def missing(run: Run) -> list[str]:
    return sorted(
        {
            f"{c.verb} {c.resource}{'/' + c.subresource if c.subresource else ''}"
            f".{c.api_group or 'core'} namespace={c.namespace or '-'} name={c.name or '-'}"
            for c in run.calls
            if c.resource and not any(g.allows(c) for g in run.grants)
        }
    )


def unused(run: Run) -> list[str]:
    used: set[Atom] = set()
    for grant in run.grants:
        for atom in grant.atoms():
            probe = Grant(
                rule=type(grant.rule)(
                    frozenset({atom.api_group}),
                    frozenset({atom.resource}),
                    frozenset({atom.verb}),
                    atom.resource_names,
                ),
                namespace=grant.namespace,
                role=grant.role,
            )
            if any(probe.allows(c) for c in run.calls):
                used.add(atom)
    return sorted(
        {
            str(atom)
            for grant in run.grants
            for atom in grant.atoms()
            if atom not in used and (atom.api_group, atom.resource, atom.verb) not in NOT_A_REQUEST
        }
    )


@pytest.mark.parametrize("mode", ["clusterwide", "namespaced"])
def test_the_operator_is_granted_every_call_it_makes(
    mode: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(mode)
    assert run.calls, "the operator made no request"
    lacking = missing(run)
    assert not lacking, "the chart's RBAC does not allow:\n" + "\n".join(lacking)
    other = sorted({c.path for c in run.calls if not c.resource and not is_discovery(c)})
    assert not other, f"non-resource requests beyond discovery: {other}"


@pytest.mark.parametrize("mode", ["clusterwide", "namespaced"])
def test_the_chart_grants_nothing_the_operator_does_not_use(
    mode: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(mode)
    extra = unused(run)
    assert not extra, "granted, never used by the operator:\n" + "\n".join(extra)
    granted = {(a.api_group, a.resource, a.verb) for g in run.grants for a in g.atoms()}
    assert granted >= NOT_A_REQUEST, "a stale entry in NOT_A_REQUEST"


def test_namespaced_mode_keeps_the_operator_in_its_namespaces(namespaced: Run) -> None:
    namespaces = {c.namespace for c in namespaced.calls if c.namespace}
    assert namespaces <= {*WATCHED, NAMESPACE}
    cluster_scoped = {
        (c.verb, c.resource) for c in namespaced.calls if c.resource and not c.namespace
    }
    # Only kopf's discovery of CRDs and Namespaces, the proxies' TokenReview binding, the
    # bind checks (SubjectAccessReviews) and the webhook configurations' caBundle.
    assert cluster_scoped == {
        ("list", "customresourcedefinitions"),
        ("watch", "customresourcedefinitions"),
        ("list", "namespaces"),
        ("watch", "namespaces"),
        ("get", "clusterrolebindings"),
        ("patch", "clusterrolebindings"),
        ("create", "subjectaccessreviews"),
        ("get", "validatingwebhookconfigurations"),
        ("patch", "validatingwebhookconfigurations"),
        ("get", "mutatingwebhookconfigurations"),
        ("patch", "mutatingwebhookconfigurations"),
    }
    cluster_grants = [g for g in namespaced.grants if g.namespace is None]
    assert {r for g in cluster_grants for r in g.rule.resources} == {
        "customresourcedefinitions",
        "namespaces",
        "clusterrolebindings",
        "clusterroles",
        "subjectaccessreviews",
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
    }

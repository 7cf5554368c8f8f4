"""The Helm chart deploy/helm/rdsgate: lint, render, validate, and agree with the operator.

Every object the chart renders, for the default values and the other value sets below, is
validated by kubernetes-validate (strict, Kubernetes 1.33); PodMonitor and ServiceMonitor,
which it does not know, by tests/helm/monitoring.py, and cert-manager's Certificate by
tests/helm/cert_manager.py; the CRDs, which come from deploy/crds/
(the single source, linked into the chart), are checked to be exactly those files in the
chart directory and in the packaged chart, and validate the examples with their own schemas.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tarfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from rdsgate.operator import main as operator_main
from rdsgate.operator import render as operator_render
from tests.fixtures.k8s import EXAMPLES_DIR
from tests.helm.cert_manager import SCHEMAS as CERT_MANAGER_SCHEMAS
from tests.helm.chart import (
    CHART,
    CRD_DIR,
    NAMESPACE,
    ROOT,
    crd_schema,
    env_of,
    helm,
    objects,
    one,
    operator_container,
    render,
    validate_kubernetes,
    values_file,
)
from tests.helm.monitoring import SCHEMAS as MONITORING_SCHEMAS

ROLE_ARN = "arn:aws:iam::123456789012:role/rdsgate-operator"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["shop", "billing"]},
    "irsa": {"serviceAccount": {"roleArn": ROLE_ARN, "annotations": {"example.com/owner": "dba"}}},
    "monitoring": {
        "monitoring": {
            "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "serviceMonitor": {"enabled": True, "interval": "1m", "scrapeTimeout": "15s"},
        }
    },
    "cert-manager": {
        "webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "rdsgate-ca"}}}
    },
    "namespaced-cert-manager": {
        "watchNamespaces": ["shop"],
        "webhook": {
            "certManager": {
                "enabled": True,
                "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
            }
        },
    },
    "namespaced-monitoring": {
        "watchNamespaces": ["shop"],
        "monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}},
    },
    "everything-else": {
        "fullnameOverride": "dbgate",
        "image": {
            "repository": "registry.example.com:5000/platform/rdsgate",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {
            "proxyImage": "registry.example.com:5000/platform/rdsgate:0.1.0",
            "allowedProxyImages": [
                "registry.example.com:5000/platform/rdsgate",
                "registry.example.com:5000/mirror/rdsgate:0.1.0",
            ],
            "logFormat": "text",
            "verbose": True,
            "clusterDomain": "corp.internal",
            "resyncInterval": 120,
            "diagnoseInterval": 30.5,
            "healthPort": 9090,
            "accessRecheckInterval": 60,
            "requestTimeout": "30m",
            "requireVerifiedRequester": True,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "podLabels": {"team": "platform"},
            "podAnnotations": {"example.com/scrape": "false"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/arch",
                                        "operator": "In",
                                        "values": ["amd64", "arm64"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "priorityClassName": "system-cluster-critical",
        },
        "proxyTokenReview": {"enabled": False},
        "rbac": {"aggregateRoles": False},
        "webhook": {"port": 10443, "timeoutSeconds": 30},
    },
    "no-rbac-existing-sa": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "platform-operator"},
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values, "--include-crds") for name, values in VALUE_SETS.items()}


def test_helm_lint_passes_for_every_value_set() -> None:
    for name, values in VALUE_SETS.items():
        done = helm("lint", "--strict", str(CHART), "--values", str(values_file(values)))
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
        assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_rendered_object_is_valid(
    value_set: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[value_set]
    assert docs
    for doc in docs:
        kind = doc["kind"]
        if kind in MONITORING_SCHEMAS:
            jsonschema.Draft202012Validator(MONITORING_SCHEMAS[kind]).validate(doc)
        elif kind in CERT_MANAGER_SCHEMAS:
            jsonschema.Draft202012Validator(CERT_MANAGER_SCHEMAS[kind]).validate(doc)
        else:
            validate_kubernetes(doc)
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects with one name"


def test_default_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("ClusterRole", "rdsgate-admin"),
        ("ClusterRole", "rdsgate-edit"),
        ("ClusterRole", "rdsgate-operator"),
        ("ClusterRole", "rdsgate-proxy-tokenreview"),
        ("ClusterRole", "rdsgate-view"),
        ("ClusterRoleBinding", "rdsgate-operator"),
        ("ClusterRoleBinding", "rdsgate-proxy-tokenreview"),
        ("CustomResourceDefinition", "databasediscoveries.rdsgate.dev"),
        ("CustomResourceDefinition", "databases.rdsgate.dev"),
        ("CustomResourceDefinition", "roles.rdsgate.dev"),
        ("CustomResourceDefinition", "tokens.rdsgate.dev"),
        ("Deployment", "rdsgate-operator"),
        ("MutatingWebhookConfiguration", "rdsgate-tokens"),
        ("Service", "rdsgate-webhook"),
        ("ServiceAccount", "rdsgate-operator"),
        ("ValidatingWebhookConfiguration", "rdsgate-tokens"),
    ]
    for doc in docs:
        if doc["kind"] in ("Deployment", "ServiceAccount", "Service"):
            assert doc["metadata"]["namespace"] == NAMESPACE

    sa = one(docs, "ServiceAccount")
    assert "annotations" not in sa["metadata"]

    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # never two standalone operators
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "rdsgate-operator"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = operator_container(docs)
    # The tag is the chart's appVersion: the project's one version (scripts/set-version).
    release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"ghcr.io/rdsgate/rdsgate:{release}"
    assert container["command"] == ["rdsgate-operator"]
    assert "args" not in container
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    env = env_of(container)
    assert "RDSGATE_WATCH_NAMESPACES" not in env
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["RDSGATE_PROXY_IMAGE"] == container["image"]
    assert env["RDSGATE_PROXY_TOKENREVIEW_BINDING"] == "rdsgate-proxy-tokenreview"

    # The probes point at kopf's health endpoint, which the operator serves where
    # RDSGATE_LIVENESS says (tests/helm/test_helm_rbac.py gets 200 from it).
    liveness = urlsplit(env["RDSGATE_LIVENESS"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "health": liveness.port,
        "metrics": int(env["RDSGATE_METRICS_PORT"]),
        "webhook": int(env["RDSGATE_ADMISSION_LISTEN"].rpartition(":")[2]),
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": liveness.path, "port": "health"}

    assert not objects(docs, "Role") and not objects(docs, "RoleBinding")
    binding = one(docs, "ClusterRoleBinding", "rdsgate-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rdsgate-operator", "namespace": NAMESPACE}
    ]


def test_the_chart_environment_configures_the_operator(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's own argument parser reads every variable the chart sets."""
    for var in [v for v in os.environ if v.startswith("RDSGATE_")] + ["POD_NAMESPACE"]:
        monkeypatch.delenv(var, raising=False)
    container = operator_container(rendered["everything-else"])
    env = env_of(container)
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)
    args = operator_main.build_parser().parse_args(container.get("args", []))
    config = operator_main.parse_config(args)
    assert config.operator_namespace == NAMESPACE
    assert config.namespaces == ()
    assert config.proxy_image == "registry.example.com:5000/platform/rdsgate:0.1.0"
    assert config.allowed_proxy_images == (
        "registry.example.com:5000/platform/rdsgate",
        "registry.example.com:5000/mirror/rdsgate:0.1.0",
    )
    assert config.cluster_domain == "corp.internal"
    assert config.resync_interval == 120
    assert config.diagnose_interval == 30.5
    assert config.tokenreview_binding is None
    assert config.access_recheck_interval == 60
    assert config.require_verified_requester is True
    assert config.request_timeout == 1800
    # The webhooks, in the operator's own-CA mode (cert-manager mode: test_helm_webhooks.py).
    assert config.admission is not None
    host, port = config.admission.listen
    assert ipaddress.ip_address(host).is_unspecified and port == 10443  # every interface
    assert config.admission.target is not None
    assert config.admission.target.service == (NAMESPACE, "dbgate-webhook", 443)
    assert config.admission.cert_dir is None
    assert config.admission.configuration == "dbgate-tokens"
    assert config.admission.timeout == 30
    assert args.log_format == "text"
    assert args.verbose is True
    assert args.liveness == "http://0.0.0.0:9090/healthz"
    assert container["image"] == "registry.example.com:5000/platform/rdsgate@sha256:" + "ab" * 32

    monkeypatch.setenv(
        "RDSGATE_WATCH_NAMESPACES",
        env_of(operator_container(rendered["namespaced"]))["RDSGATE_WATCH_NAMESPACES"],
    )
    assert operator_main.parse_config(operator_main.build_parser().parse_args([])).namespaces == (
        "shop",
        "billing",
    )

    # By default the chart names no images: Databases may run tags and digests of the proxy
    # image's repository only.
    default_env = env_of(operator_container(rendered["default"]))
    assert "RDSGATE_ALLOWED_PROXY_IMAGES" not in default_env
    monkeypatch.delenv("RDSGATE_ALLOWED_PROXY_IMAGES")
    monkeypatch.setenv("RDSGATE_PROXY_IMAGE", default_env["RDSGATE_PROXY_IMAGE"])
    default = operator_main.parse_config(operator_main.build_parser().parse_args([]))
    assert default.allowed_proxy_images == ("ghcr.io/rdsgate/rdsgate",)


def test_namespaced_mode_grants_per_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["namespaced"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in objects(docs, "Role")}
    assert roles == {
        ("shop", "rdsgate-operator"),
        ("billing", "rdsgate-operator"),
        (NAMESPACE, "rdsgate-operator-ca"),
    }
    for binding in objects(docs, "RoleBinding"):
        ns, name = binding["metadata"]["namespace"], binding["metadata"]["name"]
        assert (ns, name) in roles
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": name,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rdsgate-operator", "namespace": NAMESPACE}
        ]
    ca_role = one(docs, "Role", "rdsgate-operator-ca")
    assert ca_role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["rdsgate-ca"]}
        | {"verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    # Cluster-wide, only discovery reads, SubjectAccessReviews, the webhook configurations'
    # caBundle and the TokenReview binding remain.
    cluster_role = one(docs, "ClusterRole", "rdsgate-operator")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
        "subjectaccessreviews",
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
        "clusterrolebindings",
        "clusterroles",
    }
    namespaced_rules = one(docs, "Role", "rdsgate-operator", "shop")["rules"]
    assert one(docs, "Role", "rdsgate-operator", "billing")["rules"] == namespaced_rules
    clusterwide_rules = one(rendered["default"], "ClusterRole", "rdsgate-operator")["rules"]
    assert [r for r in clusterwide_rules if r not in namespaced_rules] == [
        r for r in cluster_role["rules"] if r["resources"] != ["namespaces"]
    ]
    env = env_of(operator_container(docs))
    assert env["RDSGATE_WATCH_NAMESPACES"] == "shop,billing"


def test_irsa_annotation(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sa = one(rendered["irsa"], "ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": ROLE_ARN,
        "example.com/owner": "dba",
    }
    assert sa["automountServiceAccountToken"] is True


def test_an_existing_service_account_without_rbac(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["no-rbac-existing-sa"]
    assert not objects(docs, "ServiceAccount")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Role", "RoleBinding"}
    # People's aggregated ClusterRoles are not the operator's: rbac.aggregateRoles decides.
    assert sorted(d["metadata"]["name"] for d in objects(docs, "ClusterRole")) == [
        "rdsgate-admin",
        "rdsgate-edit",
        "rdsgate-proxy-tokenreview",
        "rdsgate-view",
    ]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"


def test_the_proxy_tokenreview_role_and_binding(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["default"]
    role = one(docs, "ClusterRole", "rdsgate-proxy-tokenreview")
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    binding = one(docs, "ClusterRoleBinding", "rdsgate-proxy-tokenreview")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "rdsgate-proxy-tokenreview",
    }
    assert "subjects" not in binding  # the operator owns them
    operator_rules = one(docs, "ClusterRole", "rdsgate-operator")["rules"]
    assert {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterrolebindings"],
        "resourceNames": ["rdsgate-proxy-tokenreview"],
        "verbs": ["get", "patch"],
    } in operator_rules
    assert {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "resourceNames": ["rdsgate-proxy-tokenreview"],
        "verbs": ["bind"],
    } in operator_rules

    # Named after the release; switched off, nothing of it remains.
    other = render({}, release="team-a")
    assert {d["metadata"]["name"] for d in other if "tokenreview" in json.dumps(d)} >= {
        "team-a-proxy-tokenreview"
    }
    off = rendered["everything-else"]
    assert "tokenreview" not in json.dumps(off)


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [d for d in objects(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return found


def test_monitors_select_what_the_operator_renders(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The monitors' selectors and port match the proxies' pods and Services as the operator
    renders them (operator/render.py), for a Database in any watched namespace."""
    db_obj = yaml.safe_load((EXAMPLES_DIR / "database.yaml").read_text())
    db_obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    db = operator_render.Database(db_obj)
    deployment = operator_render.deployment(
        db, operator_render.Settings("ghcr.io/rdsgate/rdsgate:0.1.0"), "0" * 64
    )
    service = operator_render.service(db)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pod_ports = {p["name"] for p in container["ports"]}
    service_ports = {p["name"] for p in service["spec"]["ports"]}

    docs = rendered["monitoring"]
    pod_monitor = named(docs, "PodMonitor", "-proxies")
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in pod_ports and endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")

    service_monitor = named(docs, "ServiceMonitor", "-proxies")
    assert (
        service_monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
    )
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("1m", "15s")

    scoped = rendered["namespaced-monitoring"]
    for kind in ("PodMonitor", "ServiceMonitor"):
        monitor = named(scoped, kind, "-proxies")
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}

    # The operator's own metrics: its pods' `metrics` port, directly or through a Service.
    operator = one(docs, "Deployment")
    operator_pod_labels = operator["spec"]["template"]["metadata"]["labels"]
    operator_ports = {p["name"] for p in operator_container(docs)["ports"]}
    pod_monitor = named(docs, "PodMonitor", "-operator")
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= operator_pod_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in operator_ports
    metrics_service = named(docs, "Service", "-metrics")
    assert metrics_service["spec"]["selector"].items() <= operator_pod_labels.items()
    service_monitor = named(docs, "ServiceMonitor", "-operator")
    assert (
        service_monitor["spec"]["selector"]["matchLabels"].items()
        <= metrics_service["metadata"]["labels"].items()
    )
    assert service_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    for name in ("default", "namespaced", "irsa"):
        assert not {d["kind"] for d in rendered[name]} & set(MONITORING_SCHEMAS)


def render_notes(values: Mapping[str, Any], tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it. `helm template` renders NOTES.txt but does not
    print it, and `helm install --dry-run` wants a full API server; so a copy of the chart
    carries the same text as a define, printed through a ConfigMap by `helm template`."""
    chart = tmp_path / "rdsgate"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("crds"))
    notes = chart / "templates" / "NOTES.txt"
    text = notes.read_text()
    notes.unlink()
    (chart / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + text + "{{- end }}\n"
    )
    (chart / "templates" / "notes_under_test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  NOTES.txt: {{ include "notes-under-test" . | toJson }}\n'
    )
    values_path = tmp_path / "values.yaml"
    values_path.write_text(yaml.safe_dump(dict(values)))
    done = helm(
        "template",
        "rdsgate",
        str(chart),
        "--namespace",
        NAMESPACE,
        "--values",
        str(values_path),
        "--show-only",
        "templates/notes_under_test.yaml",
    )
    assert done.returncode == 0, done.stderr
    rendered: str = yaml.safe_load(done.stdout)["data"]["NOTES.txt"]
    return rendered


def test_notes_tell_the_next_commands(tmp_path: Path) -> None:
    notes = render_notes({}, tmp_path / "default")
    for command in (
        f"kubectl -n {NAMESPACE} rollout status deployment/rdsgate-operator",
        "kubectl apply -f database.yaml",
        "kubectl apply -f role-app-rw.yaml",
        "kubectl apply -f token-orders-app.yaml",
        "kubectl get rdsgate -A",
        "kubectl rdsgate db ls",
        "kubectl rdsgate db connect NAME --db-user USER --db-name DATABASE",
    ):
        assert command in notes, command
    for name in ("database.yaml", "role-app-rw.yaml", "token-orders-app.yaml"):
        assert (EXAMPLES_DIR / name).is_file(), f"NOTES names a missing example: {name}"
    assert "every namespace" in notes
    assert "{{" not in notes and "<no value>" not in notes

    # Who may grant what, and what the webhooks' failurePolicy means.
    for text in (
        "needs `bind` on that Role",
        "kubectl -n NAMESPACE create role bind-app-ro --verb=bind "
        "--resource=roles.rdsgate.dev --resource-name=app-ro",
        "kubectl -n NAMESPACE create rolebinding bind-app-ro --role=bind-app-ro --group=GROUP",
        "include rdsgate-view (read Databases, Roles, Tokens)",
        "The webhooks (rdsgate-tokens) have failurePolicy Fail: while the operator is down,\n"
        "no Token can be created or changed",
        "patches that CA into them",
    ):
        assert text in notes, text
    for name in ("team-app-ro.yaml", "oncall-shop.yaml"):
        assert f"{name}" in notes and (EXAMPLES_DIR / "rbac" / name).is_file(), name
    # Access requests (docs/access-requests.md).
    for path in (
        "role-prod-admin.yaml",
        "rbac/developers-request-prod-admin.yaml",
        "rbac/oncall-leads-approve-prod-admin.yaml",
    ):
        assert path in notes and (EXAMPLES_DIR / path).is_file(), path
    for text in (
        "or `request` (then the Token waits for an approval)",
        "rdsgate-edit (create and delete Tokens, request any Role",
        "rdsgate-admin (Databases, Roles, bind and approve on every Role)",
    ):
        assert text in " ".join(notes.split()), text
    cert_manager = render_notes(
        {
            "webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}},
            "rbac": {"aggregateRoles": False},
        },
        tmp_path / "cert-manager",
    )
    assert "Certificate rdsgate-system/rdsgate-webhook,\nissued by Issuer ca" in cert_manager
    assert "patches that CA" not in cert_manager
    assert "rdsgate-view" not in cert_manager

    scoped = render_notes(
        {**VALUE_SETS["namespaced"], **VALUE_SETS["monitoring"], **VALUE_SETS["irsa"]},
        tmp_path / "scoped",
    )
    assert "The operator serves Databases, Roles and Tokens in: shop, billing." in scoped
    assert "scraped by the PodMonitor rdsgate-proxies" in scoped
    assert ROLE_ARN in scoped


# One source of truth for the CRDs


def crd_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(CRD_DIR.glob("*.yaml"))}


def test_the_chart_crds_are_deploy_crds() -> None:
    """deploy/helm/rdsgate/crds is a symlink to deploy/crds: nothing to keep in sync."""
    link = CHART / "crds"
    assert link.is_symlink(), "the chart's crds/ must link to deploy/crds, not copy it"
    assert link.resolve() == CRD_DIR.resolve()
    assert os.readlink(link) == "../../crds"  # relative: works in any checkout
    assert len(crd_files()) == 4

    # What helm installs from the chart directory is those files.
    installed = objects(render({}, "--include-crds"), "CustomResourceDefinition")
    expected = [yaml.safe_load(v) for v in crd_files().values()]
    assert sorted(installed, key=lambda d: d["metadata"]["name"]) == expected


def test_the_packaged_chart_carries_the_crds(tmp_path: Path) -> None:
    """`helm package` follows the symlink: the archive holds the files themselves."""
    done = helm("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("rdsgate-*.tgz")
    with tarfile.open(archive) as tgz:
        members = {m.name: m for m in tgz.getmembers() if m.name.startswith("rdsgate/crds/")}
        assert {n.removeprefix("rdsgate/crds/") for n in members} == set(crd_files())
        for name, member in members.items():
            assert member.isfile(), f"{name} is not a regular file in the package"
            data = tgz.extractfile(member)
            assert data is not None
            assert data.read() == crd_files()[name.removeprefix("rdsgate/crds/")]


def test_the_examples_validate_against_the_chart_crds() -> None:
    crds = objects(render({}, "--include-crds"), "CustomResourceDefinition")
    schemas = {d["spec"]["names"]["kind"]: crd_schema(d) for d in crds}
    checked = 0
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"].startswith("rdsgate.dev/"):
                jsonschema.Draft7Validator(schemas[doc["kind"]]).validate(doc)
                checked += 1
            elif doc:
                validate_kubernetes(doc)
    assert checked >= 6
    bad = yaml.safe_load((EXAMPLES_DIR / "token-orders-app.yaml").read_text())
    bad["spec"]["ttl"] = "soon"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.Draft7Validator(schemas["Token"]).validate(bad)


# The chart and the release it installs


def test_chart_versions_and_image_match_the_release() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # The operator's own default proxy image is the chart's default image.
    repository, _, tag = operator_main.default_proxy_image().rpartition(":")
    assert values["image"]["repository"] == repository
    assert values["image"]["tag"] in ("", tag)


def test_values_yaml_is_what_the_schema_requires() -> None:
    """values.yaml passes its own schema, and every value in it is described there."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(values)

    def walk(value: Any, node: Mapping[str, Any], path: str) -> None:
        assert node.get("type") or node.get("enum"), f"{path} has no type in the schema"
        if isinstance(value, dict) and node.get("properties") is not None:
            assert node.get("additionalProperties") is False, f"{path} is open"
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not in the schema"
                walk(sub, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "values")


def test_the_readme_documents_every_value() -> None:
    """Every value of values.yaml has a row in the chart README's values table (by its path,
    or by its last part in a row of its group, or under a `group.*` row)."""
    readme = (CHART / "README.md").read_text()
    table = readme[readme.index("## Values") : readme.index("## Design decisions")]
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: Mapping[str, Any], path: str) -> list[str]:
        found: list[str] = []
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if isinstance(value, dict) and value and key != "resources":
                found += leaves(value, sub)
            else:
                found.append(sub)
        return found

    for path in leaves(values, ""):
        parts = path.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
        assert (
            f"`{path}`" in table
            or f"`{parts[-1]}`" in table
            or f"`.{parts[-1]}`" in table
            or any(f"`{prefix}.*`" in table for prefix in prefixes)
        ), f"{path} is not in the README's values table"

"""The chart's admission webhooks for Tokens (docs/access-control.md, "The webhooks").

Rendered for the default values (the operator's own CA), `watchNamespaces`, and cert-manager
mode: the Validating- and MutatingWebhookConfiguration exactly as the design says, the Service
in front of the operator's `webhook` port, the operator's environment and RBAC per mode, the
cert-manager Certificate, and the caBundle that `helm upgrade` carries over from the live
configurations (a real `lookup`, with `helm template --dry-run=server` against the API
emulator).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rdsgate.operator import kube, webhooks
from rdsgate.operator import main as operator_main
from tests.fixtures.k8s import Api, ApiServer
from tests.helm.cert_manager import CERTIFICATE
from tests.helm.chart import (
    CHART,
    NAMESPACE,
    ROOT,
    env_of,
    helm,
    load_manifests,
    objects,
    one,
    operator_container,
    render,
    service_account_may,
    template,
    validate_kubernetes,
    values_file,
)

CONFIGURATION = "rdsgate-tokens"
SERVICE = "rdsgate-webhook"
KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
ADMISSION_API = "/apis/admissionregistration.k8s.io/v1"
PLURAL = {
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
}

CERT_MANAGER = {"webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "rdsgate-ca"}}}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["shop", "billing"], "webhook": {"timeoutSeconds": 7}},
    "cert-manager": CERT_MANAGER,
    "namespaced-cert-manager": {
        "watchNamespaces": ["shop"],
        "webhook": {
            "port": 10443,
            "timeoutSeconds": 5,
            "certManager": {
                "enabled": True,
                "issuerRef": {
                    "name": "corp-ca",
                    "kind": "ClusterIssuer",
                    "group": "cert-manager.io",
                },
            },
        },
        "operator": {"clusterDomain": "corp.internal"},
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


def expected_webhook(
    kind: str, namespaces: list[str] | None = None, timeout: int = 10
) -> dict[str, Any]:
    """docs/access-control.md's table, as a webhook entry."""
    validating = kind == "ValidatingWebhookConfiguration"
    webhook: dict[str, Any] = {
        "name": "tokens.rdsgate.dev" if validating else "requester.tokens.rdsgate.dev",
        "clientConfig": {
            "service": {
                "namespace": NAMESPACE,
                "name": SERVICE,
                "port": 443,
                "path": "/validate-tokens" if validating else "/mutate-tokens",
            }
        },
        "rules": [
            {
                "apiGroups": ["rdsgate.dev"],
                "apiVersions": ["*"],
                "resources": ["tokens"],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": timeout,
    }
    if not validating:
        webhook["reinvocationPolicy"] = "Never"
    if namespaces:
        webhook["namespaceSelector"] = {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": sorted(namespaces),
                }
            ]
        }
    return webhook


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_object_is_valid(value_set: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    for doc in rendered[value_set]:
        if doc["kind"] == "Certificate":
            jsonschema.Draft202012Validator(CERTIFICATE).validate(doc)
        else:
            validate_kubernetes(doc)


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_the_webhook_configurations_are_as_designed(
    value_set: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    values = VALUE_SETS[value_set]
    docs = rendered[value_set]
    cert_manager = bool(values.get("webhook", {}).get("certManager", {}).get("enabled"))
    for kind in KINDS:
        config = one(docs, kind)
        metadata = config["metadata"]
        assert metadata["name"] == CONFIGURATION
        assert "namespace" not in metadata  # cluster-scoped
        # The labels the operator gives them too (operator/webhooks.py keeps them current).
        assert metadata["labels"]["app.kubernetes.io/instance"] == "rdsgate"
        assert metadata["labels"]["app.kubernetes.io/name"] == "rdsgate"
        assert metadata["labels"]["app.kubernetes.io/component"] == "webhook"
        # No caBundle under `helm template`: the operator (or cainjector) fills it in.
        assert config["webhooks"] == [
            expected_webhook(
                kind,
                values.get("watchNamespaces"),
                values.get("webhook", {}).get("timeoutSeconds", 10),
            )
        ]
        if cert_manager:
            assert metadata["annotations"] == {
                "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{SERVICE}"
            }
        else:
            assert "annotations" not in metadata


@pytest.mark.parametrize("value_set", ["default", "namespaced"])
def test_the_operator_would_register_the_same_configurations(
    value_set: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """In its own-CA mode the operator keeps both configurations current (caBundle, and the
    rest brought back if changed): what it would write is already what the chart installs,
    so `helm upgrade` and the operator never undo each other."""
    docs = rendered[value_set]
    env = env_of(operator_container(docs))
    target = webhooks.Target(service=webhooks.parse_service(env["RDSGATE_ADMISSION_SERVICE"]))
    namespaces = [n for n in str(env.get("RDSGATE_WATCH_NAMESPACES", "")).split(",") if n]
    timeout = int(env["RDSGATE_ADMISSION_TIMEOUT"])
    for desired in webhooks.configurations(
        env["RDSGATE_ADMISSION_CONFIGURATION"], target, None, namespaces, timeout
    ):
        installed = one(docs, desired["kind"], desired["metadata"]["name"])
        assert kube.merge_patch(installed, desired) == {}, desired["kind"]


def test_the_names_follow_the_release() -> None:
    for release, values, prefix in [
        ("team-a", {}, "team-a-rdsgate"),
        ("rdsgate", {"fullnameOverride": "dbgate"}, "dbgate"),
    ]:
        docs = render(values, release=release)
        for kind in KINDS:
            config = one(docs, kind, f"{prefix}-tokens")
            (webhook,) = config["webhooks"]
            assert webhook["clientConfig"]["service"]["name"] == f"{prefix}-webhook"
        one(docs, "Service", f"{prefix}-webhook")
        env = env_of(operator_container(docs))
        assert env["RDSGATE_ADMISSION_CONFIGURATION"] == f"{prefix}-tokens"
        assert env["RDSGATE_ADMISSION_SERVICE"] == f"{NAMESPACE}/{prefix}-webhook:443"
        rules = one(docs, "ClusterRole", f"{prefix}-operator")["rules"]
        (rule,) = [r for r in rules if r["apiGroups"] == ["admissionregistration.k8s.io"]]
        assert rule["resourceNames"] == [f"{prefix}-tokens"]


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_the_service_reaches_the_operators_webhook_port(
    value_set: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[value_set]
    service = one(docs, "Service", SERVICE)
    assert service["metadata"]["namespace"] == NAMESPACE
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert selector["app.kubernetes.io/component"] == "operator"  # never the proxies
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    container = operator_container(docs)
    ports = {p["name"]: p for p in container["ports"]}
    port = VALUE_SETS[value_set].get("webhook", {}).get("port", 9443)
    assert ports["webhook"] == {"name": "webhook", "containerPort": port, "protocol": "TCP"}
    env = env_of(container)
    assert env["RDSGATE_ADMISSION_LISTEN"] == f"0.0.0.0:{port}"
    # Both configurations call this Service.
    for kind in KINDS:
        (webhook,) = one(docs, kind)["webhooks"]
        target = webhook["clientConfig"]["service"]
        assert (target["namespace"], target["name"], target["port"]) == (NAMESPACE, SERVICE, 443)


def test_the_operators_own_ca_mode(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for value_set in ("default", "namespaced"):
        docs = rendered[value_set]
        container = operator_container(docs)
        env = env_of(container)
        admission = {k: v for k, v in env.items() if k.startswith("RDSGATE_ADMISSION_")}
        assert admission == {
            "RDSGATE_ADMISSION_LISTEN": "0.0.0.0:9443",
            "RDSGATE_ADMISSION_SERVICE": f"{NAMESPACE}/{SERVICE}:443",
            "RDSGATE_ADMISSION_CONFIGURATION": CONFIGURATION,
            "RDSGATE_ADMISSION_TIMEOUT": str(
                VALUE_SETS[value_set].get("webhook", {}).get("timeoutSeconds", 10)
            ),
        }
        # RDSGATE_ADMISSION_SERVICE, as the operator reads it, names the Service the
        # configurations call.
        namespace, name, port = webhooks.parse_service(admission["RDSGATE_ADMISSION_SERVICE"])
        service = one(docs, "Service", name, namespace)
        assert port in {p["port"] for p in service["spec"]["ports"]}
        assert not objects(docs, "Certificate")
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]

        # The operator patches caBundle into exactly these two configurations, and asks
        # SubjectAccessReviews; cluster-scoped, so in the ClusterRole in both modes.
        group = "admissionregistration.k8s.io"
        for kind in KINDS:
            resource = PLURAL[kind]
            for verb in ("get", "patch"):
                assert service_account_may(docs, verb, resource, name=CONFIGURATION, group=group)
                assert not service_account_may(
                    docs, verb, resource, name="another-webhook", group=group
                )
            for verb in ("create", "update", "delete", "list", "watch"):
                assert not service_account_may(
                    docs, verb, resource, name=CONFIGURATION, group=group
                )
        authorization = "authorization.k8s.io"
        assert service_account_may(docs, "create", "subjectaccessreviews", group=authorization)
        assert not service_account_may(
            docs, "create", "localsubjectaccessreviews", namespace="shop", group=authorization
        )
        cluster_role = one(docs, "ClusterRole", "rdsgate-operator")
        assert {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
            "resourceNames": [CONFIGURATION],
            "verbs": ["get", "patch"],
        } in cluster_role["rules"]
        assert {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        } in cluster_role["rules"]


@pytest.mark.parametrize("value_set", ["cert-manager", "namespaced-cert-manager"])
def test_the_cert_manager_mode(value_set: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = VALUE_SETS[value_set]
    docs = rendered[value_set]
    issuer = values["webhook"]["certManager"]["issuerRef"]
    domain = values.get("operator", {}).get("clusterDomain", "cluster.local")

    certificate = one(docs, "Certificate", SERVICE, NAMESPACE)
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"] == {
        "secretName": "rdsgate-webhook-tls",
        "dnsNames": [f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}.svc.{domain}"],
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "usages": ["digital signature", "server auth"],
        "issuerRef": {
            "name": issuer["name"],
            "kind": issuer.get("kind", "Issuer"),
            "group": issuer.get("group", "cert-manager.io"),
        },
    }
    # cainjector reads the CA from this Certificate.
    for kind in KINDS:
        annotation = one(docs, kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation == f"{NAMESPACE}/{certificate['metadata']['name']}"

    # The operator reads the certificate's Secret, read-only, and is not told the Service: it
    # leaves the configurations to cainjector.
    container = operator_container(docs)
    env = env_of(container)
    port = values["webhook"].get("port", 9443)
    admission = {k: v for k, v in env.items() if k.startswith("RDSGATE_ADMISSION_")}
    assert admission == {
        "RDSGATE_ADMISSION_LISTEN": f"0.0.0.0:{port}",
        "RDSGATE_ADMISSION_CERT_DIR": "/etc/rdsgate/webhook",
        "RDSGATE_ADMISSION_CONFIGURATION": CONFIGURATION,
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")
    assert mount == {
        "name": "webhook-tls",
        "mountPath": env["RDSGATE_ADMISSION_CERT_DIR"],
        "readOnly": True,
    }
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-tls")
    assert volume == {
        "name": "webhook-tls",
        "secret": {"secretName": certificate["spec"]["secretName"], "defaultMode": 0o440},
    }
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]

    # No rights on the webhook configurations; SubjectAccessReviews still.
    rules = one(docs, "ClusterRole", "rdsgate-operator")["rules"]
    assert not [r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"]]
    for kind in KINDS:
        for verb in ("get", "patch"):
            assert not service_account_may(
                docs, verb, PLURAL[kind], name=CONFIGURATION, group="admissionregistration.k8s.io"
            )
    assert service_account_may(docs, "create", "subjectaccessreviews", group="authorization.k8s.io")


def test_the_operator_reads_the_cert_manager_mode(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The operator's parser takes the chart's cert-manager environment as: serve with the
    mounted files, register nothing (cainjector owns caBundle)."""
    for var in [v for v in os.environ if v.startswith("RDSGATE_")]:
        monkeypatch.delenv(var)
    env = env_of(operator_container(rendered["namespaced-cert-manager"]))
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    # The kubelet mounts the Secret there; here, a directory with its files.
    (tmp_path / "tls.crt").write_text("certificate")
    (tmp_path / "tls.key").write_text("key")
    assert env["RDSGATE_ADMISSION_CERT_DIR"] == "/etc/rdsgate/webhook"
    monkeypatch.setenv("RDSGATE_ADMISSION_CERT_DIR", str(tmp_path))
    config = operator_main.parse_config(operator_main.build_parser().parse_args([]))
    assert config.admission is not None
    host, port = config.admission.listen
    assert ipaddress.ip_address(host).is_unspecified and port == 10443  # every interface
    assert config.admission.cert_dir == tmp_path
    assert config.admission.target is None
    assert config.admission.configuration == CONFIGURATION
    assert config.namespaces == ("shop",)


def test_the_operator_settings(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = env_of(operator_container(rendered["default"]))
    assert env["RDSGATE_ACCESS_RECHECK_INTERVAL"] == "300"
    assert "RDSGATE_REQUIRE_VERIFIED_REQUESTER" not in env
    docs = render({"operator": {"accessRecheckInterval": 42.5, "requireVerifiedRequester": True}})
    env = env_of(operator_container(docs))
    assert env["RDSGATE_ACCESS_RECHECK_INTERVAL"] == "42.5"
    assert env["RDSGATE_REQUIRE_VERIFIED_REQUESTER"] == "true"
    off = render({"operator": {"requireVerifiedRequester": False}})
    assert "RDSGATE_REQUIRE_VERIFIED_REQUESTER" not in env_of(operator_container(off))


def test_ports_must_differ() -> None:
    for values in (
        {"webhook": {"port": 8081}},
        {"webhook": {"port": 8080}},
        {"operator": {"metricsPort": 8080}},
    ):
        done = template(values)
        assert done.returncode != 0, values
        assert "operator.healthPort (8080), operator.metricsPort" in done.stderr, done.stderr
        assert "must differ" in done.stderr


def test_the_design_doc_names_what_the_chart_installs(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    doc = (ROOT / "docs" / "access-control.md").read_text()
    for kind in KINDS:
        (webhook,) = one(rendered["default"], kind)["webhooks"]
        assert f"`{webhook['name']}`" in doc
        assert f"`{webhook['clientConfig']['service']['path']}`" in doc
        assert f"`{webhook['failurePolicy']}` / `{webhook['sideEffects']}`" in doc
    assert "`<release>-tokens`" in doc and "default `rdsgate-tokens`" in doc


# The caBundle across `helm upgrade`


def configuration(kind: str, bundles: Mapping[str, str]) -> dict[str, Any]:
    """A live webhook configuration whose webhooks (by name) carry these caBundles."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            {
                "name": name,
                "clientConfig": {
                    "service": {"namespace": NAMESPACE, "name": SERVICE, "port": 443},
                    "caBundle": bundle,
                },
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }
            for name, bundle in bundles.items()
        ],
    }


def render_against(
    server: ApiServer, tmp_path: Path, values: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """What `helm upgrade` would apply: templates rendered with lookups against the cluster."""
    done = helm(
        "template",
        "rdsgate",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=server",
        "--values",
        str(values_file(values)),
        "--show-only",
        "templates/webhook.yaml",
        kubeconfig=server.kubeconfig(tmp_path / "kubeconfig"),
    )
    assert done.returncode == 0, done.stderr
    return load_manifests(done.stdout)


def ca_bundles(docs: list[dict[str, Any]]) -> dict[str, str | None]:
    return {kind: one(docs, kind)["webhooks"][0]["clientConfig"].get("caBundle") for kind in KINDS}


@pytest.mark.parametrize("values", [{}, CERT_MANAGER], ids=["own-ca", "cert-manager"])
def test_an_upgrade_keeps_the_live_ca_bundle(values: dict[str, Any], tmp_path: Path) -> None:
    server = ApiServer().start()
    try:
        api = Api(server.url)
        # First install: nothing to carry over.
        assert ca_bundles(render_against(server, tmp_path, values)) == dict.fromkeys(KINDS)

        # The operator (or cainjector) has patched a CA in: the upgrade renders it again, each
        # configuration its own, so applying the new manifest never removes it.
        live = {
            "ValidatingWebhookConfiguration": {"tokens.rdsgate.dev": "VkFMSURBVElORw=="},
            "MutatingWebhookConfiguration": {"requester.tokens.rdsgate.dev": "TVVUQVRJTkc="},
        }
        for kind, bundles in live.items():
            api.request("POST", f"{ADMISSION_API}/{PLURAL[kind]}", configuration(kind, bundles))
        docs = render_against(server, tmp_path, values)
        assert ca_bundles(docs) == {
            "ValidatingWebhookConfiguration": "VkFMSURBVElORw==",
            "MutatingWebhookConfiguration": "TVVUQVRJTkc=",
        }
        for doc in docs:
            if doc["kind"] == "Certificate":
                jsonschema.Draft202012Validator(CERTIFICATE).validate(doc)
            else:
                validate_kubernetes(doc)

        # Only from the webhook of the same name: an old or foreign entry is not trusted.
        for kind in KINDS:
            api.request("DELETE", f"{ADMISSION_API}/{PLURAL[kind]}/{CONFIGURATION}")
            api.request(
                "POST",
                f"{ADMISSION_API}/{PLURAL[kind]}",
                configuration(kind, {"other.example.com": "T1RIRVI="}),
            )
        assert ca_bundles(render_against(server, tmp_path, values)) == dict.fromkeys(KINDS)
    finally:
        server.stop()

"""The CRDs in deploy/crds/ are the single source: examples and invalid resources against them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rdsgate.operator import access, render
from rdsgate.proxy import config as proxy_config
from rdsgate.proxy import durations
from tests.fixtures.k8s import CRD_DIR, EXAMPLES_DIR

CRDS = {
    doc["spec"]["names"]["kind"]: doc
    for doc in (yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml")))
}
EXAMPLES = [
    (path.name, doc)
    for path in sorted(EXAMPLES_DIR.glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]


def schema(kind: str) -> dict[str, Any]:
    versions = CRDS[kind]["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    result: dict[str, Any] = versions[0]["schema"]["openAPIV3Schema"]
    return result


def errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema(doc["kind"]))
    return sorted(
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    )


def with_defaults(value: Any, node: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: defaults fill absent fields of
    objects that exist (a parent's `default: {}` makes its children's defaults apply)."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in (node.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = with_defaults(out[key], sub)
    return out


def test_three_crds_with_names_categories_and_status() -> None:
    assert set(CRDS) == {"Database", "DatabaseDiscovery", "Role", "Token"}
    short = {kind: crd["spec"]["names"]["shortNames"] for kind, crd in CRDS.items()}
    assert short == {
        "Database": ["rdsdb"],
        "DatabaseDiscovery": ["rdsdisc"],
        "Role": ["rdsrole"],
        "Token": ["rdstoken"],
    }
    for kind, crd in CRDS.items():
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.rdsgate.dev"
        assert spec["group"] == "rdsgate.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["categories"] == ["rdsgate"]
        version = spec["versions"][0]
        assert version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        conditions = schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["required"]) == {
            "type",
            "status",
            "lastTransitionTime",
            "reason",
            "message",
        }


def test_printer_columns() -> None:
    columns = {
        kind: {
            c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
        }
        for kind, crd in CRDS.items()
    }
    ready = '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Database"]["Endpoint"] == ".spec.endpoint"
    assert columns["Database"]["Ready-Replicas"] == ".status.readyReplicas"
    assert columns["Database"]["Ready"] == ready
    assert columns["Database"]["Age"] == ".metadata.creationTimestamp"
    assert (columns["Role"]["Allow"], columns["Role"]["Deny"]) == (".status.allow", ".status.deny")
    assert columns["Token"]["Roles"] == ".spec.roles"
    assert columns["Token"]["Subject"] == ".status.subject"
    assert columns["Token"]["Expires"] == ".status.expiresAt"
    assert columns["Token"]["Ready"] == ready
    assert columns["DatabaseDiscovery"]["Found"] == ".status.found"
    assert columns["DatabaseDiscovery"]["Databases"] == ".status.databases"
    assert columns["DatabaseDiscovery"]["Last Sync"] == ".status.lastSyncTime"
    assert columns["DatabaseDiscovery"]["Ready"] == ready


def test_crds_are_valid_kubernetes_objects() -> None:
    for crd in CRDS.values():
        kubernetes_validate.validate(crd, "1.33.0", strict=True)
        jsonschema.Draft7Validator.check_schema(schema(crd["spec"]["names"]["kind"]))


def test_patterns_are_the_proxys_own() -> None:
    db = schema("Database")["properties"]["spec"]["properties"]
    aws = db["aws"]["properties"]
    assert db["endpoint"]["pattern"] == proxy_config.ENDPOINT_PATTERN
    assert aws["region"]["pattern"] == proxy_config.REGION_PATTERN
    assert aws["assumeRoleArn"]["pattern"] == proxy_config.ROLE_ARN_PATTERN
    assert db["proxy"]["properties"]["serviceAccount"]["properties"]["roleArn"]["pattern"] == (
        proxy_config.ROLE_ARN_PATTERN
    )
    model = proxy_config.AWS.model_json_schema()["properties"]
    assert aws["proxyResourceId"]["pattern"] == model["proxyResourceId"]["anyOf"][0]["pattern"]
    assert aws["accountId"]["pattern"] == model["accountId"]["anyOf"][0]["pattern"]
    assert db["proxy"]["properties"]["idleTimeout"]["pattern"] == durations.PATTERN
    assert (
        schema("Token")["properties"]["spec"]["properties"]["ttl"]["pattern"] == durations.PATTERN
    )
    options = schema("Role")["properties"]["spec"]["properties"]["options"]["properties"]
    assert options["maxSessionDuration"]["pattern"] == durations.PATTERN


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[f"{n}:{d['kind']}" for n, d in EXAMPLES])
def test_examples_are_valid(name: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("rdsgate.dev/"):
        assert errors(doc) == []
    else:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_examples_cover_every_kind_and_both_subjects() -> None:
    kinds = [d["kind"] for _, d in EXAMPLES]
    assert {"Database", "Role", "Token"} <= set(kinds)
    tokens = [d for _, d in EXAMPLES if d["kind"] == "Token"]
    assert any("subject" in t["spec"] for t in tokens)
    assert any("subject" not in t["spec"] for t in tokens)


def test_the_app_example_mounts_the_token_secret_where_pgsslrootcert_points() -> None:
    token = next(d for _, d in EXAMPLES if d["kind"] == "Token" and d["spec"].get("database"))
    app = next(d for _, d in EXAMPLES if d["kind"] == "Deployment")
    pod = app["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"][0]["secretRef"]["name"] == token["spec"]["secretName"]
    volume = next(
        v
        for v in pod["volumes"]
        if v.get("secret", {}).get("secretName") == token["spec"]["secretName"]
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == access.DEFAULT_MOUNT_PATH


def test_defaults_match_what_the_operator_assumes() -> None:
    minimal = {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Database",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"endpoint": "db.example.com:5432", "aws": {"region": "eu-west-1"}},
    }
    defaulted = with_defaults(minimal, schema("Database"))
    assert errors(defaulted) == []
    spec = defaulted["spec"]
    assert spec["engine"] == "postgres"
    assert spec["tls"] == {"mode": "verify-full"}
    assert spec["audit"] == {"queries": True}
    assert spec["proxy"] == {
        "replicas": 2,
        "port": 5432,
        "metricsPort": 9187,
        "maxConnections": 1000,
        "idleTimeout": "30m",
    }
    # The operator renders the same config from the bare and the defaulted resource.
    bare = render.proxy_config(render.Database(minimal))
    full = render.proxy_config(render.Database(defaulted))
    assert bare == full
    assert render.Database(minimal).replicas == render.Database(defaulted).replicas == 2


DATABASE = next(d for _, d in EXAMPLES if d["kind"] == "Database")
ROLE = next(d for _, d in EXAMPLES if d["kind"] == "Role")
TOKEN = next(d for _, d in EXAMPLES if d["kind"] == "Token")


def edit(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


DELETE = object()

INVALID = [
    (DATABASE, "spec.endpoint", "orders.example.com", "spec.endpoint"),
    (DATABASE, "spec.endpoint", DELETE, "'endpoint' is a required property"),
    (DATABASE, "spec.aws.region", "Europe", "spec.aws.region"),
    (DATABASE, "spec.aws.assumeRoleArn", "arn:aws:iam::12:role/x", "spec.aws.assumeRoleArn"),
    (DATABASE, "spec.aws.proxyResourceId", "proxy-1", "spec.aws.proxyResourceId"),
    (DATABASE, "spec.engine", "mysql", "spec.engine"),
    (DATABASE, "spec.tls.mode", "strict", "spec.tls.mode"),
    (DATABASE, "spec.proxy.replicas", -1, "spec.proxy.replicas"),
    (DATABASE, "spec.proxy.idleTimeout", "30 minutes", "spec.proxy.idleTimeout"),
    (
        DATABASE,
        "spec.proxy.serviceAccount",
        {"name": "sa", "roleArn": "arn:aws:iam::123456789012:role/x"},
        "spec.proxy.serviceAccount",
    ),
    (
        DATABASE,
        "spec.proxy.resources",
        {"limits": {"memory": "lots"}},
        "spec.proxy.resources.limits.memory",
    ),
    (DATABASE, "spec.tls.caBundle", "not a certificate", "spec.tls.caBundle"),
    (DATABASE, "spec", DELETE, "'spec' is a required property"),
    (
        ROLE,
        "spec.allow.databases",
        {"matchExpressions": [{"key": "env", "operator": "Equals"}]},
        "operator",
    ),
    (ROLE, "spec.allow.databaseUsers", [""], "spec.allow.databaseUsers.0"),
    (ROLE, "spec.options.maxConnections", 0, "spec.options.maxConnections"),
    (ROLE, "spec.options.maxSessionDuration", "8 hours", "spec.options.maxSessionDuration"),
    (TOKEN, "spec.roles", [], "spec.roles"),
    (TOKEN, "spec.roles", DELETE, "'roles' is a required property"),
    (TOKEN, "spec.ttl", "soon", "spec.ttl"),
    (TOKEN, "spec.secretName", "Not_A_Name", "spec.secretName"),
    (
        TOKEN,
        "spec.subject",
        {"serviceAccount": {"namespace": "shop"}},
        "'name' is a required property",
    ),
    (TOKEN, "spec.mountPath", "relative/path", "spec.mountPath"),
]


@pytest.mark.parametrize(
    ("doc", "path", "value", "expected"),
    INVALID,
    ids=[f"{d['kind']}:{p}" for d, p, _, _ in INVALID],
)
def test_invalid_resources_are_refused(
    doc: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    found = errors(edit(doc, path, value))
    assert found, f"{path}={value!r} was accepted"
    assert any(expected in e for e in found), found


def test_example_files_are_documented() -> None:
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        assert Path(path).read_text().startswith("#"), f"{path.name} should say what it shows"

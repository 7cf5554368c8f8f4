"""A Database's read-only endpoint, as the operator serves it: the `-ro` Service, the second
listener in the proxy config and the Deployment, the certificate's names, `PGHOST_RO` in
Token Secrets, and Roles' `endpoints` — rendered, validated for Kubernetes 1.33 and
against the CRDs, and reconciled on the API emulator, including drift repair and the
clean-up when `spec.readOnlyEndpoint` is removed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from rdsgate.operator import access, render
from rdsgate.operator.handlers import Reconciler
from rdsgate.operator.status import InvalidSpec
from rdsgate.proxy.access import Role
from rdsgate.proxy.config import parse_config
from rdsgate.proxy.errors import ConfigError
from tests.fixtures.k8s import Api, ApiServer
from tests.operator.world import example, reconciler_for

CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
READER = "orders-ro.endpoint.proxy-abc123example.eu-west-1.rds.amazonaws.com:5432"


def database(**spec: Any) -> render.Database:
    doc = yaml.safe_load((CRD_DIR.parent / "examples" / "database.yaml").read_text())
    doc["metadata"]["uid"] = "db-uid"
    doc["spec"].update(spec)
    return render.Database(doc)


def strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none(v) for v in value]
    return value


def crd_errors(kind: str, doc: dict[str, Any]) -> list[str]:
    path = CRD_DIR / f"{kind.lower()}s.rdsgate.dev.yaml"
    crd = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return sorted(
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    )


def test_a_reader_renders_a_second_listener_port_and_service() -> None:
    db = database(readOnlyEndpoint=READER)
    config = render.proxy_config(db)
    assert config.read_only is not None
    assert (config.read_only.port, config.read_only.endpoint) == (5433, READER)
    # What the proxy reads back from the ConfigMap is the same config.
    text = render.config_yaml(config)
    assert yaml.safe_load(text)["readOnly"] == {
        "port": 5433,
        "endpoint": READER,
        "serverName": None,
    }
    assert parse_config(yaml.safe_load(text)) == config
    reader = config.read_only.upstream(config.upstream)
    assert (reader.host, reader.port, reader.tls.mode) == (READER[:-5], 5432, "verify-full")

    deployment = render.deployment(db, render.Settings("rdsgate:test"), "hash")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"postgres": 5432, "postgres-ro": 5433, "metrics": 9187}
    service = render.read_only_service(db)
    assert service is not None
    assert service["metadata"]["name"] == "orders-ro"
    assert service["spec"]["selector"] == render.service(db)["spec"]["selector"]
    assert service["spec"]["ports"] == [
        {"name": "postgres", "port": 5432, "targetPort": "postgres-ro", "protocol": "TCP"}
    ]
    for obj in (service, deployment):
        kubernetes_validate.validate(strip_none(obj), "1.33.0", strict=True)

    names = render.server_names(db, "cluster.local")
    assert names[4:] == [
        "orders-ro",
        "orders-ro.shop",
        "orders-ro.shop.svc",
        "orders-ro.shop.svc.cluster.local",
    ]
    fields, _ = render.database_status(db, None, [])
    assert fields["readOnlyServiceName"] == "orders-ro"


def test_without_a_reader_nothing_changes() -> None:
    db = database()
    assert render.proxy_config(db).read_only is None
    assert render.read_only_service(db) is None
    assert len(render.server_names(db, "cluster.local")) == 4
    deployment = render.deployment(db, render.Settings("rdsgate:test"), "hash")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["postgres", "metrics"]
    assert "readOnlyServiceName" not in render.database_status(db, None, [])[0]


def test_a_reader_spec_the_proxy_cannot_serve_is_refused_by_name() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.readOnlyEndpoint: String should match"):
        render.proxy_config(database(readOnlyEndpoint="no-port"))
    clash = database(readOnlyEndpoint=READER, proxy={"port": 6000, "readOnlyPort": 6000})
    with pytest.raises(
        InvalidSpec, match=r"spec\.proxy\.readOnlyPort 6000 is spec\.proxy\.port too"
    ):
        render.proxy_config(clash)
    long = database(readOnlyEndpoint=READER)
    long_doc = copy.deepcopy(dict(long.obj))
    long_doc["metadata"]["name"] = "o" * 62
    with pytest.raises(InvalidSpec, match=r"the read-only Service 'o{62}-ro' must be at most 63"):
        render.proxy_config(render.Database(long_doc))
    with pytest.raises(ConfigError, match=r"readOnly\.endpoint: .*port 70000 is out of range"):
        parse_config(
            {
                "database": {"name": "orders"},
                "tls": {"certFile": "/c", "keyFile": "/k"},
                "upstream": {"endpoint": "writer:5432"},
                "aws": {"region": "eu-west-1"},
                "access": {"file": "/a"},
                "readOnly": {"endpoint": "reader:70000"},
            }
        )


def test_the_crds_take_the_new_fields() -> None:
    db = dict(database(readOnlyEndpoint=READER, proxy={"readOnlyPort": 6543}).obj)
    assert crd_errors("Database", db) == []
    assert crd_errors("Database", {**db, "spec": {**db["spec"], "readOnlyEndpoint": "x"}}) != []

    role: dict[str, Any] = {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Role",
        "metadata": {"name": "reporting", "namespace": "shop"},
        "spec": {
            "allow": {
                "databases": {},
                "databaseUsers": ["reporting"],
                "databaseNames": ["orders"],
                "endpoints": ["read-only"],
            },
            "deny": {"endpoints": ["read-write"], "databaseUsers": ["postgres"]},
        },
    }
    assert crd_errors("Role", role) == []
    bad = copy.deepcopy(role)
    bad["spec"]["allow"]["endpoints"] = ["reader"]
    assert crd_errors("Role", bad) == [
        "spec.allow.endpoints.0: 'reader' is not one of ['read-write', 'read-only']"
    ]
    bad["spec"]["allow"]["endpoints"] = []
    assert crd_errors("Role", bad) == ["spec.allow.endpoints: [] should be non-empty"]

    compiled = access.compile_role(role)
    assert compiled.role is not None
    assert compiled.role.allow.endpoints == ["read-only"]
    assert access.rule_summary(compiled.role.allow, allow=True) == (
        "users reporting dbs orders on [all] via read-only"
    )
    assert access.rule_summary(compiled.role.deny, allow=False) == (
        "users postgres on [every Database] via read-write"
    )
    deny_all = Role.model_validate({"name": "x", "deny": {"endpoints": ["read-write"]}})
    assert access.rule_summary(deny_all.deny, allow=False) == (
        "everything on [every Database] via read-write"
    )


# On the API emulator


@pytest.fixture
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    return private_k8s_api


@pytest.fixture
def reconciler(k8s_api: ApiServer) -> Iterator[Reconciler]:
    with reconciler_for(k8s_api) as reconciler:
        yield reconciler


def cert_names(api: Api, namespace: str) -> list[str]:
    secret = api.get("Secret", namespace, "orders-rdsgate-tls")
    assert secret is not None
    cert = x509.load_pem_x509_certificate(Api.secret_text(secret, "tls.crt").encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def test_the_reader_service_is_kept_repaired_and_removed(
    reconciler: Reconciler, api: Api, namespace: str
) -> None:
    db = example("database.yaml", namespace)
    db["spec"]["readOnlyEndpoint"] = READER
    api.create(db)
    api.create(example("role-app-rw.yaml", namespace))
    api.create(example("token-orders-app.yaml", namespace))
    reconciler.sync_access(namespace)
    reconciler.reconcile_database(namespace, "orders")

    service = api.get("Service", namespace, "orders-ro")
    assert service is not None
    wanted_ports = copy.deepcopy(service["spec"]["ports"])
    assert [(p["port"], p["targetPort"]) for p in wanted_ports] == [(5432, "postgres-ro")]
    status = api.get("Database", namespace, "orders")
    assert status is not None and status["status"]["readOnlyServiceName"] == "orders-ro"
    assert f"orders-ro.{namespace}.svc" in cert_names(api, namespace)
    secret = api.get("Secret", namespace, "orders-app-db")
    assert secret is not None
    assert Api.secret_text(secret, "PGHOST_RO") == f"orders-ro.{namespace}.svc"
    assert Api.secret_text(secret, "PGHOST") == f"orders.{namespace}.svc"

    # Drift: a port edited by hand is put back whole.
    edited = copy.deepcopy(wanted_ports)
    edited[0]["port"] = 15432
    api.patch("Service", namespace, "orders-ro", {"spec": {"ports": edited}})
    reconciler.reconcile_database(namespace, "orders")
    repaired = api.get("Service", namespace, "orders-ro")
    assert repaired is not None and repaired["spec"]["ports"] == wanted_ports

    # Without the reader: its Service, status field, Secret key and names go.
    api.patch("Database", namespace, "orders", {"spec": {"readOnlyEndpoint": None}})
    reconciler.sync_access(namespace)
    reconciler.reconcile_database(namespace, "orders")
    assert api.get("Service", namespace, "orders-ro") is None
    assert api.get("Service", namespace, "orders") is not None
    status = api.get("Database", namespace, "orders")
    assert status is not None and "readOnlyServiceName" not in status["status"]
    secret = api.get("Secret", namespace, "orders-app-db")
    assert secret is not None and "PGHOST_RO" not in (secret.get("data") or {})
    assert not any(n.startswith("orders-ro") for n in cert_names(api, namespace))
    config_map = api.get("ConfigMap", namespace, "orders-rdsgate")
    assert config_map is not None and "readOnly" not in config_map["data"]["config.yaml"]

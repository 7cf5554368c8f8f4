"""Database → child objects: valid Kubernetes 1.33 objects that mean what ARCHITECTURE §3 says."""

from __future__ import annotations

import base64
import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rdsgate.operator import ca as operator_ca
from rdsgate.operator import pki, render
from rdsgate.operator.kube import covers, merge_patch, strip_none
from rdsgate.operator.status import InvalidSpec
from rdsgate.proxy.config import parse_config
from tests.fixtures.k8s import EXAMPLES_DIR

CA = pki.make_ca()
NOW = datetime.now(UTC)
EXAMPLE = yaml.safe_load((EXAMPLES_DIR / "database.yaml").read_text())


def make_db(**spec_changes: Any) -> render.Database:
    obj = copy.deepcopy(EXAMPLE)
    obj["metadata"] |= {"uid": "db-uid", "generation": 4}
    for path, value in spec_changes.items():
        node = obj["spec"]
        *parents, last = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return render.Database(obj)


def children(db: render.Database) -> list[dict[str, Any]]:
    config = render.proxy_config(db)
    names = render.server_names(db, "cluster.local")
    pair = render.server_keypair(None, CA, names, NOW)
    cm_data = render.config_map_data(db, config, CA.cert_pem)
    tls = render.tls_secret(db, pair, CA.cert_pem)
    objs = [
        render.service_account(db),
        render.config_map(db, cm_data),
        tls,
        render.access_secret(db, "version: 1\n"),
        render.deployment(db, render.Settings("rdsgate:1"), render.config_hash(cm_data)),
        render.service(db),
        render.pod_disruption_budget(db),
    ]
    return [o for o in objs if o is not None]


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"proxy__replicas": 1},
        {"proxy__serviceAccount": {"name": "existing"}},
        {"proxy__resources": None, "tls": None, "audit": None},
        {"proxy__issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}},
    ],
)
def test_every_rendered_object_is_valid_for_kubernetes_1_33(changes: dict[str, Any]) -> None:
    db = make_db(**changes)
    objs = children(db)
    token = {"metadata": {"name": "t", "namespace": "shop", "uid": "t-uid"}}
    objs.append(render.token_secret(token, "t-rdsgate", {"token": "eA==", "PGHOST": None}))
    for obj in objs:
        kubernetes_validate.validate(strip_none(obj), "1.33.0", strict=True)
        meta = obj["metadata"]
        assert meta["namespace"] == "shop"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "rdsgate-operator"
        (owner,) = meta["ownerReferences"]
        assert owner["controller"] is True
        assert owner["blockOwnerDeletion"] is True
        if obj is not objs[-1]:
            assert (owner["kind"], owner["name"], owner["uid"]) == ("Database", "orders", "db-uid")
            assert owner["apiVersion"] == "rdsgate.dev/v1alpha1"
        else:
            assert (owner["kind"], owner["uid"]) == ("Token", "t-uid")


def test_the_children_and_their_names() -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in children(make_db())}
    assert names == {
        ("ServiceAccount", "orders-rdsgate"),
        ("ConfigMap", "orders-rdsgate"),
        ("Secret", "orders-rdsgate-tls"),
        ("Secret", "orders-rdsgate-access"),
        ("Deployment", "orders-rdsgate"),
        ("Service", "orders"),
        ("PodDisruptionBudget", "orders-rdsgate"),
    }


def test_no_pdb_for_a_single_replica_and_no_sa_when_one_is_named() -> None:
    kinds = [
        o["kind"]
        for o in children(make_db(proxy__replicas=1, proxy__serviceAccount={"name": "mine"}))
    ]
    assert "PodDisruptionBudget" not in kinds
    assert "ServiceAccount" not in kinds
    pod = by_kind(children(make_db(proxy__serviceAccount={"name": "mine"})), "Deployment")["spec"][
        "template"
    ]["spec"]
    assert pod["serviceAccountName"] == "mine"


def test_irsa_annotation_comes_and_goes_with_role_arn() -> None:
    sa = render.service_account(make_db())
    assert sa is not None
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/rdsgate-orders"
    }
    without = render.service_account(make_db(proxy__serviceAccount=None))
    assert without is not None
    assert without["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": None}
    assert merge_patch(sa, without)["metadata"] == {
        "annotations": {"eks.amazonaws.com/role-arn": None}
    }


def test_deployment_runs_the_proxy_locked_down() -> None:
    dep = by_kind(children(make_db()), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["rdsgate-proxy", "--config", "/etc/rdsgate/config/config.yaml"]
    assert container["image"] == "rdsgate:1"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "postgres": 5432,
        "metrics": 9187,
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"] == "/etc/rdsgate/config"
    assert volumes["config"]["configMap"]["name"] == "orders-rdsgate"
    assert mounts["tls"] == "/etc/rdsgate/tls"
    assert volumes["tls"]["secret"]["secretName"] == "orders-rdsgate-tls"
    assert mounts["access"] == "/etc/rdsgate/access"
    assert volumes["access"]["secret"]["secretName"] == "orders-rdsgate-access"
    spread = pod["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in [s["topologyKey"] for s in spread]
    assert all(
        s["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] for s in spread
    )
    assert dep["spec"]["replicas"] == 2
    assert (
        dep["spec"]["template"]["metadata"]["labels"].items()
        >= dep["spec"]["selector"]["matchLabels"].items()
    )
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }


def test_config_mounted_in_the_pod_is_what_the_proxy_loads() -> None:
    objs = children(make_db())
    text = by_kind(objs, "ConfigMap")["data"]["config.yaml"]
    config = parse_config(yaml.safe_load(text), "config.yaml")
    assert config.database.name == "orders"
    assert config.database.namespace == "shop"
    assert config.database.labels == {"env": "prod", "team": "orders"}
    assert config.upstream.endpoint == "orders.proxy-abc123example.eu-west-1.rds.amazonaws.com:5432"
    assert config.upstream.tls.mode == "verify-full"
    assert config.aws.region == "eu-west-1"
    assert config.aws.proxy_resource_id == "prx-0123456789abcdef0"
    assert config.limits.max_connections == 500
    assert config.limits.idle_timeout == 1800
    assert str(config.tls.cert_file) == "/etc/rdsgate/tls/tls.crt"
    assert str(config.tls.client_ca_file) == "/etc/rdsgate/tls/ca.crt"
    assert str(config.access.file) == "/etc/rdsgate/access/access.yaml"
    assert config.metrics.port == 9187
    assert (config.upstream.warm.per_key, config.upstream.warm.max_total) == (2, 32)
    assert config.upstream.warm.idle_timeout == 300
    pod = by_kind(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["ports"][1]["containerPort"] == config.metrics.port


def test_warm_connections_come_from_the_database() -> None:
    db = make_db(proxy__warmConnections={"perKey": 0, "maxTotal": 8, "idleTimeout": "90s"})
    config = render.proxy_config(db)
    assert config.upstream.warm.per_key == 0
    assert config.upstream.warm.max_total == 8
    assert config.upstream.warm.idle_timeout == 90


def test_metrics_port_moves_the_probes_and_what_the_operator_scrapes() -> None:
    db = make_db(proxy={"metricsPort": 9300})
    objs = children(db)
    config = parse_config(yaml.safe_load(by_kind(objs, "ConfigMap")["data"]["config.yaml"]))
    assert config.metrics.port == 9300
    container = by_kind(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9300, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"
    metrics = [p for p in by_kind(objs, "Service")["spec"]["ports"] if p["name"] == "metrics"]
    assert metrics == [
        {"name": "metrics", "port": 9187, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_a_ca_bundle_goes_into_the_config_map() -> None:
    other = pki.make_ca("upstream")
    db = make_db(tls__caBundle=other.cert_pem.decode(), tls__serverName="orders.internal")
    cm = by_kind(children(db), "ConfigMap")
    assert cm["data"]["upstream-ca.crt"] == other.cert_pem.decode()
    config = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    assert str(config.upstream.tls.ca_file) == "/etc/rdsgate/config/upstream-ca.crt"
    assert config.upstream.tls.server_name == "orders.internal"
    assert by_kind(children(make_db()), "ConfigMap")["data"]["upstream-ca.crt"] is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"endpoint": "no-port"}, "spec.endpoint: String should match pattern"),
        ({"endpoint": None}, "spec.endpoint: required field is missing"),
        ({"endpoint": "db:99999"}, "spec.endpoint: port 99999 is out of range 1-65535"),
        ({"aws__region": "mars"}, "spec.aws.region: String should match pattern"),
        ({"aws__sessionName": "x"}, "spec.aws.sessionName: unknown field"),
        ({"proxy__idleTimeout": "soon"}, "spec.proxy.idleTimeout: invalid duration 'soon'"),
        (
            {"proxy__maxConnections": 0},
            "spec.proxy.maxConnections: Input should be greater than or equal to 1",
        ),
        ({"proxy__port": 70000}, "spec.proxy.port: Input should be less than or equal to 65535"),
        (
            {"tls__mode": "strict"},
            "spec.tls.mode: Input should be 'verify-full', 'verify-ca' or 'insecure'",
        ),
        ({"tls__caBundle": "nope"}, "spec.tls.caBundle is not PEM certificates"),
        ({"engine": "mysql"}, "spec.engine 'mysql' is not served yet"),
        ({"proxy__replicas": -1}, "spec.proxy.replicas must be a whole number"),
        ({"proxy": "big"}, "spec.proxy must be an object"),
        (
            {"proxy__warmConnections": {"perKey": -1}},
            "spec.proxy.warmConnections.perKey: Input should be greater than or equal to 0",
        ),
        (
            {"proxy__warmConnections": {"idleTimeout": "later"}},
            "spec.proxy.warmConnections.idleTimeout: invalid duration 'later'",
        ),
        ({"proxy__warmConnections": 3}, "spec.proxy.warmConnections must be an object"),
        (
            {"proxy__serviceAccount": {"name": "a", "roleArn": "arn:aws:iam::123456789012:role/x"}},
            "spec.proxy.serviceAccount: set either name",
        ),
    ],
)
def test_invalid_specs_say_which_field_and_why(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        children(make_db(**changes))
    assert message in caught.value.message
    assert "Traceback" not in caught.value.message
    assert "upstream" not in caught.value.message


def test_a_name_that_cannot_be_a_service_is_refused() -> None:
    db = make_db()
    obj = copy.deepcopy(dict(db.obj))
    obj["metadata"]["name"] = "Orders_DB"
    with pytest.raises(InvalidSpec, match="must be a DNS label"):
        render.proxy_config(render.Database(obj))


def test_config_hash_follows_the_config_but_not_tls_or_access() -> None:
    db = make_db()
    config = render.proxy_config(db)
    data = render.config_map_data(db, config, CA.cert_pem)
    base = render.config_hash(data)
    assert base == render.config_hash(dict(reversed(list(data.items()))))
    changed = render.config_map_data(
        make_db(proxy__maxConnections=10),
        render.proxy_config(make_db(proxy__maxConnections=10)),
        CA.cert_pem,
    )
    assert render.config_hash(changed) != base
    # A renewed server certificate is a new TLS Secret but the same pod template: the proxy
    # reloads its certificate files, so a renewal must not roll (and drain) the proxies.
    names = render.server_names(db, "cluster.local")
    first = render.tls_secret(db, render.server_keypair(None, CA, names, NOW), CA.cert_pem)
    renewed = render.tls_secret(db, render.server_keypair(None, CA, names, NOW), CA.cert_pem)
    assert first["data"]["tls.crt"] != renewed["data"]["tls.crt"]
    # Access changes do not roll the pods: the bundle is not an input, and a relabelled
    # Database changes the config (labels are in it) — which is the re-selection path.
    dep_a = render.deployment(db, render.Settings("i"), render.config_hash(data))
    dep_b = render.deployment(db, render.Settings("i"), base)
    assert dep_a == dep_b
    assert dep_a["spec"]["template"]["metadata"]["annotations"] == {"rdsgate.dev/config-hash": base}


def test_service_exposes_5432_and_replaces_hand_edited_ports() -> None:
    svc = render.service(make_db())
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "rdsgate-proxy",
        "app.kubernetes.io/instance": "orders",
    }
    assert svc["spec"]["ports"][0] == {
        "name": "postgres",
        "port": 5432,
        "targetPort": "postgres",
        "protocol": "TCP",
    }
    # As stored by the API server (defaults added), then edited by hand.
    stored = copy.deepcopy(svc)
    stored["spec"] |= {"clusterIP": "10.0.0.7", "sessionAffinity": "None"}
    assert covers(stored, svc)
    assert merge_patch(stored, svc) == {}
    stored["spec"]["ports"][0]["port"] = 15432
    stored["spec"]["ports"].append({"name": "extra", "port": 1, "protocol": "TCP", "targetPort": 1})
    patch = merge_patch(stored, svc)
    assert patch == {"spec": {"ports": svc["spec"]["ports"]}}


def test_server_certificate_names_and_reuse() -> None:
    db = make_db()
    names = render.server_names(db, "cluster.local")
    assert names == ["orders", "orders.shop", "orders.shop.svc", "orders.shop.svc.cluster.local"]
    pair = render.server_keypair(None, CA, names, NOW)
    assert operator_ca.is_current(pair, CA, NOW, dns_names=names)
    assert render.server_keypair(pair, CA, names, NOW) is pair
    assert render.server_keypair(pair, CA, [*names, "extra"], NOW) is not pair
    later = NOW + timedelta(days=render.SERVER_CERT_DAYS * 2 / 3 + 1)
    assert render.server_keypair(pair, CA, names, later) is not pair
    assert render.server_keypair(pair, pki.make_ca("other"), names, NOW) is not pair


def test_tls_secret_carries_the_ca() -> None:
    db = make_db()
    pair = render.server_keypair(None, CA, render.server_names(db, "cluster.local"), NOW)
    secret = render.tls_secret(db, pair, CA.cert_pem)
    assert secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["ca.crt"]) == CA.cert_pem
    assert operator_ca.keypair_from_secret(secret) == pair


def test_cert_manager_mode_renders_a_certificate_and_a_separate_client_ca() -> None:
    db = make_db(proxy__issuerRef={"name": "corp", "kind": "ClusterIssuer"})
    cert = render.certificate(db, render.server_names(db, "cluster.local"))
    assert cert["spec"]["secretName"] == "orders-rdsgate-tls"
    assert cert["spec"]["issuerRef"] == {
        "name": "corp",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert cert["spec"]["privateKey"]["algorithm"] == "ECDSA"
    data = render.config_map_data(db, render.proxy_config(db), CA.cert_pem)
    assert data["client-ca.crt"] == CA.cert_pem.decode()
    config = parse_config(yaml.safe_load(str(data["config.yaml"])))
    assert str(config.tls.client_ca_file) == "/etc/rdsgate/config/client-ca.crt"


def test_database_status_from_the_deployment() -> None:
    db = make_db()
    dep = by_kind(children(db), "Deployment") | {"metadata": {"generation": 3}}
    fields, conds = render.database_status(db, dep | {"status": {}}, [])
    state = {c.type: (c.status, c.reason) for c in conds}
    assert state == {
        "Ready": ("False", "ProxiesNotReady"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
    }
    assert fields == {"serviceName": "orders", "readyReplicas": 0, "replicas": 2}
    rolled = {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}
    fields, conds = render.database_status(db, dep | {"status": rolled}, [])
    state = {c.type: (c.status, c.reason) for c in conds}
    assert state == {
        "Ready": ("True", "ProxiesReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert conds[0].message == "serving orders.shop.svc:5432"
    assert fields["readyReplicas"] == 2


def test_database_status_with_problems_and_no_deployment() -> None:
    problem = InvalidSpec("spec.endpoint: bad")
    _, conds = render.database_status(make_db(), None, [problem])
    state = {c.type: (c.status, c.reason, c.message) for c in conds}
    assert state["Ready"] == ("False", "InvalidSpec", "spec.endpoint: bad")
    assert state["Degraded"] == ("True", "InvalidSpec", "spec.endpoint: bad")
    assert next(c for c in conds if c.type == "Degraded").event == "Warning"


def test_a_stuck_rollout_is_degraded() -> None:
    dep = {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet has timed out progressing.",
                }
            ],
        },
    }
    _, conds = render.database_status(make_db(), dep, [])
    degraded = next(c for c in conds if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "ProgressDeadlineExceeded")


def test_scaled_to_zero() -> None:
    _, conds = render.database_status(
        make_db(proxy__replicas=0), {"metadata": {}, "status": {}}, []
    )
    assert (conds[0].status, conds[0].reason) == ("False", "ScaledToZero")


# Which proxy images a Database may run


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("ghcr.io/rdsgate/rdsgate:1.2.0", "ghcr.io/rdsgate/rdsgate"),
        (
            "registry.example.com:5000/platform/rdsgate:0.1.0",
            "registry.example.com:5000/platform/rdsgate",
        ),
        (
            "registry.example.com:5000/platform/rdsgate",
            "registry.example.com:5000/platform/rdsgate",
        ),
        ("ghcr.io/rdsgate/rdsgate@sha256:" + "ab" * 32, "ghcr.io/rdsgate/rdsgate"),
        ("ghcr.io/rdsgate/rdsgate:1.2@sha256:" + "ab" * 32, "ghcr.io/rdsgate/rdsgate"),
        ("rdsgate:test", "rdsgate"),
    ],
)
def test_image_repository_drops_tag_and_digest_not_the_port(image: str, repository: str) -> None:
    assert render.image_repository(image) == repository


def test_only_allowed_proxy_images_are_run() -> None:
    settings = render.Settings("ghcr.io/rdsgate/rdsgate:1.2.0")
    assert settings.allowed == ("ghcr.io/rdsgate/rdsgate",)
    for allowed in (
        None,  # no spec.proxy.image: the operator's own
        "ghcr.io/rdsgate/rdsgate:1.3.0",
        "ghcr.io/rdsgate/rdsgate@sha256:" + "cd" * 32,
    ):
        dep = render.deployment(make_db(proxy__image=allowed), settings, "h")
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == allowed or (allowed is None and image == "ghcr.io/rdsgate/rdsgate:1.2.0")
    for refused in (
        "docker.io/attacker/miner:latest",
        "ghcr.io/rdsgate/rdsgate-evil:1.2.0",  # a prefix is not the repository
        "ghcr.io/rdsgate:1.2.0",
    ):
        with pytest.raises(render.ImageNotAllowed) as info:
            render.deployment(make_db(proxy__image=refused), settings, "h")
        assert info.value.reason == "ImageNotAllowed"
        assert info.value.message == (
            f"spec.proxy.image {refused!r} is not an allowed proxy image (allowed: "
            "ghcr.io/rdsgate/rdsgate (any tag or digest)); remove spec.proxy.image to run "
            "ghcr.io/rdsgate/rdsgate:1.2.0, or have the operator started with "
            "--allowed-proxy-image for it"
        )
    # An exact reference admits exactly that; a repository, all of it.
    pinned = render.Settings("rdsgate:1", allowed_images=("corp/rdsgate:2", "mirror/rdsgate"))
    assert render.proxy_image(make_db(proxy__image="corp/rdsgate:2"), pinned) == "corp/rdsgate:2"
    assert (
        render.proxy_image(make_db(proxy__image="mirror/rdsgate:9"), pinned) == "mirror/rdsgate:9"
    )
    assert render.proxy_image(make_db(proxy__image="rdsgate:1"), pinned) == "rdsgate:1"
    with pytest.raises(render.ImageNotAllowed):
        render.proxy_image(make_db(proxy__image="corp/rdsgate:3"), pinned)


# The Token Secret


def test_a_long_token_name_fits_the_secret_labels() -> None:
    name = "a-very-long-token-name." + "x" * 90 + ".end"
    token = {"metadata": {"name": name, "namespace": "shop", "uid": "u"}}
    secret = render.token_secret(token, "s", {"token": "dA=="})
    labels = secret["metadata"]["labels"]
    assert all(len(v) <= 63 for v in labels.values())
    value = labels["rdsgate.dev/token"]
    assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", value)
    assert value.startswith("a-very-long-token-name.")
    assert labels["app.kubernetes.io/instance"] == value
    assert secret["metadata"]["annotations"] == {"rdsgate.dev/token-name": name}
    # Distinct names stay distinct; a short name is its own label value.
    other = {"metadata": {"name": name[:-1] + "f", "namespace": "shop", "uid": "u"}}
    assert render.token_secret(other, "s", {})["metadata"]["labels"]["rdsgate.dev/token"] != value
    short = {"metadata": {"name": "orders-app", "namespace": "shop", "uid": "u"}}
    assert render.token_secret(short, "s", {})["metadata"]["labels"]["rdsgate.dev/token"] == (
        "orders-app"
    )
    kubernetes_validate.validate(secret, "1.33.0", strict=True)

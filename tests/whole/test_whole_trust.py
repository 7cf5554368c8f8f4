"""The trust model end to end: who may grant what, who is named, and access following RBAC.

The operator serves its admission webhooks over HTTPS (`--admission-url`, registered by
itself); the Kubernetes API emulator calls them on every Token CREATE and UPDATE the way
kube-apiserver does, and answers the operator's SubjectAccessReviews from the RBAC
objects stored in it. People are bearer tokens the emulator knows (`emulator.users`).
A real proxy runs the Deployment the operator rendered with its Secrets mounted the
kubelet's way, and psql logs in through it to PostgreSQL behind the RDS Proxy stand-in.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from rdsgate.lab.postgres import free_port
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.fixtures.k8s import (
    RBAC_V1,
    Api,
    ApiError,
    ApiServer,
    OperatorProcess,
    start_gated_operator,
    wait_for,
)
from tests.fixtures.lab import DbIdentity, LabCA, database_manifest
from tests.fixtures.pods import mount_namespaces_unavailable
from tests.whole.test_whole_loop import RunningPod, run_pod

pytestmark = pytest.mark.skipif(
    mount_namespaces_unavailable() is not None, reason=str(mount_namespaces_unavailable())
)

NS = "shop"
ALICE = {"username": "alice@example.com", "groups": ["devs", "system:authenticated"]}
BOB = {"username": "bob@example.com", "groups": ["interns", "system:authenticated"]}


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    private_k8s_api.emulator.users.update({"alice-token": ALICE, "bob-token": BOB})
    return private_k8s_api


def rbac(api: Api) -> None:
    """alice may make Tokens and bind app-rw; bob may make Tokens only (no bind)."""
    api.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "Role",
            "metadata": {"name": "token-maker", "namespace": NS},
            "rules": [
                {
                    "apiGroups": ["rdsgate.dev"],
                    "resources": ["tokens"],
                    "verbs": ["get", "list", "create", "update", "patch", "delete"],
                }
            ],
        }
    )
    api.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "Role",
            "metadata": {"name": "bind-app-rw", "namespace": NS},
            "rules": [
                {
                    "apiGroups": ["rdsgate.dev"],
                    "resources": ["roles"],
                    "resourceNames": ["app-rw"],
                    "verbs": ["bind"],
                }
            ],
        }
    )
    for role, users in (("token-maker", [ALICE, BOB]), ("bind-app-rw", [ALICE])):
        api.create(role_binding(role, users))


def role_binding(role: str, users: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_V1,
        "kind": "RoleBinding",
        "metadata": {"name": role, "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u["username"]}
            for u in users
        ],
    }


@pytest.fixture(scope="module")
def operator(k8s: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = start_gated_operator(k8s, tmp_path_factory.mktemp("operator"))
    yield op
    op.stop()


def token(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": {"name": name, "namespace": NS, **meta},
        "spec": {
            "roles": ["app-rw"],
            "database": "orders",
            "databaseUser": "app",
            "databaseName": "orders",
        },
    }


@pytest.fixture(scope="module")
def world(
    k8s: ApiServer, operator: OperatorProcess, rds_proxy: RdsProxyStandIn, lab_ca: LabCA
) -> dict[str, Any]:
    api = Api(k8s.url)
    rbac(api)
    port = free_port()
    api.create(database_manifest("orders", NS, rds_proxy, lab_ca.cert_file.read_text(), port))
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Role",
            "metadata": {"name": "app-rw", "namespace": NS},
            "spec": {
                "allow": {
                    "databases": {"matchLabels": {"env": "test"}},
                    "databaseNames": ["orders"],
                    "databaseUsers": ["app"],
                }
            },
        }
    )
    # alice asks, and tries to put someone else's name on it: the API server's word wins.
    forged = {
        "rdsgate.dev/requested-by": "mallory",
        "rdsgate.dev/requested-by-groups": '["system:masters"]',
    }
    Api(k8s.url, "alice-token").create(token("alice-orders", annotations=forged))
    secret = wait_for(
        lambda: (s := api.get("Secret", NS, "alice-orders-rdsgate")) and s,
        "alice's Token Secret",
        30,
        operator.tail,
    )
    deployment = wait_for(
        lambda: api.get("Deployment", NS, "orders-rdsgate"), "the Deployment", 30, operator.tail
    )
    return {"api": api, "port": port, "secret": secret, "deployment": deployment}


@pytest.fixture(scope="module")
def pod(
    world: dict[str, Any], proxy_identity: DbIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPod]:
    root = tmp_path_factory.mktemp("pod")
    running = run_pod(world, root, dict(os.environ) | proxy_identity.env)
    yield running
    running.stop()


def audit(pod: RunningPod) -> list[dict[str, Any]]:
    events = []
    for line in pod.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return [e for e in events if "event" in e]


def dsn(world: dict[str, Any], tmp: Path) -> str:
    data = {k: base64.b64decode(v).decode() for k, v in world["secret"]["data"].items()}
    ca = tmp / "ca.crt"
    ca.write_text(data["ca.crt"])
    return (
        f"host=orders.shop.svc hostaddr=127.0.0.1 port={world['port']} user=app dbname=orders "
        f"password={data['token']} sslmode=verify-full sslrootcert={ca} connect_timeout=10"
    )


def test_a_token_naming_a_role_one_may_not_bind_is_refused_by_the_api_server(
    k8s: ApiServer, world: dict[str, Any]
) -> None:
    with pytest.raises(ApiError) as refused:
        Api(k8s.url, "bob-token").create(token("bob-orders"))
    assert refused.value.status == 403
    assert refused.value.message == (
        'admission webhook "tokens.rdsgate.dev" denied the request: bob@example.com may not '
        'bind Role "app-rw" in namespace "shop" (needs verb bind on roles.rdsgate.dev "app-rw")'
    )
    assert world["api"].get("Token", NS, "bob-orders") is None


def test_the_requester_is_the_api_servers_word_and_stays_so(
    k8s: ApiServer, world: dict[str, Any]
) -> None:
    api: Api = world["api"]
    stored = api.get("Token", NS, "alice-orders")
    assert stored is not None
    annotations = stored["metadata"]["annotations"]
    assert annotations["rdsgate.dev/requested-by"] == "alice@example.com"
    assert json.loads(annotations["rdsgate.dev/requested-by-groups"]) == ALICE["groups"]
    status = wait_for(
        lambda: (
            (api.get("Token", NS, "alice-orders") or {}).get("status", {}).get("requestedBy")
            and api.get("Token", NS, "alice-orders")
        ),
        "status.requestedBy",
        20,
    )["status"]
    assert status["requestedBy"] == "alice@example.com"
    verified = Api.condition({"status": status}, "RequesterVerified")
    assert verified is not None and verified["reason"] == "AdmissionStamped"

    # Not even the cluster admin may rewrite who asked.
    with pytest.raises(ApiError) as refused:
        api.patch(
            "Token",
            NS,
            "alice-orders",
            {"metadata": {"annotations": {"rdsgate.dev/requested-by": "bob"}}},
        )
    assert refused.value.status == 422
    assert refused.value.message.startswith(
        'admission webhook "tokens.rdsgate.dev" denied the request: the annotation '
        "rdsgate.dev/requested-by records who created this Token"
    )
    # bob may edit Tokens, but not add a Role he may not bind to alice's.
    with pytest.raises(ApiError) as refused:
        Api(k8s.url, "bob-token").patch(
            "Token", NS, "alice-orders", {"spec": {"roles": ["app-rw", "admin"]}}
        )
    assert 'bob@example.com may not bind Role "admin"' in refused.value.message


def test_the_audit_trail_names_the_person_who_asked(
    world: dict[str, Any], pod: RunningPod, tmp_path: Path
) -> None:
    def logged_in() -> bool:
        try:
            with psycopg.connect(dsn(world, tmp_path)) as conn:
                conn.execute("select 1")
            return True
        except psycopg.OperationalError:
            return False

    wait_for(logged_in, "psql with alice's Token", 20, lambda: pod.log.read_text())
    start = wait_for(
        lambda: [e for e in audit(pod) if e["event"] == "session.start"],
        "session.start",
        10,
    )[-1]
    assert (start["identity"], start["requested_by"]) == ("shop/alice-orders", "alice@example.com")
    queries = [e for e in audit(pod) if e["event"] == "session.query"]
    assert queries and {e["requested_by"] for e in queries} == {"alice@example.com"}


def test_access_follows_live_rbac(
    world: dict[str, Any], pod: RunningPod, operator: OperatorProcess, tmp_path: Path
) -> None:
    """alice loses `bind`: her grant leaves the bundle, her open session ends with 57P01 and
    the reason, and the Token says so; given `bind` again, the grant comes back."""
    api: Api = world["api"]
    conn = wait_for(
        lambda: _connect(world, tmp_path), "alice's session", 20, lambda: pod.log.read_text()
    )
    why = 'alice@example.com may no longer bind Role "app-rw" in namespace "shop"'
    try:
        conn.execute("select 1")
        api.delete("RoleBinding", NS, "bind-app-rw", api_version=RBAC_V1)

        def revoked_in_bundle() -> bool:
            secret = api.get("Secret", NS, "orders-rdsgate-access")
            text = base64.b64decode((secret or {})["data"]["access.yaml"]).decode()
            bundle = yaml.safe_load(text)
            return bool(
                bundle["grants"] == []
                and bundle["revoked"] == [{"identity": "shop/alice-orders", "reason": why}]
            )

        wait_for(revoked_in_bundle, "the grant to leave the access bundle", 20, operator.tail)
        wait_for(pod.pod.sync, "the new access Secret in the pod", 20)

        def ended() -> psycopg.Error | None:
            try:
                conn.execute("select 1")
            except psycopg.Error as exc:
                return exc
            return None

        error = wait_for(ended, "alice's session to end", 20, lambda: pod.log.read_text())
        assert error.sqlstate == "57P01"
        assert f"access revoked: {why}" in str(error)
    finally:
        conn.close()
    revoked = wait_for(
        lambda: [e for e in audit(pod) if e["event"] == "session.revoked"],
        "the session.revoked audit line",
        10,
    )
    assert revoked[-1]["reason"] == why
    assert revoked[-1]["requested_by"] == "alice@example.com"
    ready = Api.condition(api.get("Token", NS, "alice-orders"), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "BindRevoked")
    assert ready["message"] == f"{why}; the grant was withdrawn"
    events = [e for e in api.events(NS, "alice-orders") if e["reason"] == "BindRevoked"]
    assert events and events[0]["type"] == "Warning"

    api.create(role_binding("bind-app-rw", [ALICE]))
    wait_for(
        lambda: (
            (Api.condition(api.get("Token", NS, "alice-orders"), "Ready") or {}).get("status")
            == "True"
        ),
        "the grant to come back",
        20,
        operator.tail,
    )
    wait_for(pod.pod.sync, "the access Secret in the pod", 20)
    wait_for(lambda: _connect(world, tmp_path), "alice to log in again", 20)


def _connect(world: dict[str, Any], tmp: Path) -> psycopg.Connection[Any] | None:
    try:
        return psycopg.connect(dsn(world, tmp), autocommit=True)
    except psycopg.OperationalError:
        return None

"""The whole loop: resources in the API → the operator → a real proxy → psql.

The operator runs against the Kubernetes API emulator; the proxy runs the command of the
Deployment it rendered, with the ConfigMap and Secrets it wrote mounted where the pod spec
says (tests/fixtures/pods.py plays the kubelet); psql connects with the Token's Secret,
through the RDS Proxy stand-in to PostgreSQL. Then a Role edited in the API changes what
psql may do, the operator keeps the TokenReview binding's subjects, and the proxy's own
diagnostics become the Database's conditions.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from rdsgate.lab.lifecycle import stop_process
from rdsgate.lab.postgres import free_port
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.fixtures.k8s import Api, ApiServer, OperatorProcess, start_operator, wait_for
from tests.fixtures.lab import DbIdentity, LabCA, database_manifest
from tests.fixtures.pods import Pod, mount_namespaces_unavailable

pytestmark = pytest.mark.skipif(
    mount_namespaces_unavailable() is not None, reason=str(mount_namespaces_unavailable())
)

NS = "shop"
BINDING = "rdsgate-proxy-tokenreview"


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    return private_k8s_api


@pytest.fixture(scope="module")
def operator(k8s: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    Api(k8s.url).create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": BINDING},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": BINDING,
            },
            "subjects": [],
        }
    )
    op = start_operator(
        k8s,
        tmp_path_factory.mktemp("operator"),
        "--diagnose-interval",
        "1",
        "--proxy-tokenreview-binding",
        BINDING,
    )
    yield op
    op.stop()


@pytest.fixture(scope="module")
def world(
    k8s: ApiServer, operator: OperatorProcess, rds_proxy: RdsProxyStandIn, lab_ca: LabCA
) -> dict[str, Any]:
    """A Database in front of the stand-in, a Role and a Token for psql, as a user applies them."""
    api = Api(k8s.url)
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
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Token",
            "metadata": {"name": "orders-app", "namespace": NS},
            "spec": {
                "roles": ["app-rw"],
                "database": "orders",
                "databaseUser": "app",
                "databaseName": "orders",
            },
        }
    )
    secret = wait_for(
        lambda: (
            (s := api.get("Secret", NS, "orders-app-rdsgate"))
            and "PGPASSWORD" in (s.get("data") or {})
            and s
        ),
        "the Token's Secret",
        30,
        operator.tail,
    )
    for kind, name in (
        ("ConfigMap", "orders-rdsgate"),
        ("Secret", "orders-rdsgate-tls"),
        ("Secret", "orders-rdsgate-access"),
    ):
        wait_for(partial(api.get, kind, NS, name), f"{kind} {name}", 30, operator.tail)
    deployment = wait_for(
        lambda: api.get("Deployment", NS, "orders-rdsgate"), "the Deployment", 30, operator.tail
    )
    return {"api": api, "port": port, "token_secret": secret, "deployment": deployment}


class RunningPod:
    def __init__(self, pod: Pod, process: subprocess.Popen[bytes], log: Path) -> None:
        self.pod = pod
        self.process = process
        self.log = log

    def stop(self) -> None:
        stop_process(self.process, 20)


def run_pod(world: dict[str, Any], root: Path, env: dict[str, str]) -> RunningPod:
    pod = Pod(world["api"], world["deployment"], root)
    log = root / "proxy.log"
    with log.open("wb") as out:
        process = pod.start(env, stdout=out, stderr=subprocess.STDOUT)
    running = RunningPod(pod, process, log)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the proxy exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", world["port"]), timeout=1):
                return True
        except OSError:
            return False

    wait_for(listening, "the proxy to listen", 30, lambda: log.read_text())
    return running


def psql(
    world: dict[str, Any], tmp: Path, sql: str = "select current_user"
) -> subprocess.CompletedProcess[str]:
    """psql with the Token Secret's PG* variables, as an app with `envFrom` would run it.

    The Service would route <db>.<ns>.svc:5432 to the pod; here PGHOSTADDR does (verify-full
    still checks the certificate against PGHOST), and the CA file is where the app mounts
    the same Secret.
    """
    data = {k: base64.b64decode(v).decode() for k, v in world["token_secret"]["data"].items()}
    ca = tmp / "ca.crt"
    ca.write_text(data["ca.crt"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({k: v for k, v in data.items() if k.startswith("PG")})
    env.update(
        PGHOSTADDR="127.0.0.1",
        PGPORT=str(world["port"]),
        PGSSLROOTCERT=str(ca),
        PGCONNECT_TIMEOUT="10",
    )
    return subprocess.run(
        ["psql", "-XAtc", sql], env=env, capture_output=True, text=True, check=False, timeout=30
    )


def psql_outcome(
    world: dict[str, Any], tmp: Path, *, ok: bool
) -> subprocess.CompletedProcess[str] | None:
    """psql's result once it succeeds (`ok`) or fails (not `ok`); None until then."""
    out = psql(world, tmp)
    return out if (out.returncode == 0) == ok else None


@pytest.fixture(scope="module")
def pod(
    world: dict[str, Any], proxy_identity: DbIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPod]:
    running = run_pod(world, tmp_path_factory.mktemp("pod"), dict(os.environ) | proxy_identity.env)
    yield running
    running.stop()


def test_the_token_secret_connects_psql(
    world: dict[str, Any], pod: RunningPod, tmp_path: Path
) -> None:
    data = world["token_secret"]["data"]
    assert base64.b64decode(data["PGHOST"]).decode() == "orders.shop.svc"
    assert base64.b64decode(data["PGSSLMODE"]).decode() == "verify-full"
    out = psql(world, tmp_path)
    assert out.returncode == 0, out.stderr + pod.log.read_text()
    assert out.stdout.strip() == "app"


def test_a_role_edit_reaches_the_running_proxy(
    world: dict[str, Any], pod: RunningPod, tmp_path: Path
) -> None:
    api: Api = world["api"]
    api.patch("Role", NS, "app-rw", {"spec": {"deny": {"databaseUsers": ["app"]}}})
    wait_for(pod.pod.sync, "the operator to rewrite the access Secret", 20)
    denied = wait_for(
        lambda: psql_outcome(world, tmp_path, ok=False),
        "psql to be refused after the Role edit",
        15,
    )
    assert "role 'app-rw' denies database user 'app' (deny.databaseUsers 'app')" in denied.stderr
    api.patch("Role", NS, "app-rw", {"spec": {"deny": None}})
    wait_for(pod.pod.sync, "the operator to rewrite the access Secret again", 20)
    allowed = wait_for(lambda: psql_outcome(world, tmp_path, ok=True), "psql to work again", 15)
    assert allowed.stdout.strip() == "app"
    assert pod.process.poll() is None, "an access change must not restart the proxy"


def test_the_proxy_service_account_may_review_tokens(world: dict[str, Any]) -> None:
    api: Api = world["api"]

    def subjects() -> list[dict[str, Any]] | None:
        binding = api.get("ClusterRoleBinding", None, BINDING)
        found = (binding or {}).get("subjects") or []
        return found or None

    assert wait_for(subjects, "the operator to add the proxy's ServiceAccount", 20) == [
        {"kind": "ServiceAccount", "name": "orders-rdsgate", "namespace": NS}
    ]


def pod_object(world: dict[str, Any], name: str) -> None:
    """The Pod as the API would show it for the running proxy (ready, on 127.0.0.1)."""
    api: Api = world["api"]
    template = world["deployment"]["spec"]["template"]
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }
    )
    api.patch(
        "Pod",
        NS,
        name,
        {
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
        "status",
    )


def condition(api: Api, type_: str, status: str) -> dict[str, Any] | None:
    cond = Api.condition(api.get("Database", NS, "orders"), type_)
    return cond if cond and cond["status"] == status else None


def test_the_proxy_diagnostics_become_database_conditions(
    world: dict[str, Any], pod: RunningPod
) -> None:
    api: Api = world["api"]
    pod_object(world, "orders-rdsgate-abc12")
    for type_ in ("CredentialsAvailable", "UpstreamReachable", "UpstreamAuthenticated"):
        cond = wait_for(partial(condition, api, type_, "True"), f"{type_}=True", 30)
        assert cond["message"]
    creds = condition(api, "CredentialsAvailable", "True")
    assert creds is not None and "credentials from environment variables" in creds["message"]


def test_missing_credentials_show_on_the_database(
    world: dict[str, Any], pod: RunningPod, tmp_path: Path
) -> None:
    api: Api = world["api"]
    pod.stop()
    no_credentials = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    broken = run_pod(world, tmp_path, no_credentials)
    try:
        cond = wait_for(
            lambda: condition(api, "CredentialsAvailable", "False"),
            "CredentialsAvailable=False",
            30,
        )
        assert cond["reason"] == "NoCredentials"
        assert "no AWS credentials found" in cond["message"]
        event = wait_for(
            lambda: [e for e in api.events(NS, "orders") if e["reason"] == "NoCredentials"],
            "a NoCredentials Event",
            10,
        )[0]
        assert event["type"] == "Warning"
    finally:
        broken.stop()

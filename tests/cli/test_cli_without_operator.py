"""Where things go wrong behind the CLI: a Token the operator does not grant in time, and
port-forwards to pods that are not there or not listening.

An API emulator of this module's own, with no operator: the test writes the status a
controller would (a Ready Database, a Token's conditions, a Pod's readiness).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rdsgate.lab.postgres import free_port
from rdsgate.operator.cli.errors import CliError
from rdsgate.operator.cli.kubeconfig import connect
from rdsgate.operator.cli.portforward import PortForwarder
from tests.cli.conftest import RDSGATE, ROLES, write_kubeconfig
from tests.fixtures.k8s import Api, ApiServer, wait_for

NS = "offline"


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    return private_k8s_api


@pytest.fixture
def kubeconfig(k8s: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_kubeconfig(tmp_path / "kubeconfig", k8s.url, "olga", "cli-olga", NS)
    k8s.emulator.users["cli-olga"] = {"username": "olga"}
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def ready_database(api: Api, name: str) -> None:
    """A Database whose status says Ready, as the operator would write it."""
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": name, "namespace": NS, "labels": {"env": "test"}},
            "spec": {"endpoint": "orders.proxy-x.eu-west-1.rds.amazonaws.com:5432"},
        }
    )
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "ProxiesReady",
        "message": f"serving {name}.{NS}.svc:5432",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    api.patch("Database", NS, name, {"status": {"conditions": [ready]}}, sub="status")


def test_a_token_not_granted_in_time_is_named_with_its_conditions(
    k8s: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    api = Api(k8s.url)
    ready_database(api, "orders")
    api.create({**ROLES[0], "metadata": {"name": "app-rw", "namespace": NS}})
    # An expired Token of an earlier `db connect` of olga's, and one of somebody else's.
    for owner, name in (("olga", "orders-olga-old01"), ("pete", "orders-pete-old02")):
        api.create(
            {
                "apiVersion": "rdsgate.dev/v1alpha1",
                "kind": "Token",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "labels": {
                        "rdsgate.dev/created-by": "rdsgate-cli",
                        "rdsgate.dev/owner": owner,
                    },
                    "annotations": {"rdsgate.dev/owner-name": owner},
                },
                "spec": {"roles": ["app-rw"], "ttl": "1h", "database": "orders"},
            }
        )
        api.patch("Token", NS, name, {"status": {"expiresAt": "2026-01-01T00:00:00Z"}}, "status")
    env = {"KUBECONFIG": str(kubeconfig), "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "1000"}
    process = subprocess.Popen(
        [str(RDSGATE), "db", "connect", "orders", "--db-user", "app", "--db-name", "orders",
         "--print-env", "--timeout", "3s"],
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        token = wait_for(
            lambda: [t for t in api.objects("Token", NS) if "old0" not in t["metadata"]["name"]],
            "the CLI to create its Token",
            20,
        )[0]
        name = token["metadata"]["name"]
        conditions: list[dict[str, Any]] = [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ReferenceNotFound",
                "message": "Role 'gone' does not exist in namespace 'offline'",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
            {
                "type": "Expired",
                "status": "False",
                "reason": "NotExpired",
                "message": "expires at 2026-01-01T01:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
        ]
        api.patch("Token", NS, name, {"status": {"conditions": conditions}}, sub="status")
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 6, err
    assert out == ""
    assert (
        f"Token {NS}/{name} was not ready within 3s: Ready=False (ReferenceNotFound): Role "
        "'gone' does not exist in namespace 'offline'; Expired=False (NotExpired): expires at "
        "2026-01-01T01:00:00Z"
    ) in err
    assert f"Deleted your expired Token {NS}/orders-olga-old01" in err
    assert api.get("Token", NS, "orders-olga-old01") is None
    assert api.get("Token", NS, "orders-pete-old02") is not None


def service_and_pod(api: Api, name: str, port: int, *, ready: bool) -> None:
    labels = {"app.kubernetes.io/instance": name}
    api.create(
        {
            "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "selector": labels,
                "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}],
            },
        }
    )
    pod = f"{name}-rdsgate-0"
    api.create(
        {
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": NS, "labels": labels},
            "spec": {
                "containers": [
                    {"name": "proxy", "ports": [{"name": "postgres", "containerPort": port}]}
                ]
            },
        }
    )
    status = {
        "phase": "Running" if ready else "Pending",
        "podIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    api.patch("Pod", NS, pod, {"status": status}, sub="status")


def test_port_forward_needs_a_ready_pod(k8s: ApiServer, kubeconfig: Path) -> None:
    api = Api(k8s.url)
    service_and_pod(api, "pending", free_port(), ready=False)
    forwarder = PortForwarder(connect(None, NS), "pending", 5432)
    with pytest.raises(CliError) as caught:
        forwarder.start()
    assert caught.value.exit_code == 4
    assert str(caught.value) == (
        f"no Ready pod behind Service {NS}/pending (selector "
        "app.kubernetes.io/instance=pending; pods: pending-rdsgate-0 (Pending)): "
        f"kubectl -n {NS} get pods -l app.kubernetes.io/instance=pending"
    )


def test_a_refused_forward_is_reported_from_the_error_channel(
    k8s: ApiServer, kubeconfig: Path
) -> None:
    api = Api(k8s.url)
    port = free_port()  # nothing listens there
    service_and_pod(api, "deaf", port, ready=True)
    errors: list[str] = []
    with PortForwarder(connect(None, NS), "deaf", 5432, on_error=errors.append) as forwarder:
        target = forwarder.start()
        assert (target.pod, target.port) == ("deaf-rdsgate-0", port)
        with socket.create_connection(("127.0.0.1", forwarder.local_port), timeout=10) as conn:
            conn.settimeout(10)
            assert conn.recv(100) == b""  # closed, with the reason on the error channel
        wait_for(lambda: errors, "the forward to report the error", 10)
    assert errors[0].startswith(f"port-forward to pod {NS}/deaf-rdsgate-0:{port}: ")
    assert f"error forwarding port {port} to pod deaf-rdsgate-0" in errors[0]

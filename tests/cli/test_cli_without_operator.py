"""Where things go wrong behind the CLI: a Token the operator does not grant in time or
will never grant, a namespace without the proxies' CA, and port-forwards to pods that are
not there or not listening.

An API emulator of this module's own, with no operator: the test writes what a controller
would (a Ready Database, the CA ConfigMap, a Token's conditions, a Pod's readiness).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from rdsgate.lab.postgres import free_port
from rdsgate.operator import pki
from rdsgate.operator.cli.errors import CliError
from rdsgate.operator.cli.kubeconfig import connect
from rdsgate.operator.cli.portforward import PortForwarder
from tests.cli.conftest import RDSGATE, ROLES, write_kubeconfig
from tests.fixtures.k8s import Api, ApiServer, wait_for
from tests.fixtures.lab import LabCA

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


def ca_config_map(api: Api, lab_ca: LabCA) -> None:
    """The namespace's `rdsgate-ca`, as the operator writes it."""
    if api.get("ConfigMap", NS, "rdsgate-ca") is None:
        api.create(
            {
                "kind": "ConfigMap",
                "metadata": {"name": "rdsgate-ca", "namespace": NS},
                "data": {"ca.crt": lab_ca.cert_file.read_text()},
            }
        )


def start_connect(kubeconfig: Path, cache: Path, *args: str) -> subprocess.Popen[str]:
    env = {"KUBECONFIG": str(kubeconfig), "XDG_CACHE_HOME": str(cache), "COLUMNS": "1000"}
    return subprocess.Popen(
        [str(RDSGATE), "db", "connect", "orders", "--db-user", "app", "--db-name", "orders",
         "--print-env", *args],
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def created_token(api: Api, known: set[str]) -> dict[str, Any]:
    """The Token the CLI creates (one not in `known`)."""
    found: list[dict[str, Any]] = wait_for(
        lambda: [t for t in api.objects("Token", NS) if t["metadata"]["name"] not in known],
        "the CLI to create its Token",
        20,
    )
    return found[0]


def test_a_token_not_granted_in_time_is_named_with_its_conditions(
    k8s: ApiServer, kubeconfig: Path, tmp_path: Path, lab_ca: LabCA
) -> None:
    api = Api(k8s.url)
    ready_database(api, "orders")
    ca_config_map(api, lab_ca)
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
    process = start_connect(kubeconfig, tmp_path, "--timeout", "3s")
    try:
        token = created_token(api, {"orders-olga-old01", "orders-pete-old02"})
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
    # What the operator would sign: the public half of the key olga keeps.
    key = tmp_path / "rdsgate" / "kmock" / NS / "orders" / "tls.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert (
        token["spec"]["publicKey"]
        == private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert "secretName" not in token["spec"]
    api.delete("Token", NS, name)


@pytest.mark.parametrize(
    ("reason", "message", "code"),
    [
        (
            "BindRevoked",
            'olga may no longer bind Role "app-rw" in namespace "offline"; the grant was withdrawn',
            5,
        ),
        (
            "RequesterUnverified",
            "the Token has no rdsgate.dev/requested-by annotation (it was created before the "
            "admission webhooks) and the operator runs with --require-verified-requester",
            1,
        ),
    ],
)
def test_a_token_that_waiting_cannot_fix_fails_at_once(
    k8s: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    lab_ca: LabCA,
    reason: str,
    message: str,
    code: int,
) -> None:
    api = Api(k8s.url)
    if api.get("Database", NS, "orders") is None:
        ready_database(api, "orders")
        api.create({**ROLES[0], "metadata": {"name": "app-rw", "namespace": NS}})
    ca_config_map(api, lab_ca)
    known = {t["metadata"]["name"] for t in api.objects("Token", NS)}
    started = time.monotonic()
    process = start_connect(kubeconfig, tmp_path, "--timeout", "60s")
    try:
        name = created_token(api, known)["metadata"]["name"]
        ready = {
            "type": "Ready",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        api.patch("Token", NS, name, {"status": {"conditions": [ready]}}, sub="status")
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert time.monotonic() - started < 30  # not the 60 s --timeout
    assert out == ""
    assert f"Token {NS}/{name} cannot be used: Ready=False ({reason}): {message}" in " ".join(
        err.split()
    )
    api.delete("Token", NS, name)


def test_a_namespace_without_the_ca_config_map_is_named(
    k8s: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    api = Api(k8s.url)
    ns = "no-ca"
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": "orders", "namespace": ns, "labels": {"env": "test"}},
            "spec": {"endpoint": "orders.proxy-x.eu-west-1.rds.amazonaws.com:5432"},
        }
    )
    ready = {"type": "Ready", "status": "True", "reason": "ProxiesReady", "message": "serving"}
    api.patch("Database", ns, "orders", {"status": {"conditions": [ready]}}, sub="status")
    api.create({**ROLES[0], "metadata": {"name": "app-rw", "namespace": ns}})
    process = start_connect(kubeconfig, tmp_path, "-n", ns)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 3, err
    assert (
        f"error: no ConfigMap rdsgate-ca in namespace {ns}: is the rdsgate operator running, "
        "and does the namespace have a Database?"
    ) in " ".join(err.split())
    assert api.objects("Token", ns) == []
    assert not (tmp_path / "rdsgate").exists()  # no key made either


def test_a_ca_config_map_that_did_not_sign_the_certificate_is_not_trusted(
    k8s: ApiServer, kubeconfig: Path, tmp_path: Path, lab_ca: LabCA
) -> None:
    """Whoever may edit ConfigMaps could put their own CA in rdsgate-ca (to stand a fake
    proxy in front of the person); the certificate in the Token's status, which only the
    operator writes, must chain to it, or nothing is trusted."""
    api = Api(k8s.url)
    ns = "forged-ca"
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": "orders", "namespace": ns, "labels": {"env": "test"}},
            "spec": {"endpoint": "orders.proxy-x.eu-west-1.rds.amazonaws.com:5432"},
        }
    )
    ready = {"type": "Ready", "status": "True", "reason": "ProxiesReady", "message": "serving"}
    api.patch("Database", ns, "orders", {"status": {"conditions": [ready]}}, sub="status")
    api.create({**ROLES[0], "metadata": {"name": "app-rw", "namespace": ns}})
    impostor = pki.make_ca("not the rdsgate CA")
    api.create(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "rdsgate-ca", "namespace": ns},
            "data": {"ca.crt": impostor.cert_pem.decode()},
        }
    )
    process = start_connect(kubeconfig, tmp_path, "-n", ns, "--timeout", "30s")
    try:
        token = wait_for(lambda: api.objects("Token", ns), "the CLI's Token", 20)[0]
        name = token["metadata"]["name"]
        key = pki.load_public_key(token["spec"]["publicKey"])
        cert = pki.sign_client_cert(
            lab_ca.keypair,  # the real CA, which the ConfigMap does not hold
            key,
            f"{ns}/{name}",
            binding_sha256="ab" * 32,
            not_after=datetime.now(UTC) + timedelta(hours=1),
        )
        granted = {"type": "Ready", "status": "True", "reason": "Granted", "message": "ok"}
        api.patch(
            "Token",
            ns,
            name,
            {
                "status": {
                    "conditions": [granted],
                    "databases": ["orders"],
                    "certificate": cert.decode(),
                    "expiresAt": (datetime.now(UTC) + timedelta(hours=1)).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                }
            },
            sub="status",
        )
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert out == ""
    assert (
        f"error: the ConfigMap {ns}/rdsgate-ca does not hold the CA that signed your "
        f"certificate (status.certificate of Token {ns}/{name}): not trusting it"
    ) in " ".join(err.split())


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

"""Discovery end to end: an RDS Proxy in AWS → a DatabaseDiscovery → Databases → real proxies.

The lab's moto holds an RDS Proxy (tagged) with a read-only endpoint; the operator, with the
lab's AWS in its environment, discovers both and renders proxies for each Database. A Role
selecting `rdsgate.dev/endpoint-role: read-only` and a Token for it: psql through the
read-only Database's proxy (run as its pod, tests/fixtures/pods.py) reaches PostgreSQL via
an RDS Proxy stand-in serving the reader endpoint's host; through the read-write Database's
proxy the same Token is refused (28P01: that proxy's access bundle does not know it).

The discovered endpoints are RDS host names on port 5432: each pod gets an /etc/hosts
entry (in its own /etc overlay) pointing the reader's host at a loopback address where the
stand-in listens on 5432, as a VPC's DNS would point it at RDS Proxy.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rdsgate.lab.aws import AwsLab
from rdsgate.lab.lifecycle import stop_process
from rdsgate.lab.postgres import PostgresServer, free_port
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.fixtures.k8s import Api, ApiServer, OperatorProcess, start_operator, wait_for
from tests.fixtures.lab import PROXY_USERS, LabCA
from tests.fixtures.pods import Pod, mount_namespaces_unavailable

pytestmark = pytest.mark.skipif(
    mount_namespaces_unavailable() is not None, reason=str(mount_namespaces_unavailable())
)

NS = "reports"
#: Where the reader endpoint's host points in the pods' /etc/hosts (the stand-in's address).
READER_ADDRESS = "127.0.0.3"


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    return private_k8s_api


@pytest.fixture(scope="module")
def operator(
    k8s: ApiServer, aws: AwsLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = start_operator(
        k8s,
        tmp_path_factory.mktemp("operator"),
        "--diagnose-interval",
        "600",
        environment=aws.env(aws.admin.credentials),
    )
    yield op
    op.stop()


@pytest.fixture(scope="module")
def world(
    k8s: ApiServer,
    operator: OperatorProcess,
    aws: AwsLab,
    pg: PostgresServer,
    lab_ca: LabCA,
) -> Iterator[dict[str, Any]]:
    """The proxy in AWS, its reader's stand-in, the discovery, a Role and a Token."""
    api = Api(k8s.url)
    tag = os.urandom(3).hex()
    name = f"orders-{tag}"
    db_proxy = aws.create_rds_proxy(name, {u: pg.passwords[u] for u in PROXY_USERS})
    rds = aws.client("rds")
    rds.add_tags_to_resource(
        ResourceName=db_proxy.arn,
        Tags=[{"Key": "e2e", "Value": tag}, {"Key": "env", "Value": "prod"}],
    )
    reader_host = aws.create_db_proxy_endpoint(name, f"reporting-{tag}")  # unique per region
    standin = RdsProxyStandIn(
        aws,
        db_proxy,
        upstream_host=pg.host,
        upstream_port=pg.port,
        upstream_ca_file=pg.ca_file,
        ca=lab_ca.keypair,
        listen_host=READER_ADDRESS,
        endpoint_host=reader_host,
        port=5432,
    ).start()
    port = free_port()
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "DatabaseDiscovery",
            "metadata": {"name": "aws", "namespace": NS},
            "spec": {
                "aws": {"regions": [aws.region]},
                "match": {"tags": {"e2e": tag}},
                "interval": "1s",
                "template": {
                    "metadata": {"labels": {"source": "aws"}},
                    "spec": {
                        "tls": {"caBundle": lab_ca.cert_file.read_text()},
                        "proxy": {"replicas": 1, "port": port, "metricsPort": free_port()},
                    },
                },
            },
        }
    )
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Role",
            "metadata": {"name": "reporting", "namespace": NS},
            "spec": {
                "allow": {
                    "databases": {"matchLabels": {"rdsgate.dev/endpoint-role": "read-only"}},
                    "databaseNames": ["orders"],
                    "databaseUsers": ["app"],
                }
            },
        }
    )
    ro_name = f"{name}-reporting-{tag}"
    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Token",
            "metadata": {"name": "report-job", "namespace": NS},
            "spec": {
                "roles": ["reporting"],
                "database": ro_name,
                "databaseUser": "app",
                "databaseName": "orders",
            },
        }
    )
    try:
        yield {
            "api": api,
            "port": port,
            "rw": name,
            "ro": ro_name,
            "reader_host": reader_host,
            "standin": standin,
            "resource_id": db_proxy.resource_id,
            "operator": operator,
        }
    finally:
        standin.stop()


def deployment(world: Mapping[str, Any], db: str) -> dict[str, Any]:
    api: Api = world["api"]
    found: dict[str, Any] = wait_for(
        lambda: api.get("Deployment", NS, f"{db}-rdsgate"),
        f"the proxies of the discovered Database {db}",
        30,
        world["operator"].tail,
    )
    for kind, name in (
        ("ConfigMap", f"{db}-rdsgate"),
        ("Secret", f"{db}-rdsgate-tls"),
        ("Secret", f"{db}-rdsgate-access"),
    ):
        wait_for(lambda k=kind, n=name: api.get(k, NS, n), f"{kind} {name}", 30)  # type: ignore[misc]
    return found


def run_pod(
    world: Mapping[str, Any], db: str, root: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """The Database's proxy as its pod, with the reader's host in the pod's /etc/hosts."""
    pod = Pod(world["api"], deployment(world, db), root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc-upper").mkdir(exist_ok=True)
    hosts = Path("/etc/hosts").read_text()
    (root / "etc-upper" / "hosts").write_text(f"{hosts}\n{READER_ADDRESS} {world['reader_host']}\n")
    log = root / "proxy.log"
    with log.open("wb") as out:
        process = pod.start(env, stdout=out, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the proxy exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", world["port"]), timeout=1):
                return True
        except OSError:
            return False

    wait_for(listening, f"the proxy of {db} to listen", 30, log.read_text)
    return process


def token_secret(world: Mapping[str, Any]) -> dict[str, str]:
    api: Api = world["api"]

    def written() -> dict[str, Any] | None:
        found = api.get("Secret", NS, "report-job-rdsgate")
        return found if found and "PGPASSWORD" in (found.get("data") or {}) else None

    secret = wait_for(written, "the Token's Secret", 30)
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def psql(
    world: Mapping[str, Any], secret: Mapping[str, str], tmp: Path, host: str
) -> subprocess.CompletedProcess[str]:
    """psql with the Token Secret's PG* variables; PGHOST names the Service (verify-full
    checks the proxy's certificate for it), PGHOSTADDR stands for the Service's routing."""
    ca = tmp / "ca.crt"
    ca.write_text(secret["ca.crt"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({k: v for k, v in secret.items() if k.startswith("PG")})
    env.update(
        PGHOST=host,
        PGHOSTADDR="127.0.0.1",
        PGPORT=str(world["port"]),
        PGSSLROOTCERT=str(ca),
        PGCONNECT_TIMEOUT="10",
    )
    return subprocess.run(
        ["psql", "-XAtc", "select current_user, current_database()"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_a_read_only_role_reaches_only_the_discovered_reader(
    world: dict[str, Any], aws: AwsLab, tmp_path: Path
) -> None:
    api: Api = world["api"]
    ro = wait_for(lambda: api.get("Database", NS, world["ro"]), "the reader's Database", 30)
    rw = wait_for(lambda: api.get("Database", NS, world["rw"]), "the writer's Database", 30)
    assert ro["metadata"]["labels"]["rdsgate.dev/endpoint-role"] == "read-only"
    assert rw["metadata"]["labels"]["rdsgate.dev/endpoint-role"] == "read-write"
    assert ro["spec"]["endpoint"] == f"{world['reader_host']}:5432"

    secret = token_secret(world)
    assert secret["PGHOST"] == f"{world['ro']}.{NS}.svc"
    identity = aws.iam_for(world["resource_id"]).user("app")
    env = dict(os.environ) | identity.env

    reader = run_pod(world, world["ro"], tmp_path / "ro", env)
    try:
        out = psql(world, secret, tmp_path, secret["PGHOST"])
        assert out.returncode == 0, out.stderr + (tmp_path / "ro" / "proxy.log").read_text()
        assert out.stdout.strip() == "app|orders"
        assert world["standin"].sessions_total >= 1
    finally:
        stop_process(reader, 20)

    writer = run_pod(world, world["rw"], tmp_path / "rw", env)
    try:
        err = refusal(world, secret)
        # The writer's access bundle holds only the grants whose Roles select it: there the
        # Token is an unknown identity, refused like a wrong password (28P01), saying no
        # more about which Databases it may reach.
        assert err.sqlstate == "28P01", (err.sqlstate, err.message)
        assert err.message.startswith("password authentication failed"), err.message
    finally:
        stop_process(writer, 20)


def refusal(world: Mapping[str, Any], secret: Mapping[str, str]) -> asyncpg.PostgresError:
    """The error of a log-in with the Token through the running proxy (asyncpg keeps the
    SQLSTATE); the proxy's certificate is checked against the Token's CA."""
    context = ssl.create_default_context(cadata=secret["ca.crt"])
    context.check_hostname = False  # PGHOST names the reader's Service, not this one

    async def connect() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=world["port"],
            user=secret["PGUSER"],
            password=secret["PGPASSWORD"],
            database=secret["PGDATABASE"],
            ssl=context,
            timeout=15,
        )
        await conn.close()

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(connect())
    return info.value

"""Fault 8 of issue 14: the Kubernetes API server is unreachable for a while.

The operator runs against an API emulator of this module's own, a real proxy runs the
Deployment it rendered (tests/fixtures/pods.py plays the kubelet) in front of the RDS Proxy
stand-in and PostgreSQL. Then the emulator closes its listening socket and drops every open
connection (`ApiServer.outage`: connections are refused, as when kube-apiserver is down) and
listens again on the same port with the same objects. Meanwhile:

- the proxy keeps serving on the files it has: logins, an open session, /readyz;
- a Token whose `expiresAt` falls in the gap is refused by the proxy itself at that instant
  (the access file carries `expiresAt`; the operator cannot rewrite anything);
- someone deletes the Deployment and edits the proxy ConfigMap through another door to the
  same store (another API server replica, as it were);
- the operator backs off (kopf's 1, 1, 2, 3, 5, 8, 13, 21 s between attempts of each watch,
  counted from its log) rather than retrying in a loop;
- once the API answers again, the watches resume from their resourceVersion, the missed
  events arrive and the operator repairs the drift, with no restart and no resync timer (it
  is set to 600 s here).

The outage lasts OUTAGE seconds, not the issue's 60, to keep CI's budget: what the operator
does within it is the same schedule's beginning. Over 60 s each watch would try at 0, 1, 2,
4, 7, 12, 20, 33 and 54 s, escalate, and start the same schedule again (caught by kopf's
watcher), so it reconnects within a few seconds of the API's return either way; the bound
asserted below (attempts per watch within the outage) is that schedule's.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rdsgate.lab.lifecycle import stop_process
from rdsgate.lab.postgres import free_port
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.fixtures.k8s import Api, ApiServer, OperatorProcess, start_operator, wait_for
from tests.fixtures.lab import DbIdentity, LabCA, database_manifest
from tests.fixtures.pods import Pod, mount_namespaces_unavailable
from tests.operator.test_op_operator import bundle

pytestmark = pytest.mark.skipif(
    mount_namespaces_unavailable() is not None, reason=str(mount_namespaces_unavailable())
)

NS = "shop"
#: How long the API server refuses connections here (the issue says 60 s; see above).
#: RDSGATE_TEST_API_OUTAGE=60 runs the issue's full outage.
OUTAGE = float(os.environ.get("RDSGATE_TEST_API_OUTAGE") or 11)
#: kopf's default `settings.networking.error_backoffs`: the pauses between one request's
#: attempts; after the last attempt the watcher starts the schedule again at once.
KOPF_BACKOFFS = (1, 1, 2, 3, 5, 8, 13, 21)
#: The Token that expires during the outage lives this long (its expiry lands mid-outage).
BRIEF_TTL = 8


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    return private_k8s_api


@pytest.fixture(scope="module")
def operator(k8s: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = start_operator(k8s, tmp_path_factory.mktemp("operator"), "--resync-interval", "600")
    yield op
    op.stop()


def token(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "roles": ["app-rw"],
            "database": "orders",
            "databaseUser": "app",
            "databaseName": "orders",
            **spec,
        },
    }


def secret_of(api: Api, name: str) -> dict[str, str] | None:
    """The Token Secret's keys, decoded, once the operator has written its PG* variables."""
    secret = api.get("Secret", NS, f"{name}-rdsgate")
    data = (secret or {}).get("data") or {}
    if "PGPASSWORD" not in data:
        return None
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def grants(api: Api) -> list[str]:
    """The identities the access Secret grants, read as the proxy reads it."""
    found = bundle(api, NS)
    return sorted(found[1]) if found else []


@dataclass
class Client:
    """An app with a Token Secret's PG* variables, connecting through the Service name (the
    proxy's certificate is checked for it) to the proxy on loopback."""

    env: dict[str, str]
    port: int
    ca: Path

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.env["PGHOST"],
            hostaddr="127.0.0.1",
            port=self.port,
            user=self.env["PGUSER"],
            dbname=self.env["PGDATABASE"],
            password=self.env["PGPASSWORD"],
            sslmode="verify-full",
            sslrootcert=str(self.ca),
            connect_timeout=5,
            autocommit=True,
        )

    def login(self) -> str | None:
        """None when a login and a query work; else the server's message."""
        try:
            with self.connect() as conn:
                conn.execute("select 1")
        except psycopg.Error as exc:
            return str(exc)
        return None


def client(api: Api, name: str, port: int, tmp: Path) -> Client:
    env = wait_for(partial(secret_of, api, name), f"the Secret of Token {name}", 30)
    ca = tmp / f"{name}-ca.crt"
    ca.write_text(env["ca.crt"])
    return Client(env, port, ca)


@dataclass
class World:
    api: Api
    operator: OperatorProcess
    pod: Pod
    proxy: subprocess.Popen[bytes]
    proxy_log: Path
    port: int
    metrics_port: int


@pytest.fixture(scope="module")
def world(
    k8s: ApiServer,
    operator: OperatorProcess,
    rds_proxy: RdsProxyStandIn,
    lab_ca: LabCA,
    proxy_identity: DbIdentity,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    api = Api(k8s.url)
    port = free_port()
    database = database_manifest("orders", NS, rds_proxy, lab_ca.cert_file.read_text(), port)
    api.create(database)
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
    api.create(token("steady"))
    wait_for(lambda: grants(api) == [f"{NS}/steady"], "the grant", 30, operator.tail)
    for kind, name in (("ConfigMap", "orders-rdsgate"), ("Secret", "orders-rdsgate-tls")):
        wait_for(partial(api.get, kind, NS, name), f"{kind} {name}", 30, operator.tail)
    deployment = wait_for(
        lambda: api.get("Deployment", NS, "orders-rdsgate"), "the Deployment", 30, operator.tail
    )
    root = tmp_path_factory.mktemp("pod")
    pod = Pod(api, deployment, root)
    log = root / "proxy.log"
    with log.open("wb") as out:
        process = pod.start(
            dict(os.environ) | proxy_identity.env, stdout=out, stderr=subprocess.STDOUT
        )

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the proxy exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(listening, "the proxy to listen", 30, log.read_text)
        yield World(
            api, operator, pod, process, log, port, database["spec"]["proxy"]["metricsPort"]
        )
    finally:
        stop_process(process, 20)


def readyz(world: World) -> int:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{world.metrics_port}/readyz", timeout=5
        ) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def kopf_attempts(op: OperatorProcess, start: float, end: float) -> dict[str, list[float]]:
    """The failed API requests kopf logged between two wall-clock times: per URL, when."""
    attempts: dict[str, list[float]] = {}
    for line in op.log_lines():
        message = str(line.get("message") or "")
        if not message.startswith("Request attempt #") or " failed" not in message:
            continue
        at = datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()
        if start <= at <= end:
            url = message.split(": ", 1)[1].split(" -> ")[0]
            attempts.setdefault(url, []).append(at)
    return attempts


def most_attempts(seconds: float) -> int:
    """How many attempts one watch makes in `seconds` on kopf's backoff schedule."""
    at, count = 0.0, 0
    while True:
        for pause in (*KOPF_BACKOFFS, 0.1):
            if at > seconds:
                return count
            count += 1
            at += pause


def test_the_proxy_serves_through_an_api_outage_and_the_operator_repairs_after(
    k8s: ApiServer, world: World, tmp_path: Path
) -> None:
    api, op = world.api, world.operator
    steady = client(api, "steady", world.port, tmp_path)
    assert steady.login() is None, world.proxy_log.read_text()

    # A Token that expires while the API is down, granted and on the proxy's disk first.
    api.create(token("brief", ttl=f"{BRIEF_TTL}s"))
    wait_for(lambda: f"{NS}/brief" in grants(api), "the brief grant", 30, op.tail)
    brief = client(api, "brief", world.port, tmp_path)
    world.pod.sync()
    wait_for(lambda: brief.login() is None, "the brief Token to log in", 15)
    status = wait_for(
        lambda: ((api.get("Token", NS, "brief") or {}).get("status") or {}).get("expiresAt"),
        "the brief Token's expiresAt",
        30,
        op.tail,
    )
    expires_at = datetime.fromisoformat(str(status).replace("Z", "+00:00")).timestamp()
    deployment = api.get("Deployment", NS, "orders-rdsgate")
    config_map = api.get("ConfigMap", NS, "orders-rdsgate")
    assert deployment is not None and config_map is not None

    session = steady.connect()
    down_at = time.time()
    with k8s.outage() as side_door:
        assert time.time() < expires_at, "the brief Token expired before the outage began"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(k8s.url.rsplit(":", 1)[1])), timeout=1)
        # Drift while the operator cannot see it.
        door = Api(side_door)
        door.delete("Deployment", NS, "orders-rdsgate")
        door.patch("ConfigMap", NS, "orders-rdsgate", {"data": {"config.yaml": "edited: true\n"}})

        last_allowed = refused_at = 0.0
        refusal = ""
        served = 0
        # At least OUTAGE, and past the brief Token's expiry on a slow machine.
        until = max(down_at + OUTAGE, expires_at + 2)
        while time.time() < until:
            assert steady.login() is None, world.proxy_log.read_text()[-3000:]
            assert session.execute("select 2").fetchone() == (2,)
            assert readyz(world) == 200
            served += 1
            if not refused_at:
                tried = time.time()
                message = brief.login()
                if message is None:
                    last_allowed = tried
                else:
                    refused_at, refusal = tried, message
        up_at = time.time()
    session.close()

    # The proxy enforced the expiry itself, at the instant, with the API out of reach.
    assert down_at < expires_at < up_at
    assert "token expired at" in refusal, refusal
    assert last_allowed < expires_at + 0.05
    assert refused_at - expires_at < 1.0, f"refused {refused_at - expires_at:.2f}s late"
    assert served >= 5

    # The operator backed off: each watch's attempts within the outage follow kopf's
    # schedule (1, 1, 2, 3, 5, 8 s apart within 11 s), no hot loop.
    attempts = kopf_attempts(op, down_at, up_at)
    assert attempts, op.tail()
    bound = most_attempts(up_at - down_at) + 1
    for url, times in attempts.items():
        assert len(times) <= bound, f"{len(times)} attempts in {up_at - down_at:.0f}s: {url}"
        gaps = [b - a for a, b in itertools.pairwise(times)][: len(KOPF_BACKOFFS)]
        assert all(b >= a - 0.5 for a, b in itertools.pairwise(gaps)), (url, gaps)
    total = sum(len(t) for t in attempts.values())
    outage_lines = [
        line
        for line in op.log_lines()
        if down_at
        <= datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()
        <= up_at
    ]
    assert len(outage_lines) <= 2 * total + 10, outage_lines[-20:]

    # Once the API is back, the missed events arrive and the drift is repaired.
    def repaired() -> bool:
        dep = api.get("Deployment", NS, "orders-rdsgate")
        cm = api.get("ConfigMap", NS, "orders-rdsgate")
        return bool(
            dep
            and cm
            and dep["metadata"]["uid"] != deployment["metadata"]["uid"]
            and cm["data"] == config_map["data"]
        )

    wait_for(repaired, "the Deployment and the ConfigMap to be put back", 30, op.tail)
    repaired_in = time.time() - up_at
    dep = api.get("Deployment", NS, "orders-rdsgate")
    assert dep is not None and dep["spec"] == deployment["spec"]
    # And the expired grant leaves the bundle, the Token says so.
    wait_for(lambda: f"{NS}/brief" not in grants(api), "the expired grant to go", 30, op.tail)
    expired = wait_for(
        lambda: (
            (c := Api.condition(api.get("Token", NS, "brief"), "Expired"))
            and c["status"] == "True"
            and c
        ),
        "the brief Token's Expired condition",
        30,
        op.tail,
    )
    assert expired["reason"] == "TTLElapsed"
    expired_in = time.time() - up_at
    print(
        json.dumps(
            {
                "outage_s": round(up_at - down_at, 1),
                "failed_api_attempts": total,
                "watches": len(attempts),
                "operator_log_lines_in_outage": len(outage_lines),
                "refused_after_expiry_s": round(refused_at - expires_at, 3),
                "repaired_after_return_s": round(repaired_in, 1),
                "token_expired_status_after_return_s": round(expired_in, 1),
            }
        )
    )
    assert op.process.poll() is None
    assert world.proxy.poll() is None

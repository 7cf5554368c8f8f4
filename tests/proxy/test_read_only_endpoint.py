"""A Database with a read-only endpoint: two listeners, each logging in to its own upstream.

Two RDS Proxy stand-ins of the same RDS Proxy (same resource id and secrets, as an RDS
Proxy's default and read-only endpoints are): the writer in front of the lab's `pg`, the
reader in front of a PostgreSQL whose `orders` database has
`default_transaction_read_only=on`, so a user sees which one they reached (`SHOW`, and a
write failing with 25006). Each stand-in checks that the IAM auth token was signed for its
own host and port. Roles choose listeners with `allow.endpoints` / `deny.endpoints`, and
every audit line says which listener a session came in on. The Token Secret's `PGHOST_RO`
and the server certificate's `-ro` names work with libpq's verify-full and multi-host
`target_session_attrs`.
"""

from __future__ import annotations

import base64
import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rdsgate.lab.aws import AwsLab
from rdsgate.lab.postgres import PostgresServer, free_port
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from rdsgate.operator import access as op_access
from rdsgate.operator import pki, render
from rdsgate.proxy.access import secret_digest
from tests.fixtures.lab import PROXY_USERS, LabCA, wait_for
from tests.fixtures.proxy import APP_SECRET, DEFAULT_ACCESS, ProxyLab, RunningProxy
from tests.fixtures.proxy import login_refusal as refusal

ANALYST_SECRET = "analyst-token-5a6b7c8d9e"
AUDITOR_SECRET = "auditor-token-0f1e2d3c4b"

#: The default access file, plus a Role for the read-only listener only and a Role that
#: denies the read-write one.
ACCESS: dict[str, Any] = {
    **DEFAULT_ACCESS,
    "roles": [
        *DEFAULT_ACCESS["roles"],
        {
            "name": "orders-reader",
            "allow": {
                "databases": {},
                "databaseNames": ["orders"],
                "databaseUsers": ["reporting"],
                "endpoints": ["read-only"],
            },
        },
        {"name": "no-writes", "deny": {"endpoints": ["read-write"]}},
    ],
    "grants": [
        *DEFAULT_ACCESS["grants"],
        {
            "identity": "shop/analyst",
            "secretSha256": secret_digest(ANALYST_SECRET),
            "roles": ["orders-reader"],
        },
        {
            "identity": "shop/auditor",
            "secretSha256": secret_digest(AUDITOR_SECRET),
            "roles": ["orders-rw", "no-writes"],
        },
    ],
}

#: The Database these proxies serve, as the operator renders its names.
DATABASE = render.Database(
    {
        "metadata": {"name": "orders", "namespace": "shop", "labels": {"env": "test"}},
        "spec": {"endpoint": "writer:5432", "readOnlyEndpoint": "reader:5432"},
    }
)


@pytest.fixture(scope="module")
def reader_pg(lab_ca: LabCA, pg: PostgresServer) -> Iterator[PostgresServer]:
    """The reader's database: the same logins as `pg`, every transaction read-only."""
    with PostgresServer(ca=lab_ca.keypair) as server:
        for name in PROXY_USERS:
            server.create_role(name, pg.passwords[name])
        server.create_database("orders", owner="app")
        server.execute("ALTER DATABASE orders SET default_transaction_read_only = on")
        yield server


@pytest.fixture(scope="module")
def reader(
    aws: AwsLab, rds_proxy: RdsProxyStandIn, reader_pg: PostgresServer, lab_ca: LabCA
) -> Iterator[RdsProxyStandIn]:
    """The RDS Proxy's read-only endpoint: the same proxy in moto, its own host:port."""
    with RdsProxyStandIn(
        aws,
        rds_proxy.db_proxy_name,
        upstream_host=reader_pg.host,
        upstream_port=reader_pg.port,
        upstream_ca_file=reader_pg.ca_file,
        ca=lab_ca.keypair,
    ) as standin:
        yield standin


class ReadOnlyProxy:
    """A running proxy with both listeners, and how to reach each."""

    def __init__(self, running: RunningProxy, ro_port: int, tls_dir: Path) -> None:
        self.running = running
        self.rw_port = running.port
        self.ro_port = ro_port
        self.tls_dir = tls_dir

    def dsn(self, port: int, **kw: Any) -> str:
        return self.running.dsn(**kw, port=str(port))

    def url(self, port: int, user: str, password: str) -> str:
        return self.running.url(user=user, password=password).replace(
            f"@localhost:{self.rw_port}/", f"@localhost:{port}/"
        )


@pytest.fixture(scope="module")
def proxy_ro(
    proxy_lab: ProxyLab, reader: RdsProxyStandIn, lab_ca: LabCA
) -> Iterator[ReadOnlyProxy]:
    tls_dir = proxy_lab.tmp / f"ro-tls-{os.urandom(3).hex()}"
    tls_dir.mkdir()
    # The certificate the operator would issue: the Service names of <db> and <db>-ro
    # (plus localhost, which the fixture's DSNs use).
    names = ["localhost", *render.server_names(DATABASE, "cluster.local")]
    pair = pki.issue_server_cert(lab_ca.keypair, names, ["127.0.0.1"])
    (tls_dir / "tls.crt").write_bytes(pair.cert_pem)
    (tls_dir / "tls.key").write_bytes(pair.key_pem)
    ro_port = free_port()
    running = proxy_lab.start(
        {
            "tls": {"certFile": str(tls_dir / "tls.crt"), "keyFile": str(tls_dir / "tls.key")},
            "readOnly": {"port": ro_port, "endpoint": reader.endpoint},
        },
        access=ACCESS,
    )
    yield ReadOnlyProxy(running, ro_port, tls_dir)
    running.stop()


def on_endpoint(endpoint: str, event: dict[str, Any]) -> bool:
    return bool(event["endpoint"] == endpoint)


def read_only_setting(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("show default_transaction_read_only").fetchone()
    assert row is not None
    return str(row[0])


def test_each_listener_logs_in_to_its_own_endpoint(
    proxy_ro: ReadOnlyProxy, reader: RdsProxyStandIn
) -> None:
    proxy = proxy_ro.running
    mark, reader_rejections = len(proxy.audit), len(reader.rejections)
    with psycopg.connect(proxy_ro.dsn(proxy_ro.rw_port), autocommit=True) as rw:
        assert read_only_setting(rw) == "off"
    reader_sessions = reader.sessions_total
    with psycopg.connect(proxy_ro.dsn(proxy_ro.ro_port), autocommit=True) as ro:
        assert read_only_setting(ro) == "on"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
            ro.execute("create table written_through_the_reader (v int)")
        assert info.value.sqlstate == "25006"
        assert "read-only transaction" in str(info.value)
    # The reader stand-in took the log-in: its token was signed for its own host and port.
    assert reader.sessions_total == reader_sessions + 1
    assert reader.rejections[reader_rejections:] == []

    # The audit lines arrive through the proxy's stdout: wait for the reader session's end.
    ends = [
        proxy.wait_audit("session.end", functools.partial(on_endpoint, kind), start=mark)
        for kind in ("read-write", "read-only")
    ]
    ro_session = ends[1]["session_id"]
    starts = [e for e in proxy.events("session.start", mark) if e["db_user"] == "app"]
    assert [e["endpoint"] for e in starts] == ["read-write", "read-only"]
    assert starts[1]["session_id"] == ro_session
    queries = [e for e in proxy.events("session.query", mark) if e["session_id"] == ro_session]
    assert queries and {e["endpoint"] for e in queries} == {"read-only"}
    assert any("written_through_the_reader" in e["sql"] for e in queries)


def test_warm_connections_of_the_reader_log_in_to_the_reader(proxy_ro: ReadOnlyProxy) -> None:
    proxy = proxy_ro.running
    dsn = proxy_ro.dsn(proxy_ro.ro_port, application_name="warm-reader")
    hits = proxy.metric("rdsgate_upstream_warm_total", {"result": "hit"})
    for _ in range(2):  # a parameter set is kept warm once it comes back
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert read_only_setting(conn) == "on"
    assert wait_for(lambda: proxy.metric("rdsgate_upstream_warm_idle") >= 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert read_only_setting(conn) == "on"
    assert proxy.metric("rdsgate_upstream_warm_total", {"result": "hit"}) == hits + 1


def test_a_role_for_the_read_only_endpoint_is_refused_on_the_read_write_one(
    proxy_ro: ReadOnlyProxy,
) -> None:
    proxy = proxy_ro.running
    mark = len(proxy.audit)
    err = refusal(proxy_ro.url(proxy_ro.rw_port, "reporting", ANALYST_SECRET))
    assert err.sqlstate == "28000"
    assert (
        "access denied: shop/analyst may not log in as database user 'reporting' to database "
        "'orders' on shop/orders (read-write): role 'orders-reader' allows database user "
        "'reporting' on database 'orders' only through the read-only endpoint "
        "(allow.endpoints [read-only]), not read-write"
    ) in err.message
    denied = proxy.wait_audit("auth.denied", lambda e: e["identity"] == "shop/analyst", start=mark)
    assert denied["endpoint"] == "read-write"
    assert "allow.endpoints [read-only]" in denied["reason"]

    dsn = proxy_ro.dsn(proxy_ro.ro_port, user="reporting", password=ANALYST_SECRET)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("reporting",)


def test_deny_endpoints_refuses_every_login_through_that_listener(
    proxy_ro: ReadOnlyProxy,
) -> None:
    err = refusal(proxy_ro.url(proxy_ro.rw_port, "app", AUDITOR_SECRET))
    assert err.sqlstate == "28000"
    assert (
        "role 'no-writes' denies every login on the read-write endpoint "
        "(deny.endpoints [read-write])"
    ) in err.message
    dsn = proxy_ro.dsn(proxy_ro.ro_port, password=AUDITOR_SECRET)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert read_only_setting(conn) == "on"


def _secret_env(proxy_ro: ReadOnlyProxy, lab_ca: LabCA) -> dict[str, str]:
    """The environment an app gets from its Token Secret with envFrom, as the operator
    writes it for a Token naming this Database, with the CA where the app mounts it."""
    token = {
        "metadata": {"name": "orders-app", "namespace": "shop", "uid": "u1"},
        "spec": {"database": "orders", "databaseUser": "app", "databaseName": "orders"},
    }
    client = pki.issue_client_cert(lab_ca.keypair, "shop/orders-app", secret_sha256="0" * 64)
    data = op_access.token_secret_data(
        token,
        namespace="shop",
        secret=APP_SECRET,
        ca_pem=lab_ca.keypair.cert_pem,
        client=client,
        readers={"orders"},
    )
    values = {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}
    mount = proxy_ro.tls_dir / "secret"
    mount.mkdir(exist_ok=True)
    (mount / "ca.crt").write_text(values["ca.crt"])
    env = {k: v for k, v in values.items() if k.startswith("PG")}
    assert env["PGSSLROOTCERT"] == "/var/run/secrets/rdsgate/ca.crt"
    env["PGSSLROOTCERT"] = str(mount / "ca.crt")
    return env


def psql(env: dict[str, str], *args: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = subprocess.run(
        ["psql", "-XAtc", "show default_transaction_read_only", *args],
        env=base | env | {"PGCONNECT_TIMEOUT": "10"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_token_secret_pghost_ro_connects_with_libpq(proxy_ro: ReadOnlyProxy, lab_ca: LabCA) -> None:
    env = _secret_env(proxy_ro, lab_ca)
    assert env["PGHOST"] == "orders.shop.svc"
    assert env["PGHOST_RO"] == "orders-ro.shop.svc"
    # In the cluster the Services map 5432 to each listener; here the listeners are dialled
    # directly, and verify-full checks the certificate for the Service names.
    local = {"PGHOSTADDR": "127.0.0.1"}
    reader_env = env | local | {"PGHOST": env["PGHOST_RO"], "PGPORT": str(proxy_ro.ro_port)}
    assert psql(reader_env) == "on"
    writer_env = env | local | {"PGPORT": str(proxy_ro.rw_port)}
    assert psql(writer_env) == "off"

    # Multi-host: libpq tries the hosts in order and keeps the first whose session
    # matches target_session_attrs (it reads default_transaction_read_only, which the
    # reader reports at log-in).
    hosts = {
        "PGHOST": f"{env['PGHOST']},{env['PGHOST_RO']}",
        "PGHOSTADDR": "127.0.0.1,127.0.0.1",
        "PGPORT": f"{proxy_ro.rw_port},{proxy_ro.ro_port}",
    }
    assert psql(env | hosts | {"PGTARGETSESSIONATTRS": "read-only"}) == "on"
    assert psql(env | hosts | {"PGTARGETSESSIONATTRS": "read-write"}) == "off"
    reversed_hosts = {k: ",".join(reversed(v.split(","))) for k, v in hosts.items()}
    assert psql(env | reversed_hosts | {"PGTARGETSESSIONATTRS": "read-write"}) == "off"
    assert psql(env | reversed_hosts | {"PGTARGETSESSIONATTRS": "any"}) == "on"

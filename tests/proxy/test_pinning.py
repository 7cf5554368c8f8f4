"""Pinning insight from real driver traffic: what would make RDS Proxy pin a session is
counted in `rdsgate_pinning_statements_total`, named in `session.end`'s `pinned_by` and
summed per identity on `/pinning` (rdsgate-proxy → RDS Proxy stand-in → PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest

from rdsgate.operator import render
from tests.fixtures.k8s import Api, ApiServer
from tests.fixtures.proxy import APP_SECRET, RunningProxy
from tests.operator.world import example, reconciler_for

DATABASE = "shop/orders"
IDENTITY = "shop/orders-app"
_SAMPLE = re.compile(
    r'^rdsgate_pinning_statements_total\{database="([^"]*)",reason="([^"]*)"\} (\S+)$', re.M
)


class Seen:
    """The proxy's pinning figures at one moment, to compare with a later one."""

    def __init__(self, proxy: RunningProxy) -> None:
        self.proxy = proxy
        self.audit_at = len(proxy.audit)
        self.metrics = self._metrics()
        self.per_identity = self._per_identity()

    def _metrics(self) -> dict[str, float]:
        _, text = self.proxy.http("/metrics")
        return {r: float(v) for db, r, v in _SAMPLE.findall(text) if db == DATABASE}

    def _per_identity(self) -> dict[tuple[str, str], int]:
        status, body = self.proxy.http("/pinning")
        assert status == 200, body
        doc = json.loads(body)
        return {(e["identity"], e["reason"]): e["statements"] for e in doc["pinning"]}

    def session_end(self) -> dict[str, Any]:
        return self.proxy.wait_audit("session.end", start=self.audit_at)

    def metric_delta(self) -> dict[str, float]:
        now = self._metrics()
        return {r: v - self.metrics.get(r, 0.0) for r, v in now.items() if v != self.metrics.get(r)}

    def identity_delta(self) -> dict[tuple[str, str], int]:
        now = self._per_identity()
        return {
            k: v - self.per_identity.get(k, 0)
            for k, v in now.items()
            if v != self.per_identity.get(k)
        }


def psql(proxy: RunningProxy, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", proxy.dsn(), "-XAtc", sql],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


LARGE = "select '" + "x" * 17_000 + "' is not null"

PSQL_CASES: list[tuple[str, str]] = [
    ("SET search_path TO public", "set"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "set"),
    ("RESET ALL", "set"),
    ("select set_config('application_name', 'pinned', false)", "set"),
    ("LISTEN orders_changed", "listen"),
    ("CREATE TEMP TABLE scratch (id int)", "temporary_object"),
    ("/* lock it */ SELECT pg_advisory_lock(42)", "advisory_lock"),
    ("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT", "cursor"),
    ("PREPARE q AS SELECT 1; EXECUTE q", "prepared_statement"),
    ("DISCARD ALL", "discard"),
    ("create sequence if not exists pin_seq; select nextval('pin_seq')", "sequence_function"),
    (LARGE, "large_statement"),
]


@pytest.mark.parametrize(("sql", "reason"), PSQL_CASES, ids=[r for _, r in PSQL_CASES])
def test_psql_statements_that_pin(proxy: RunningProxy, sql: str, reason: str) -> None:
    seen = Seen(proxy)
    out = psql(proxy, sql)
    assert out.returncode == 0, out.stderr
    end = seen.session_end()
    assert end["pinned_by"] == {"reason": reason, "statement": sql[:200]}
    assert seen.metric_delta() == {reason: 1.0}
    assert seen.identity_delta() == {(IDENTITY, reason): 1}


def test_load_is_seen_even_when_the_server_refuses_it(proxy: RunningProxy) -> None:
    """`LOAD` needs privileges `app` lacks here; RDS Proxy pins on the statement all the same."""
    seen = Seen(proxy)
    psql(proxy, "LOAD 'auto_explain'")
    assert seen.session_end()["pinned_by"]["reason"] == "load"
    assert seen.metric_delta() == {"load": 1.0}


def test_set_local_and_transaction_scoped_locks_do_not_pin(proxy: RunningProxy) -> None:
    seen = Seen(proxy)
    out = psql(
        proxy,
        "BEGIN; SET LOCAL statement_timeout = '5s'; SET TRANSACTION READ ONLY; "
        "SELECT 'SET x = 1', pg_advisory_xact_lock(7), set_config('a.b', 'c', true); COMMIT",
    )
    assert out.returncode == 0, out.stderr
    assert seen.session_end()["pinned_by"] is None
    assert seen.metric_delta() == {}


def test_psycopg_prepared_statements_pin(proxy: RunningProxy) -> None:
    seen = Seen(proxy)
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("select %s::int + 1", [41], prepare=True).fetchone() == (42,)
    end = seen.session_end()
    assert end["pinned_by"] == {"reason": "named_statement", "statement": "select $1::int + 1"}
    assert seen.metric_delta() == {"named_statement": 1.0}
    assert seen.identity_delta() == {(IDENTITY, "named_statement"): 1}


def test_psycopg_unnamed_statements_and_set_local_do_not_pin(proxy: RunningProxy) -> None:
    seen = Seen(proxy)
    with psycopg.connect(proxy.dsn(), prepare_threshold=None) as conn:
        for i in range(10):
            assert conn.execute("select %s::int", [i]).fetchone() == (i,)
        with conn.transaction():
            conn.execute("SET LOCAL work_mem = '8MB'")
            assert conn.execute("show work_mem").fetchone() == ("8MB",)
    assert seen.session_end()["pinned_by"] is None
    assert seen.metric_delta() == {}


def _asyncpg(proxy: RunningProxy, body: Callable[[asyncpg.Connection], Any], **kw: Any) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(
            host="localhost",
            port=proxy.port,
            user="app",
            database="orders",
            password=APP_SECRET,
            ssl=proxy.ssl_context(),
            **kw,
        )
        try:
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_statement_cache_pins(proxy: RunningProxy) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        assert await conn.fetchval("select $1::int * 2", 21) == 42

    seen = Seen(proxy)
    _asyncpg(proxy, body)
    end = seen.session_end()
    assert end["pinned_by"] == {"reason": "named_statement", "statement": "select $1::int * 2"}
    assert seen.metric_delta() == {"named_statement": 1.0}


def test_asyncpg_without_statement_cache_does_not_pin(proxy: RunningProxy) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        for i in range(5):
            assert await conn.fetchval("select $1::int * 2", i) == i * 2
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '1s'")

    seen = Seen(proxy)
    _asyncpg(proxy, body, statement_cache_size=0)
    assert seen.session_end()["pinned_by"] is None
    assert seen.metric_delta() == {}


def test_without_query_audit_the_reason_is_kept_but_not_the_sql(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    """`audit.queries: false` keeps SQL out of the trail, `pinned_by` included; the
    classification goes on (the relay scans for it)."""
    proxy = start_proxy({"audit": {"queries": False}})
    seen = Seen(proxy)
    out = psql(proxy, "SET search_path TO public")
    assert out.returncode == 0, out.stderr
    assert seen.session_end()["pinned_by"] == {"reason": "set", "statement": None}
    assert proxy.events("session.query") == []
    assert seen.metric_delta() == {"set": 1.0}
    assert seen.identity_delta() == {(IDENTITY, "set"): 1}


def test_pinning_insight_can_be_turned_off(start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy({"audit": {"pinning": False}})
    seen = Seen(proxy)
    assert psql(proxy, "SET search_path TO public").returncode == 0
    assert seen.session_end()["pinned_by"] is None
    assert seen.metric_delta() == {}
    assert seen.identity_delta() == {}


def test_the_operator_puts_the_top_pinners_in_the_database_status(
    proxy: RunningProxy, private_k8s_api: ApiServer, namespace: str
) -> None:
    """The diagnosis timer's pass asks each ready proxy pod for /pinning (here a real proxy,
    as the pod at 127.0.0.1) and writes the sum into `status.pinning`, without SQL text."""
    psql(proxy, "SET search_path TO public")
    psql(proxy, "LISTEN orders_changed")
    expected = {
        (e["identity"], e["reason"]): e["statements"]
        for e in json.loads(proxy.http("/pinning")[1])["pinning"]
    }
    api = Api(private_k8s_api.url)
    with reconciler_for(private_k8s_api) as reconciler:
        api.create(example("database.yaml", namespace))
        reconciler.reconcile_database(namespace, "orders")
        db = api.get("Database", namespace, "orders")
        assert db is not None
        labels = render.Database(db).selector()
        api.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "orders-rdsgate-0", "namespace": namespace, "labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "proxy",
                            "image": "rdsgate:test",
                            "ports": [{"name": "metrics", "containerPort": proxy.metrics_port}],
                        }
                    ]
                },
            }
        )
        api.patch(
            "Pod",
            namespace,
            "orders-rdsgate-0",
            {
                "status": {
                    "phase": "Running",
                    "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
            sub="status",
        )
        reconciler.diagnose_database(namespace, "orders")
    db = api.get("Database", namespace, "orders")
    assert db is not None
    pinning = db["status"]["pinning"]
    assert {(IDENTITY, "set"), (IDENTITY, "listen")} <= {
        (e["identity"], e["reason"]) for e in pinning
    }
    for entry in pinning:
        assert set(entry) == {"identity", "reason", "statements"}
        assert entry["statements"] == expected[(entry["identity"], entry["reason"])]
    counts = [e["statements"] for e in pinning]
    assert counts == sorted(counts, reverse=True) and len(pinning) <= 10

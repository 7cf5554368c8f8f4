"""Postgres traffic through rdsgate-proxy → RDS Proxy stand-in → PostgreSQL, with real drivers."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest

from rdsgate.proxy import wire
from tests.fixtures.proxy import APP_SECRET, RunningProxy, cancel_from_child
from tests.fixtures.rawpg import RawClient


def test_psql_simple_query(proxy: RunningProxy) -> None:
    out = subprocess.run(
        ["psql", proxy.dsn(application_name="smoke"), "-XAtc", "select current_user, 40 + 2"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app|42"


def test_startup_parameters_reach_the_server(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(application_name="billing-job")) as conn:
        row = conn.execute(
            "select application_name from pg_stat_activity where pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("billing-job",)


def test_extended_protocol_and_prepared_statements(proxy: RunningProxy) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(
            host="localhost",
            port=proxy.port,
            user="app",
            database="orders",
            password="app-token-4f1c2e9a7b3d",
            ssl=proxy.ssl_context(),
        )
        try:
            stmt = await conn.prepare("select $1::int * 2 as doubled, $2::text as label")
            rows = [await stmt.fetchrow(i, f"n{i}") for i in range(50)]
            assert [(r["doubled"], r["label"]) for r in rows] == [
                (i * 2, f"n{i}") for i in range(50)
            ]
            await conn.execute("create temp table t (id int primary key, v text)")
            await conn.executemany(
                "insert into t values ($1, $2)", [(i, str(i)) for i in range(500)]
            )
            assert await conn.fetchval("select count(*) from t") == 500
        finally:
            await conn.close()

    asyncio.run(main())


def test_psycopg_server_side_prepare(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(), prepare_threshold=0) as conn:
        for i in range(5):
            assert conn.execute("select %s::int + 1", [i]).fetchone() == (i + 1,)
        prepared = conn.execute("select count(*) from pg_prepared_statements").fetchone()
    assert prepared is not None and prepared[0] >= 1


def test_large_result_arrives_whole(proxy: RunningProxy) -> None:
    """100 MB of rows through both relays, checked against content computed here."""
    rows = 100_000
    width = 1_000
    expected = hashlib.sha256()
    for i in range(1, rows + 1):
        expected.update((hashlib.md5(str(i).encode()).hexdigest() * 32)[:width].encode())  # noqa: S324
    got = hashlib.sha256()
    count = 0
    with psycopg.connect(proxy.dsn()) as conn, conn.cursor() as cur:
        for (value,) in cur.stream(
            "select left(repeat(md5(i::text), 32), %s) from generate_series(1, %s) i order by i",
            [width, rows],
        ):
            got.update(value.encode())
            count += 1
    assert count == rows
    assert got.hexdigest() == expected.hexdigest()


def test_copy_in_and_out_a_million_rows(proxy: RunningProxy) -> None:
    n = 1_000_000
    payload = "".join(f"{i}\tv{i}\n" for i in range(n)).encode()
    with psycopg.connect(proxy.dsn()) as conn, conn.cursor() as cur:
        cur.execute("create temp table big (id int, v text)")
        with cur.copy("copy big from stdin") as copy:
            for start in range(0, len(payload), 65536):
                copy.write(payload[start : start + 65536])
        cur.execute("select count(*), sum(id), md5(string_agg(v, ',' order by id)) from big")
        count, total, digest = cur.fetchone() or (0, 0, "")
        assert count == n
        assert total == n * (n - 1) // 2
        assert digest == hashlib.md5(",".join(f"v{i}" for i in range(n)).encode()).hexdigest()  # noqa: S324
        out = bytearray()
        with cur.copy("copy (select id, v from big order by id) to stdout") as copy:
            for chunk in copy:
                out += chunk
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_cancel_request_reaches_the_server(proxy: RunningProxy) -> None:
    """libpq's CancelRequest (through the proxy's key) stops pg_sleep(30) within a second."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        timer = threading.Timer(0.3, cancel_from_child, [conn])
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="canceling statement"):
            conn.execute("select pg_sleep(30)")
        assert time.monotonic() - started < 1.5
        assert conn.execute("select 1").fetchone() == (1,)


def test_asyncpg_timeout_cancels_through_the_proxy(proxy: RunningProxy) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url())
        try:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("select pg_sleep(30)", timeout=0.3)
            assert await conn.fetchval("select 7") == 7
            assert time.monotonic() - started < 2
        finally:
            await conn.close()

    asyncio.run(main())


def test_two_hundred_concurrent_sessions(proxy: RunningProxy) -> None:
    async def one(i: int) -> int:
        conn = await asyncpg.connect(proxy.url(), timeout=30)
        try:
            total = 0
            for j in range(5):
                total += await conn.fetchval("select $1::int + $2::int", i, j)
            return total
        finally:
            await conn.close()

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(main())
    assert results == [5 * i + 10 for i in range(200)]


def test_listen_notify(proxy: RunningProxy) -> None:
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as listener,
        psycopg.connect(proxy.dsn(), autocommit=True) as sender,
    ):
        listener.execute("listen orders_changed")
        sender.execute("select pg_notify('orders_changed', 'order 17 paid')")
        note = next(listener.notifies(timeout=5))
    assert (note.channel, note.payload) == ("orders_changed", "order 17 paid")


def test_audit_trail_of_a_session(proxy: RunningProxy) -> None:
    mark = len(proxy.audit)
    with psycopg.connect(proxy.dsn(application_name="audited")) as conn:
        conn.execute("select 'audit me'")
    query = proxy.wait_audit("session.query", lambda e: "audit me" in e["sql"], start=mark)
    start = proxy.wait_audit("session.start", lambda e: e["session_id"] == query["session_id"])
    end = proxy.wait_audit(
        "session.end", lambda e: e["session_id"] == start["session_id"], start=mark
    )
    for event in (start, query, end):
        assert event["session_id"] == start["session_id"]
        assert event["identity"] == "shop/orders-app"
        assert event["auth_method"] == "password"
        assert event["db_user"] == "app"
        assert event["db_name"] == "orders"
        assert event["database"] == "shop/orders"
        assert event["client_addr"].startswith("127.0.0.1:")
    assert query["sql"] == "select 'audit me'"
    assert end["bytes_in"] > 0
    assert end["bytes_out"] > 0
    assert end["duration_s"] >= 0


def test_a_slow_reader_holds_back_the_server_not_the_proxy_memory(proxy: RunningProxy) -> None:
    """Backpressure: while a client does not read, the proxy stops reading the upstream.

    The client asks for 300 MB and reads nothing for a while; the proxy's memory must stay
    far below that (without backpressure it would buffer the whole result).
    """

    def rss_mb() -> float:
        status = Path(f"/proc/{proxy.process.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return kb / 1024

    client = RawClient(proxy.port, proxy.ca_file)
    client.start_tls()
    assert client.login("app", APP_SECRET).type == b"Z"
    before = rss_mb()
    client.send(wire.query("select repeat('x', 1000000) from generate_series(1, 300)"))
    deadline = time.monotonic() + 3
    peak = before
    while time.monotonic() < deadline:
        peak = max(peak, rss_mb())
        time.sleep(0.05)
    assert peak - before < 64, f"proxy grew by {peak - before:.0f} MB while the client stalled"
    total = 0
    while (reply := client.read()) is not None and reply.type != b"Z":
        if reply.type == b"D":
            total += len(reply.body) - 6  # the field count (2) and the value length (4)
    client.close()
    assert total == 300 * 1_000_000

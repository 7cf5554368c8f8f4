"""Limits, timeouts, readiness, draining and the metrics a user watches."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest

from rdsgate.proxy import wire
from tests.fixtures.proxy import RunningProxy

Start = Callable[..., RunningProxy]


def connect(proxy: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(**kw), autocommit=True)


def server_error(conn: psycopg.Connection[Any], sql: str = "select 1") -> psycopg.Error:
    """The error a client sees on its next statement after the proxy ended its session."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    return info.value


def test_max_connections(start_proxy: Start) -> None:
    proxy = start_proxy({"limits": {"maxConnections": 2}})
    with connect(proxy), connect(proxy):
        with pytest.raises(psycopg.OperationalError) as info:
            connect(proxy)
        assert "too many connections: this rdsgate proxy allows 2 (limits.maxConnections)" in str(
            info.value
        )
        assert proxy.metric("rdsgate_auth_failures_total", {"reason": "proxy_limit"}) == 1
    with connect(proxy) as again:
        assert again.execute("select 1").fetchone() == (1,)


def test_idle_timeout_ends_the_session(start_proxy: Start) -> None:
    proxy = start_proxy({"limits": {"idleTimeout": "1s"}})
    with connect(proxy) as conn:
        conn.execute("select 1")
        end = proxy.wait_audit("session.end", lambda e: e["reason"] == "idle_timeout")
        err = server_error(conn)
    assert "terminating connection due to idle timeout of 1s (limits.idleTimeout)" in str(err)
    assert end["error"].startswith("terminating connection due to idle timeout")


def test_busy_sessions_are_not_idle(start_proxy: Start) -> None:
    proxy = start_proxy({"limits": {"idleTimeout": "1s"}})
    with connect(proxy) as conn:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            conn.execute("select pg_sleep(0.2)")
    assert (
        proxy.events("session.end") == [] or proxy.wait_audit("session.end")["reason"] == "closed"
    )


def test_a_long_query_is_not_idle(start_proxy: Start) -> None:
    """Idle means the server waits for the client; a query running longer than the idle
    timeout, with no bytes either way, is not idle."""
    proxy = start_proxy({"limits": {"idleTimeout": "1s"}})
    with connect(proxy) as conn:
        assert conn.execute("select 'finished' from pg_sleep(2.5)").fetchone() == ("finished",)
        end = proxy.wait_audit("session.end", lambda e: e["reason"] == "idle_timeout")
        assert end["db_user"] == "app"


def test_a_client_leaving_during_the_tls_handshake_is_no_crash(start_proxy: Start) -> None:
    proxy = start_proxy()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(wire.ssl_request())
            assert sock.recv(1) == b"S"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with connect(proxy) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert not [line for line in proxy.logs if "crashed" in line or "Traceback" in line]


def test_max_session_duration(start_proxy: Start) -> None:
    proxy = start_proxy({"limits": {"maxSessionDuration": "1s"}})
    with connect(proxy) as conn:
        started = time.monotonic()
        proxy.wait_audit("session.end", lambda e: e["reason"] == "max_session_duration")
        err = server_error(conn)
    assert time.monotonic() - started < 8
    assert "the maximum session duration of 1s was reached" in str(err)
    assert isinstance(err, psycopg.errors.AdminShutdown) or "57P01" in repr(err.sqlstate)


def test_a_running_query_finishes_before_the_session_is_ended(start_proxy: Start) -> None:
    """Ending a session waits for the server to be between queries (no cut-off results)."""
    proxy = start_proxy({"limits": {"maxSessionDuration": "1s"}})
    with connect(proxy) as conn:
        rows = conn.execute("select 'complete' from pg_sleep(2)").fetchall()
        assert rows == [("complete",)]
        err = server_error(conn)
    assert "maximum session duration" in str(err)


def test_readiness_needs_credentials(start_proxy: Start) -> None:
    no_credentials = {
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    proxy = start_proxy(env=no_credentials, wait_ready=False)
    deadline = time.monotonic() + 15
    while True:
        try:
            status, body = proxy.http("/readyz")
        except OSError:
            status, body = 0, ""
        if status == 503 and "aws: no AWS credentials found" in body:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    assert "aws: no AWS credentials found" in body
    assert proxy.http("/healthz")[0] == 200
    assert proxy.metric("rdsgate_ready") == 0
    with pytest.raises(psycopg.OperationalError) as info:
        connect(proxy)
    assert "no AWS credentials found: looked in environment variables" in str(info.value)


def test_sigterm_drains_then_ends_sessions(start_proxy: Start) -> None:
    proxy = start_proxy({"limits": {"drainTimeout": "1s"}})
    with connect(proxy) as conn:
        conn.execute("select 1")
        proxy.process.send_signal(signal.SIGTERM)
        end = proxy.wait_audit("session.end", lambda e: e["reason"] == "shutdown", timeout=10)
        err = server_error(conn)
    assert "terminating connection due to administrator command" in str(err)
    assert end["error"] == "terminating connection due to administrator command"
    assert proxy.process.wait(10) == 0


def test_sigterm_lets_a_running_query_finish(start_proxy: Start) -> None:
    proxy = start_proxy({"limits": {"drainTimeout": "5s"}})
    with connect(proxy) as conn:
        threading.Timer(0.3, proxy.process.send_signal, [signal.SIGTERM]).start()
        assert conn.execute("select 'done' from pg_sleep(1)").fetchone() == ("done",)
    assert proxy.process.wait(10) == 0
    assert proxy.wait_audit("session.end")["reason"] == "closed"


def test_sigterm_stops_accepting(start_proxy: Start) -> None:
    proxy = start_proxy({"limits": {"drainTimeout": "5s"}})
    with connect(proxy):
        proxy.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while proxy.http("/readyz")[0] != 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(psycopg.OperationalError):
            connect(proxy)


def test_metrics_count_what_happened(start_proxy: Start) -> None:
    # Without warm upstream connections, whose background log-ins mint and count too
    # (tests/proxy/test_warm.py has their metrics).
    proxy = start_proxy({"upstream": {"warm": {"perKey": 0}}})

    async def sessions(n: int) -> None:
        for _ in range(n):
            conn = await asyncpg.connect(proxy.url())
            await conn.fetchval("select repeat('x', 10000)")
            await conn.close()

    asyncio.run(sessions(3))
    deadline = time.monotonic() + 5
    while proxy.metric("rdsgate_sessions_ended_total", {"reason": "closed"}) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proxy.metric("rdsgate_connections_total") == 3
    assert proxy.metric("rdsgate_sessions_total") == 3
    assert proxy.metric("rdsgate_connections_active") == 0
    assert proxy.metric("rdsgate_iam_token_mints_total") == 1
    assert proxy.metric("rdsgate_iam_token_cache_hits_total") == 2
    assert proxy.metric("rdsgate_upstream_connect_seconds_count") == 3
    assert proxy.metric("rdsgate_bytes_total", {"direction": "upstream_to_client"}) > 30000
    assert proxy.metric("rdsgate_bytes_total", {"direction": "client_to_upstream"}) > 0
    assert proxy.metric("rdsgate_ready") == 1
    assert proxy.metric("rdsgate_access_grants") == 3

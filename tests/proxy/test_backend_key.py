"""BackendKeyData through rdsgate: the upstream's process ID, a secret key of the proxy's own.

Drivers report the ID as the session's backend PID; applications compare it with
`pg_backend_pid()`, with a notification's sender, and pass it to `pg_terminate_backend`.
The secret is what guards CancelRequest, so a cancel needs both the ID and the proxy's
secret, never the upstream's.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from rdsgate.proxy import wire
from tests.fixtures.proxy import APP_SECRET, RunningProxy
from tests.fixtures.rawpg import RawClient


def raw_session(proxy: RunningProxy) -> tuple[RawClient, tuple[int, bytes]]:
    """A logged-in raw client and the BackendKeyData it was given."""
    client = RawClient(proxy.port, proxy.ca_file)
    client.start_tls()
    client.send(wire.startup_message({"user": "app", "database": "orders"}))
    assert client.until(b"R").type == b"R"
    client.send(wire.password_message(APP_SECRET))
    key: tuple[int, bytes] | None = None
    while True:
        reply = client.read()
        assert reply is not None, "the proxy closed the connection during log-in"
        assert reply.type != b"E", reply.fields
        if reply.type == b"K":
            key = wire.parse_backend_key_data(reply.body)
        if reply.type == b"Z":
            break
    assert key is not None, "no BackendKeyData"
    return client, key


def scalar(client: RawClient, sql: str) -> str:
    client.send(wire.query(sql))
    row = client.until(b"D", b"E")
    assert row.type == b"D", row.fields
    client.until(b"Z")
    length = int.from_bytes(row.body[2:6], "big")
    return row.body[6 : 6 + length].decode()


def send_cancel(proxy: RunningProxy, pid: int, secret: bytes) -> None:
    client = RawClient(proxy.port, proxy.ca_file)
    client.start_tls()
    client.send(wire.cancel_request(pid, secret))
    assert client.read() is None  # the proxy closes at once, like the postmaster


def test_the_process_id_is_the_servers(proxy: RunningProxy) -> None:
    client, (pid, _) = raw_session(proxy)
    assert scalar(client, "select pg_backend_pid()") == str(pid)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row == (conn.info.backend_pid,)
        assert conn.info.backend_pid != pid


def test_notify_idiom_and_terminate_by_pid(proxy: RunningProxy) -> None:
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as listener,
        psycopg.connect(proxy.dsn(), autocommit=True) as other,
    ):
        listener.execute("listen jobs")
        listener.execute("notify jobs, 'mine'")
        other.execute("notify jobs, 'theirs'")
        seen = {n.payload: n.pid for n in listener.notifies(timeout=5, stop_after=2)}
        assert seen == {"mine": listener.info.backend_pid, "theirs": other.info.backend_pid}

        row = other.execute("select pg_terminate_backend(%s)", [listener.info.backend_pid])
        assert row.fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError) as info:
            listener.execute("select 1")
        assert "terminating connection due to administrator command" in str(info.value)


def test_cancel_needs_the_proxys_secret(proxy: RunningProxy) -> None:
    client, (pid, secret) = raw_session(proxy)
    wrong = bytes(b ^ 0xFF for b in secret)
    logged = len(proxy.logs)
    result: dict[str, Any] = {}

    def sleep() -> None:
        client.send(wire.query("select pg_sleep(1.5)"))
        result["reply"] = client.until(b"C", b"E")
        client.until(b"Z")

    started = time.monotonic()
    worker = threading.Thread(target=sleep)
    worker.start()
    send_cancel(proxy, pid, wrong)
    deadline = time.monotonic() + 5
    while not any("unknown key ignored" in line for line in proxy.logs[logged:]):
        assert time.monotonic() < deadline, "the proxy did not log the refused cancel"
        time.sleep(0.01)
    worker.join(10)
    assert result["reply"].type == b"C", result["reply"].fields  # pg_sleep ran to the end
    assert time.monotonic() - started >= 1.5

    worker = threading.Thread(target=sleep)
    worker.start()
    # The query must be running before the cancel, or there is nothing to cancel.
    with psycopg.connect(proxy.dsn(), autocommit=True) as watcher:
        deadline = time.monotonic() + 5
        while not watcher.execute(
            "select 1 from pg_stat_activity where pid = %s and query like 'select pg_sleep%%'"
            " and state = 'active'",
            [pid],
        ).fetchone():
            assert time.monotonic() < deadline, "the query never started"
            time.sleep(0.01)
    send_cancel(proxy, pid, secret)
    worker.join(10)
    assert result["reply"].type == b"E"
    assert result["reply"].fields["C"] == "57014"


def test_protocol_3_2_is_negotiated_down_to_3_0(proxy: RunningProxy) -> None:
    """PostgreSQL 18's protocol 3.2 (longer cancel keys) gets NegotiateProtocolVersion for
    3.0, and the session goes on with 3.0's 4-byte key."""
    client = RawClient(proxy.port, proxy.ca_file)
    client.start_tls()
    client.send(wire.startup_message({"user": "app", "database": "orders"}, version=(3 << 16) | 2))
    negotiate = client.until(b"v", b"R", b"E")
    assert negotiate.type == b"v"
    assert negotiate.body == (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    assert client.until(b"R").type == b"R"
    client.send(wire.password_message(APP_SECRET))
    key = client.until(b"K", b"E")
    assert key.type == b"K" and len(key.body) == 8
    client.until(b"Z")
    pid, _ = wire.parse_backend_key_data(key.body)
    assert scalar(client, "select pg_backend_pid()") == str(pid)

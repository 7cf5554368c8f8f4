"""The audit trail is complete, and nothing secret leaks into any output."""

from __future__ import annotations

import copy
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from rdsgate.operator import pki
from rdsgate.proxy import wire
from rdsgate.proxy.access import secret_digest
from tests.fixtures.lab import DbIdentity, LabCA
from tests.fixtures.proxy import (
    APP_SECRET,
    DEFAULT_ACCESS,
    EXPIRED_SECRET,
    REPORTING_SECRET,
    RunningProxy,
)
from tests.fixtures.rawpg import RawClient

Start = Callable[..., RunningProxy]
COMMON = ("session_id", "database", "identity", "auth_method", "db_user", "db_name", "client_addr")


def test_every_event_type_carries_who_what_and_where(
    start_proxy: Start, lab_ca: LabCA, tmp_path: Path
) -> None:
    proxy = start_proxy()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select 'simple'")
        conn.execute("select %s::text", ["extended"], prepare=True)
    kp = pki.issue_client_cert(
        lab_ca.keypair, "shop/reporting", secret_sha256=secret_digest(REPORTING_SECRET)
    )
    (tmp_path / "c.crt").write_bytes(kp.cert_pem)
    (tmp_path / "c.key").write_bytes(kp.key_pem)
    os.chmod(tmp_path / "c.key", 0o600)
    cert = {"sslcert": str(tmp_path / "c.crt"), "sslkey": str(tmp_path / "c.key")}
    with psycopg.connect(proxy.dsn(user="reporting", password=None, **cert)) as conn:
        conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(user="postgres"))
    with (
        psycopg.connect(
            proxy.dsn(user="reporting", password=REPORTING_SECRET), autocommit=True
        ) as doomed,
    ):
        doc = copy.deepcopy(DEFAULT_ACCESS)
        doc["grants"] = [g for g in doc["grants"] if g["identity"] != "shop/reporting"]
        proxy.set_access(doc)
        proxy.wait_audit("session.end", lambda e: e["reason"] == "revoked")
        with pytest.raises(psycopg.Error):
            doomed.execute("select 1")

    by_type: dict[str, list[dict[str, object]]] = {}
    for event in proxy.audit:
        by_type.setdefault(str(event["event"]), []).append(event)
    assert {
        "session.start",
        "session.query",
        "session.end",
        "auth.denied",
        "session.revoked",
    } <= set(by_type)
    for events in by_type.values():
        for event in events:
            for key in COMMON:
                assert key in event, (key, event)
            assert event["database"] == "shop/orders"
            assert str(event["client_addr"]).startswith("127.0.0.1:")
            assert event["session_id"]
    for kind in ("session.start", "session.query", "session.end", "session.revoked"):
        for event in by_type[kind]:
            assert event["identity"] in ("shop/orders-app", "shop/reporting")
            assert event["auth_method"] in ("password", "certificate")
            assert event["db_user"] in ("app", "reporting")
            assert event["db_name"] == "orders"
    methods = {(e["identity"], e["auth_method"]) for e in by_type["session.start"]}
    assert ("shop/reporting", "certificate") in methods
    assert ("shop/orders-app", "password") in methods
    sql = [(e["kind"], e["sql"]) for e in by_type["session.query"]]
    assert ("query", "select 'simple'") in sql
    assert ("parse", "select $1::text") in sql
    denied = by_type["auth.denied"][0]
    assert (denied["identity"], denied["db_user"]) == ("shop/orders-app", "postgres")


def test_a_long_statement_name_does_not_hide_the_sql_from_the_audit(proxy: RunningProxy) -> None:
    """A Parse named with more bytes than `audit.maxQueryBytes` still logs its SQL."""
    client = RawClient(proxy.port, proxy.ca_file)
    try:
        client.start_tls()
        assert client.login("app", APP_SECRET).type == b"Z"
        name = b"s" * 20_000
        client.send(
            wire.frame(wire.Message(b"P", name + b"\x00select 'named' as hidden\x00\x00\x00"))
            + wire.frame(wire.Message(b"S", b""))
        )
        assert client.until(b"1", b"E").type == b"1"  # ParseComplete
    finally:
        client.close()
    event = proxy.wait_audit("session.query", lambda e: "named" in str(e["sql"]))
    assert (event["kind"], event["sql"], event.get("truncated")) == (
        "parse",
        "select 'named' as hidden",
        None,
    )


def test_no_secret_in_stdout_stderr_or_metrics(
    start_proxy: Start, proxy_identity: DbIdentity
) -> None:
    proxy = start_proxy()
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("select 1")
    for password in ("wrong-password-123", EXPIRED_SECRET, REPORTING_SECRET):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(user="postgres", password=password))
    out = subprocess.run(
        ["psql", proxy.dsn(sslmode="disable"), "-c", "select 1"],
        capture_output=True,
        check=False,
    )
    assert out.returncode != 0
    _, metrics_text = proxy.http("/metrics")
    _, diagnosis = proxy.http("/diagnose")
    proxy.stop()  # flushes the audit trail and joins the threads that read stdout and stderr
    everything = "\n".join([*map(str, proxy.audit), *proxy.logs])
    forbidden = [
        APP_SECRET,
        REPORTING_SECRET,
        EXPIRED_SECRET,
        "wrong-password-123",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        proxy_identity.credentials.secret_access_key,
        "eyJ",
    ]
    for secret in forbidden:
        assert secret not in everything
        assert secret not in metrics_text
        assert secret not in diagnosis


@pytest.mark.timeout(60)  # a proxy that blocks on stdout would hang the queries
def test_a_stdout_nobody_reads_drops_counted_lines_and_never_stalls_sessions(
    start_proxy: Start,
) -> None:
    """A stalled log pipeline: stdout is a pipe nobody reads. Sessions go on, memory stays
    bounded by audit.maxBufferBytes, and every dropped line is counted and reported."""
    proxy = start_proxy({"audit": {"maxBufferBytes": 65536}}, read_audit=False)
    filler = "x" * 4000
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("set statement_timeout = '5s'")
        # Far more audit text than the pipe (64 KiB) and the buffer (64 KiB) hold.
        for i in range(300):
            assert conn.execute(f"select {i}, '{filler}'").fetchone() == (i, filler)
    deadline = time.monotonic() + 10
    while proxy.metric("rdsgate_audit_dropped_lines_total") == 0:
        assert time.monotonic() < deadline, "no dropped lines counted"
        time.sleep(0.02)
    assert any("AUDIT LINES DROPPED" in line for line in proxy.logs), proxy.logs
    # Still serving, and new sessions too.
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
    assert proxy.http("/readyz")[0] == 200

"""Bad input gets a clear error, and everyone else keeps being served.

A bystander session stays open through the whole module and runs a query after each
test; each refusal is checked for the SQLSTATE and message a client shows.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from rdsgate.lab.postgres import free_port
from rdsgate.proxy import wire
from tests.fixtures.lab import RdsIam
from tests.fixtures.proxy import (
    APP_SECRET,
    EXPIRED_SECRET,
    REPORTING_SECRET,
    RunningProxy,
)
from tests.fixtures.proxy import login_refusal as refusal
from tests.fixtures.rawpg import RawClient


@pytest.fixture(scope="module")
def bystander(proxy: RunningProxy) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture(autouse=True)
def others_unaffected(bystander: psycopg.Connection[Any]) -> Iterator[None]:
    yield
    assert bystander.execute("select 'still here'").fetchone() == ("still here",)


def psql_error(dsn: str) -> str:
    out = subprocess.run(
        ["psql", dsn, "-XAtc", "select 1"], capture_output=True, text=True, check=False, timeout=30
    )
    assert out.returncode != 0
    return out.stderr


def test_plaintext_is_refused_with_the_fix(proxy: RunningProxy) -> None:
    stderr = psql_error(proxy.dsn(sslmode="disable"))
    assert "FATAL:  rdsgate requires TLS: connect with sslmode=require (or verify-full)" in stderr
    assert "HINT:  set sslmode=verify-full and sslrootcert" in stderr


def test_wrong_password(proxy: RunningProxy) -> None:
    mark = len(proxy.audit)
    before = proxy.metric("rdsgate_auth_failures_total", {"reason": "bad_password"})
    err = refusal(proxy.url(password="not-a-token"))
    assert err.sqlstate == "28P01"
    assert (
        "password authentication failed: the password is not a current rdsgate Token secret"
        in err.message
    )
    denied = proxy.wait_audit(
        "auth.denied", lambda e: "password authentication failed" in e["reason"], start=mark
    )
    assert denied["sqlstate"] == "28P01"
    assert denied["identity"] is None
    assert denied["db_user"] == "app"
    assert proxy.metric("rdsgate_auth_failures_total", {"reason": "bad_password"}) == before + 1


def test_unknown_identity_looks_like_a_wrong_password(proxy: RunningProxy) -> None:
    err = refusal(proxy.url(password="b" * 43))
    assert err.sqlstate == "28P01"


def test_expired_grant(proxy: RunningProxy) -> None:
    err = refusal(proxy.url(password=EXPIRED_SECRET))
    assert err.sqlstate == "28P01"
    assert "token expired at 2020-01-01T00:00:00+00:00" in err.message


def test_denied_database_user_names_the_deny_rule(proxy: RunningProxy) -> None:
    mark = len(proxy.audit)
    err = refusal(proxy.url(user="postgres"))
    assert err.sqlstate == "28000"
    assert (
        "access denied: shop/orders-app may not log in as database user 'postgres' to database "
        "'orders' on shop/orders: role 'orders-rw' denies database user 'postgres' "
        "(deny.databaseUsers 'postgres')"
    ) in err.message
    denied = proxy.wait_audit("auth.denied", lambda e: e["db_user"] == "postgres", start=mark)
    assert denied["identity"] == "shop/orders-app"
    assert "deny.databaseUsers" in denied["reason"]


def test_denied_database_name_says_no_role_allows(proxy: RunningProxy) -> None:
    err = refusal(proxy.url(user="reporting", dbname="billing", password=REPORTING_SECRET))
    assert err.sqlstate == "28000"
    assert (
        "no role allows database user 'reporting' on database 'billing' here (roles: 'orders-ro')"
    ) in err.message


def raw(proxy: RunningProxy) -> RawClient:
    return RawClient(proxy.port, proxy.ca_file)


def test_malformed_startup_packet(proxy: RunningProxy) -> None:
    client = raw(proxy)
    client.start_tls()
    client.send(b"\x00\x00\x00\x04")
    reply = client.read()
    assert reply is not None
    assert reply.fields["C"] == "08P01"
    assert reply.fields["M"] == "invalid startup packet length 4 (must be 8 to 10000 bytes)"
    assert client.read() is None


def test_oversized_startup_packet(proxy: RunningProxy) -> None:
    client = raw(proxy)
    client.start_tls()
    client.send((20_000).to_bytes(4, "big") + b"\x00\x03\x00\x00" + b"x" * 100)
    reply = client.read()
    assert reply is not None
    assert reply.fields["M"] == "invalid startup packet length 20000 (must be 8 to 10000 bytes)"


def test_startup_without_user(proxy: RunningProxy) -> None:
    client = raw(proxy)
    client.start_tls()
    client.send(wire.startup_message({"database": "orders"}))
    reply = client.read()
    assert reply is not None
    assert (reply.fields["C"], reply.fields["M"]) == (
        "28000",
        "no PostgreSQL user name specified in startup packet",
    )


def test_garbage_instead_of_a_password(proxy: RunningProxy) -> None:
    client = raw(proxy)
    client.start_tls()
    client.send(wire.startup_message({"user": "app", "database": "orders"}))
    assert client.until(b"R").body == b"\x00\x00\x00\x03"
    client.send(wire.query("select 1"))
    reply = client.until(b"E")
    assert (reply.fields["C"], reply.fields["M"]) == (
        "08P01",
        "expected a password message, got b'Q'",
    )


def test_garbage_after_login_ends_only_that_session(proxy: RunningProxy) -> None:
    mark = len(proxy.audit)
    client = raw(proxy)
    client.start_tls()
    assert client.login("app", APP_SECRET).type == b"Z"
    client.send(b"Q\x00\x00\x00\x01")
    reply = client.until(b"E")
    assert (reply.fields["C"], reply.fields["M"]) == ("08P01", "invalid message length 1")
    assert client.read() is None
    end = proxy.wait_audit("session.end", lambda e: e["reason"] == "protocol_error", start=mark)
    assert end["error"] == "invalid message length 1"


def test_startup_timeout(start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy({"limits": {"startupTimeout": "1s"}})
    client = raw(proxy)
    client.start_tls()
    client.send(wire.startup_message({"user": "app"})[:10])
    reply = client.read()
    assert reply is not None
    assert reply.fields["M"] == "start-up did not complete in 1s (limits.startupTimeout)"


def test_gssenc_is_declined_then_tls_works(proxy: RunningProxy) -> None:
    client = raw(proxy)
    client.send((8).to_bytes(4, "big") + wire.GSSENC_REQUEST_CODE.to_bytes(4, "big"))
    assert client.read_byte() == b"N"
    client.start_tls()
    assert client.login("app", APP_SECRET).type == b"Z"


def test_direct_tls_with_alpn(proxy: RunningProxy) -> None:
    client = raw(proxy)
    client.direct_tls(alpn=True)
    assert client.login("app", APP_SECRET).type == b"Z"
    client.send(wire.query("select 'direct'"))
    assert client.until(b"D").body.endswith(b"direct")


def test_direct_tls_without_alpn_is_refused(proxy: RunningProxy) -> None:
    client = raw(proxy)
    client.direct_tls(alpn=False)
    client.send(wire.startup_message({"user": "app"}))
    assert client.read() is None


def test_iam_login_refused_is_passed_on_with_the_fix(
    start_proxy: Callable[..., RunningProxy], rds_iam: RdsIam
) -> None:
    only_app = rds_iam.user("app")
    proxy = start_proxy(env=only_app.env)
    err = refusal(proxy.url(user="reporting", password=REPORTING_SECRET))
    assert err.sqlstate == "28P01"
    text = str(err)
    assert (
        "The IAM authentication failed for the role reporting. Check the IAM token for this "
        "role and try again."
    ) in text
    assert err.hint is not None
    assert "needs rds-db:connect on arn:aws:rds-db:" in err.hint
    assert "dbuser:prx-" in err.hint
    failed = proxy.wait_audit("session.failed")
    assert failed["sqlstate"] == "28P01"


def test_upstream_unreachable(start_proxy: Callable[..., RunningProxy]) -> None:
    port = free_port()
    proxy = start_proxy({"upstream": {"endpoint": f"localhost:{port}"}})
    err = refusal(proxy.url())
    assert err.sqlstate == "08001"
    assert f"cannot connect to the upstream localhost:{port}" in err.message
    assert proxy.metric("rdsgate_upstream_errors_total", {"kind": "connect"}) >= 1


def test_upstream_unresolvable(start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy({"upstream": {"endpoint": "no-such-proxy.invalid:5432"}})
    err = refusal(proxy.url())
    assert err.sqlstate == "08001"
    assert "cannot resolve the upstream host 'no-such-proxy.invalid'" in err.message


def test_upstream_certificate_name_mismatch(start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy(
        {"upstream": {"tls": {"serverName": "orders.proxy-x.eu-west-1.rds.amazonaws.com"}}}
    )
    err = refusal(proxy.url())
    assert err.sqlstate == "08001"
    assert "TLS certificate did not verify: Hostname mismatch" in err.message
    assert err.hint is not None
    assert "spec.tls.serverName" in err.hint


def test_upstream_certificate_from_an_unknown_ca(start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy({"upstream": {"tls": {"caFile": None}}})
    err = refusal(proxy.url())
    assert "TLS certificate did not verify: unable to get local issuer certificate" in err.message

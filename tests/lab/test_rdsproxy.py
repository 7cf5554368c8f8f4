"""The RDS Proxy stand-in, seen from a Postgres client: what RDS Proxy with IAM auth shows.

Each refused login is asserted on the exact SQLSTATE and message a client gets, and on the
specific reason the stand-in keeps for itself (as RDS Proxy keeps it for CloudWatch).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest

from rdsgate.lab.aws import (
    AwsCredentials,
    AwsLab,
    DbIdentity,
    IamForProxy,
    policy_document,
    sign_db_auth_token,
)
from rdsgate.lab.postgres import LabCA, PostgresServer, quote_literal
from rdsgate.lab.rdsproxy import RdsProxyStandIn, Rejection, wait_for
from rdsgate.proxy import wire

IAM_FAILED = (
    "The IAM authentication failed for the role {}. "
    "Check the IAM token for this role and try again."
)
NO_CREDENTIALS = (
    "This RDS proxy has no credentials for the role {}. "
    "Check the credentials for this role and try again."
)


def query(
    proxy: RdsProxyStandIn,
    user: str,
    password: str,
    sql: str = "select current_user",
    *,
    database: str = "orders",
    tls: bool = True,
) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(
            host=proxy.host,
            port=proxy.port,
            user=user,
            password=password,
            database=database,
            ssl=proxy.ssl_context() if tls else False,
            timeout=15,
        )
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def refused(
    proxy: RdsProxyStandIn, user: str, password: str, **kwargs: Any
) -> tuple[asyncpg.PostgresError, list[Rejection]]:
    """The error a client gets, and what the stand-in recorded about it."""
    mark = len(proxy.rejections)
    with pytest.raises(asyncpg.PostgresError) as info:
        query(proxy, user, password, **kwargs)
    return info.value, proxy.rejections_since(mark)


def assert_iam_refused(
    proxy: RdsProxyStandIn, user: str, token: str, reason: str, connect_as: str | None = None
) -> Rejection:
    error, rejections = refused(proxy, connect_as or user, token)
    assert error.sqlstate == "28P01"
    assert error.message == IAM_FAILED.format(connect_as or user)
    assert [r.reason for r in rejections] == [reason]
    return rejections[0]


@pytest.fixture(scope="module")
def app_user(rds_iam: IamForProxy) -> DbIdentity:
    return rds_iam.user("app")


def psql(proxy: RdsProxyStandIn, user: str, password: str, sslmode: str = "verify-full") -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    dsn = (
        f"host={proxy.host} port={proxy.port} user={user} dbname=orders "
        f"sslmode={sslmode} sslrootcert={proxy.ca_file}"
    )
    return subprocess.run(
        ["psql", dsn, "-X", "-Atc", "select current_user"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- logins that work ------------------------------------------------------------------


def test_a_token_from_boto3_logs_in_as_the_database_user(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    mark = len(rds_proxy.rejections)
    token = app_user.token("app", port=rds_proxy.port)

    sql = "select current_user || '@' || current_database()"
    assert query(rds_proxy, "app", token, sql) == "app@orders"
    assert rds_proxy.rejections_since(mark) == []


def test_psql_logs_in_with_the_token_as_password(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    result = psql(rds_proxy, "app", app_user.token("app", port=rds_proxy.port))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_an_assumed_role_logs_in(rds_proxy: RdsProxyStandIn, rds_iam: IamForProxy) -> None:
    role = rds_iam.role("reporting", external_id="ext-42")

    token = role.token("reporting", port=rds_proxy.port)

    assert "X-Amz-Security-Token=" in token
    assert query(rds_proxy, "reporting", token) == "reporting"


def test_a_policy_through_a_group_or_a_managed_policy_is_honoured(
    rds_proxy: RdsProxyStandIn, aws: AwsLab, rds_iam: IamForProxy
) -> None:
    suffix = os.urandom(3).hex()
    iam = aws.client("iam")
    user = aws.create_user(f"grouped-{suffix}")
    iam.create_group(GroupName=f"readers-{suffix}")
    iam.put_group_policy(
        GroupName=f"readers-{suffix}",
        PolicyName="connect",
        PolicyDocument=json.dumps(aws.connect_policy(["app"], resource_id=rds_proxy.resource_id)),
    )
    iam.add_user_to_group(GroupName=f"readers-{suffix}", UserName=user.name)
    managed = aws.create_policy(
        f"connect-{suffix}", aws.connect_policy(["app"], resource_id=rds_proxy.resource_id)
    )
    role = aws.create_role(
        f"managed-{suffix}",
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": user.arn}, "Action": "sts:AssumeRole"}
            ],
        },
        managed_policy_arns=[managed],
    )
    session = aws.assume_role(user.credentials, role.arn)

    for creds in (user.credentials, session):
        identity = DbIdentity(arn="", credentials=creds, env={}, region=aws.region)
        assert query(rds_proxy, "app", identity.token("app", port=rds_proxy.port)) == "app"


# -- refusals, each with RDS Proxy's own words -----------------------------------------


def test_plaintext_startup_is_refused(rds_proxy: RdsProxyStandIn, app_user: DbIdentity) -> None:
    token = app_user.token("app", port=rds_proxy.port)

    error, rejections = refused(rds_proxy, "app", token, tls=False)
    result = psql(rds_proxy, "app", token, sslmode="disable")

    assert (error.sqlstate, error.message) == ("28000", "This RDS Proxy requires TLS connections.")
    assert [r.reason for r in rejections] == ["tls-required"]
    assert result.returncode == 2
    assert "FATAL:  This RDS Proxy requires TLS connections." in result.stderr


def test_a_bad_signature_is_refused(rds_proxy: RdsProxyStandIn, app_user: DbIdentity) -> None:
    token = app_user.token("app", port=rds_proxy.port)
    last = token[-1]
    forged = token[:-1] + ("0" if last != "0" else "1")

    rejection = assert_iam_refused(rds_proxy, "app", forged, "bad-signature")

    assert rejection.sqlstate == "28P01"
    assert app_user.arn in rejection.detail


def test_psql_shows_the_iam_failure(rds_proxy: RdsProxyStandIn, app_user: DbIdentity) -> None:
    result = psql(rds_proxy, "app", app_user.token("app", port=rds_proxy.port) + "0")

    assert result.returncode == 2
    assert f"FATAL:  {IAM_FAILED.format('app')}" in result.stderr
    assert "signature" not in result.stderr


def test_an_expired_token_is_refused(rds_proxy: RdsProxyStandIn, app_user: DbIdentity) -> None:
    signed_at = datetime.now(UTC) - timedelta(minutes=15, seconds=5)
    token = sign_db_auth_token(
        app_user.credentials,
        "localhost",
        rds_proxy.port,
        "app",
        app_user.region,
        signed_at=signed_at,
    )

    assert_iam_refused(rds_proxy, "app", token, "expired")


def test_a_token_signed_for_longer_than_15_minutes_is_refused(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    token = sign_db_auth_token(
        app_user.credentials,
        "localhost",
        rds_proxy.port,
        "app",
        app_user.region,
        signed_at=datetime.now(UTC),
        expires=3600,
    )

    assert_iam_refused(rds_proxy, "app", token, "expires-too-long")


def test_a_token_for_another_host_is_refused(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    token = app_user.token(
        "app", host="orders.proxy-abc.eu-west-1.rds.amazonaws.com", port=rds_proxy.port
    )

    assert_iam_refused(rds_proxy, "app", token, "wrong-host")


def test_a_token_for_another_port_is_refused(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    token = app_user.token("app", port=rds_proxy.port + 1)

    assert_iam_refused(rds_proxy, "app", token, "wrong-port")


def test_a_token_for_another_user_is_refused(
    rds_proxy: RdsProxyStandIn, rds_iam: IamForProxy
) -> None:
    both = rds_iam.user("app", "reporting")
    token = both.token("reporting", port=rds_proxy.port)

    assert_iam_refused(rds_proxy, "reporting", token, "wrong-user", connect_as="app")


def test_an_unknown_access_key_is_refused(rds_proxy: RdsProxyStandIn, aws: AwsLab) -> None:
    stranger = DbIdentity(
        arn="",
        credentials=AwsCredentials(
            "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        ),
        env={},
        region=aws.region,
    )

    assert_iam_refused(
        rds_proxy, "app", stranger.token("app", port=rds_proxy.port), "unknown-access-key"
    )


def test_a_session_token_that_is_not_the_keys_own_is_refused(
    rds_proxy: RdsProxyStandIn, rds_iam: IamForProxy, aws: AwsLab
) -> None:
    role = rds_iam.role("app")
    other = rds_iam.role("app")
    assert role.credentials.session_token and other.credentials.session_token
    mixed = DbIdentity(
        arn=role.arn,
        credentials=AwsCredentials(
            role.credentials.access_key_id,
            role.credentials.secret_access_key,
            other.credentials.session_token,
        ),
        env={},
        region=aws.region,
    )

    assert_iam_refused(
        rds_proxy, "app", mixed.token("app", port=rds_proxy.port), "invalid-session-token"
    )


def test_a_principal_without_rds_db_connect_is_refused(
    rds_proxy: RdsProxyStandIn, aws: AwsLab
) -> None:
    user = aws.create_user(f"nopolicy-{os.urandom(3).hex()}")
    identity = DbIdentity(arn=user.arn, credentials=user.credentials, env={}, region=aws.region)

    rejection = assert_iam_refused(
        rds_proxy, "app", identity.token("app", port=rds_proxy.port), "not-authorized"
    )

    resource = f"arn:aws:rds-db:{aws.region}:{aws.account_id}:dbuser:{rds_proxy.resource_id}/app"
    assert resource in rejection.detail


def test_a_policy_for_other_users_or_another_proxy_is_refused(
    rds_proxy: RdsProxyStandIn, rds_iam: IamForProxy, aws: AwsLab
) -> None:
    reporting_only = rds_iam.user("reporting")
    other_proxy = aws.create_connect_user(["app"], resource_id="prx-0123456789abcdef0")
    elsewhere = DbIdentity(arn="", credentials=other_proxy.credentials, env={}, region=aws.region)

    for identity in (reporting_only, elsewhere):
        assert_iam_refused(
            rds_proxy, "app", identity.token("app", port=rds_proxy.port), "not-authorized"
        )


def test_an_explicit_deny_beats_an_allow(rds_proxy: RdsProxyStandIn, aws: AwsLab) -> None:
    resource = f"arn:aws:rds-db:{aws.region}:{aws.account_id}:dbuser:{rds_proxy.resource_id}"
    user = aws.create_user(
        f"denied-{os.urandom(3).hex()}",
        policies={
            "allow-all": policy_document(
                {"Effect": "Allow", "Action": "rds-db:connect", "Resource": "*"}
            ),
            "deny-app": policy_document(
                {"Effect": "Deny", "Action": "rds-db:connect", "Resource": f"{resource}/app"}
            ),
        },
    )
    identity = DbIdentity(arn=user.arn, credentials=user.credentials, env={}, region=aws.region)

    assert (
        query(rds_proxy, "reporting", identity.token("reporting", port=rds_proxy.port))
        == "reporting"
    )
    assert_iam_refused(
        rds_proxy, "app", identity.token("app", port=rds_proxy.port), "explicit-deny"
    )


def test_a_user_without_a_secret_in_the_proxy_is_refused(
    rds_proxy: RdsProxyStandIn, rds_iam: IamForProxy
) -> None:
    allowed = rds_iam.user("postgres")

    error, rejections = refused(
        rds_proxy, "postgres", allowed.token("postgres", port=rds_proxy.port)
    )

    assert error.sqlstate == "28P01"
    assert error.message == NO_CREDENTIALS.format("postgres")
    assert [r.reason for r in rejections] == ["no-credentials"]


def test_a_password_that_is_not_a_token_is_refused(
    rds_proxy: RdsProxyStandIn, pg: PostgresServer
) -> None:
    assert_iam_refused(rds_proxy, "app", pg.passwords["app"], "malformed-token")


def test_the_databases_own_errors_reach_the_client(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    token = app_user.token("app", port=rds_proxy.port)

    error, _ = refused(rds_proxy, "app", token, database="no_such_db")

    assert error.sqlstate == "3D000"
    assert error.message == 'database "no_such_db" does not exist'


# -- the protocol around the login -----------------------------------------------------


def test_gssencrequest_is_declined_and_tls_follows(rds_proxy: RdsProxyStandIn) -> None:
    gssenc = (8).to_bytes(4, "big") + wire.GSSENC_REQUEST_CODE.to_bytes(4, "big")
    with socket.create_connection((rds_proxy.host, rds_proxy.port), timeout=10) as sock:
        sock.sendall(gssenc)
        assert sock.recv(1) == b"N"
        sock.sendall(wire.ssl_request())
        assert sock.recv(1) == b"S"
        with rds_proxy.ssl_context().wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            cert = tls.getpeercert()
            assert cert is not None
            assert cert["subject"] == ((("commonName", "localhost"),),)


def test_asyncpg_cancels_a_query_through_the_stand_in(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    token = app_user.token("app", port=rds_proxy.port)

    async def run() -> tuple[float, Any]:
        conn = await asyncpg.connect(
            host=rds_proxy.host,
            port=rds_proxy.port,
            user="app",
            password=token,
            database="orders",
            ssl=rds_proxy.ssl_context(),
        )
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.fetchval("select pg_sleep(30)", timeout=0.3)
            elapsed = time.monotonic() - started
            return elapsed, await conn.fetchval("select 42")
        finally:
            await conn.close()

    elapsed, after = asyncio.run(run())

    assert elapsed < 5
    assert after == 42


def _active(pg: PostgresServer, application_name: str) -> bool:
    sql = (
        "select count(*) from pg_stat_activity where state = 'active' "
        "and application_name = {} and query like 'select pg_sleep%'"
    )
    return pg.execute(sql.format(quote_literal(application_name))) == "1"


def test_psycopg_cancels_a_query_through_the_stand_in(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity, pg: PostgresServer
) -> None:
    """libpq 17+'s cancel (`cancel_safe`): SSLRequest, TLS, then CancelRequest inside it.

    Not `cancel()`: psycopg holds the GIL through libpq's blocking PQcancel, and this
    stand-in runs in the test's own process.
    """
    token = app_user.token("app", port=rds_proxy.port)
    dsn = (
        f"host={rds_proxy.host} port={rds_proxy.port} user=app dbname=orders "
        f"sslmode=verify-full sslrootcert={rds_proxy.ca_file}"
    )
    with psycopg.connect(dsn, password=token, application_name="cancel-psycopg") as conn:

        def cancel_when_running() -> None:
            if wait_for(lambda: _active(pg, "cancel-psycopg"), timeout=15):
                conn.cancel_safe(timeout=10)

        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        canceller.join()
        conn.rollback()

        assert time.monotonic() - started < 15
        assert conn.execute("select 7").fetchone() == (7,)


def test_psql_ctrl_c_cancels_through_the_stand_in(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity, pg: PostgresServer
) -> None:
    """psql 15's Ctrl-C sends a plaintext CancelRequest (legacy PQcancel)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = app_user.token("app", port=rds_proxy.port)
    dsn = (
        f"host={rds_proxy.host} port={rds_proxy.port} user=app dbname=orders "
        f"sslmode=verify-full sslrootcert={rds_proxy.ca_file} application_name=cancel-psql"
    )
    with subprocess.Popen(
        ["psql", dsn, "-X", "-c", "select pg_sleep(30)"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert wait_for(lambda: _active(pg, "cancel-psql"), timeout=15)
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=15)
        finally:
            proc.kill()

    assert time.monotonic() - started < 5
    assert "ERROR:  canceling statement due to user request" in stderr


def test_application_name_reaches_postgres(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    token = app_user.token("app", port=rds_proxy.port)

    async def run() -> Any:
        conn = await asyncpg.connect(
            host=rds_proxy.host,
            port=rds_proxy.port,
            user="app",
            password=token,
            database="orders",
            ssl=rds_proxy.ssl_context(),
            server_settings={"application_name": "lab-test"},
        )
        try:
            return await conn.fetchval(
                "select application_name from pg_stat_activity where pid = pg_backend_pid()"
            )
        finally:
            await conn.close()

    assert asyncio.run(run()) == "lab-test"


# -- the relay -------------------------------------------------------------------------


def test_large_results_copy_and_concurrent_sessions_pass_through(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    token = app_user.token("app", port=rds_proxy.port)
    rows = b"".join(b"%d\trow %d\n" % (i, i) for i in range(100_000))

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            host=rds_proxy.host,
            port=rds_proxy.port,
            user="app",
            password=token,
            database="orders",
            ssl=rds_proxy.ssl_context(),
        )

    async def run() -> tuple[int, bytes, list[int]]:
        conn = await connect()
        try:
            size = await conn.fetchval(
                "select sum(length(x)) from (select repeat('x', 1000) as x "
                "from generate_series(1, 20000)) s"
            )
            result = await conn.fetch(
                "select repeat('x', 1000) as x from generate_series(1, 20000)"
            )
            assert sum(len(r["x"]) for r in result) == size
            await conn.execute("create temporary table t (a int, b text)")
            await conn.copy_to_table("t", source=io.BytesIO(rows))
            out = io.BytesIO()
            await conn.copy_from_query("select * from t order by a", output=out)
        finally:
            await conn.close()
        sessions = await asyncio.gather(*(connect() for _ in range(30)))
        try:
            pids = await asyncio.gather(*(s.fetchval("select pg_backend_pid()") for s in sessions))
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
        return size, out.getvalue(), pids

    # Proxies of other test packages may hold warm upstream connections here meanwhile.
    before = rds_proxy.active_sessions
    size, copied, pids = asyncio.run(run())

    assert size == 20_000_000
    assert hashlib.sha256(copied).digest() == hashlib.sha256(rows).digest()
    assert len(set(pids)) == 30
    assert wait_for(lambda: rds_proxy.active_sessions <= before)


@pytest.mark.slow
def test_capacity_200_sessions_100_mb_and_a_million_row_copy(
    rds_proxy: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    """What the end-to-end suite pushes through rdsgate-proxy and this stand-in."""
    token = app_user.token("app", port=rds_proxy.port)
    rows = b"".join(b"%d\trow %d\n" % (i, i) for i in range(1_000_000))

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            host=rds_proxy.host,
            port=rds_proxy.port,
            user="app",
            password=token,
            database="orders",
            ssl=rds_proxy.ssl_context(),
            timeout=60,
        )

    async def run() -> tuple[int, int, bytes]:
        sessions = await asyncio.gather(*(connect() for _ in range(200)))
        try:
            pids = await asyncio.gather(*(s.fetchval("select pg_backend_pid()") for s in sessions))
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
        conn = await connect()
        try:
            result = await conn.fetch(
                "select repeat('x', 1000) as x from generate_series(1, 100000)"
            )
            await conn.execute("create temporary table million (a int, b text)")
            await conn.copy_to_table("million", source=io.BytesIO(rows))
            out = io.BytesIO()
            await conn.copy_from_query("select * from million order by a", output=out)
        finally:
            await conn.close()
        return len(set(pids)), sum(len(r["x"]) for r in result), out.getvalue()

    distinct, size, copied = asyncio.run(run())

    assert distinct == 200
    assert size == 100_000_000
    assert hashlib.sha256(copied).digest() == hashlib.sha256(rows).digest()


# -- lifecycle -------------------------------------------------------------------------


@pytest.fixture
def second_standin(
    aws: AwsLab, pg: PostgresServer, lab_ca: LabCA, rds_proxy: RdsProxyStandIn
) -> Iterator[RdsProxyStandIn]:
    standin = RdsProxyStandIn(
        aws,
        rds_proxy.db_proxy_name,
        upstream_host=pg.host,
        upstream_port=pg.port,
        upstream_ca_file=pg.ca_file,
        ca=lab_ca.keypair,
    )
    yield standin
    standin.stop()


def test_stop_closes_sessions_and_leaves_no_thread_or_listener(
    second_standin: RdsProxyStandIn, app_user: DbIdentity
) -> None:
    second_standin.start()
    port = second_standin.port
    token = app_user.token("app", port=port)

    async def run() -> BaseException | None:
        conn = await asyncpg.connect(
            host="localhost",
            port=port,
            user="app",
            password=token,
            database="orders",
            ssl=second_standin.ssl_context(),
        )
        assert await conn.fetchval("select 1") == 1
        await asyncio.get_running_loop().run_in_executor(None, second_standin.stop)
        try:
            await conn.fetchval("select 2", timeout=10)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
            return exc
        finally:
            await conn.close(timeout=5)
        return None

    error = asyncio.run(run())

    assert error is not None
    prefix = second_standin.thread_name
    assert wait_for(lambda: not any(t.name.startswith(prefix) for t in threading.enumerate()))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_tls_is_verified_against_the_lab_ca_only(rds_proxy: RdsProxyStandIn) -> None:
    with socket.create_connection((rds_proxy.host, rds_proxy.port), timeout=10) as sock:
        sock.sendall(wire.ssl_request())
        assert sock.recv(1) == b"S"
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")

"""The stand-in's `login_delay`: an accepted IAM log-in is answered no sooner than the delay.

RDS Proxy's IAM log-in costs real time on AWS (a round trip, IAM authentication, the
database log-in); the benchmark sets the delay to compare connection latency through
rdsgate with connecting to RDS Proxy directly. A refused password is answered at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from rdsgate.lab.aws import AwsLab, DbIdentity, IamForProxy
from rdsgate.lab.postgres import LabCA, PostgresServer
from rdsgate.lab.rdsproxy import RdsProxyStandIn

DELAY = 1.0


@pytest.fixture(scope="module")
def slow_proxy(
    aws: AwsLab, pg: PostgresServer, lab_ca: LabCA, rds_proxy: RdsProxyStandIn
) -> Iterator[RdsProxyStandIn]:
    """A second endpoint of the session's RDS Proxy (same Auth entries, same resource id)."""
    with RdsProxyStandIn(
        aws,
        rds_proxy.db_proxy_name,
        upstream_host=pg.host,
        upstream_port=pg.port,
        upstream_ca_file=pg.ca_file,
        ca=lab_ca.keypair,
        login_delay=DELAY,
    ) as standin:
        yield standin


def _connect_and_query(proxy: RdsProxyStandIn, password: str) -> tuple[str, float]:
    """`select current_user` on a new connection; the result and the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(
        host="localhost",
        hostaddr="127.0.0.1",
        port=proxy.port,
        user="app",
        dbname="orders",
        password=password,
        sslmode="verify-full",
        sslrootcert=str(proxy.ca_file),
        gssencmode="disable",
        connect_timeout=15,
        autocommit=True,
    ) as conn:
        row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0]), time.perf_counter() - started


def test_an_accepted_login_is_answered_after_the_delay(
    slow_proxy: RdsProxyStandIn, rds_iam: IamForProxy
) -> None:
    user: DbIdentity = rds_iam.user("app")
    token = user.token("app", port=slow_proxy.port)

    who, took = _connect_and_query(slow_proxy, token)

    assert who == "app"
    assert took >= DELAY


def test_a_refused_token_is_answered_without_the_delay(
    slow_proxy: RdsProxyStandIn, rds_iam: IamForProxy
) -> None:
    user = rds_iam.user("app")
    token = user.token("app", port=slow_proxy.port)
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    mark = len(slow_proxy.rejections)

    started = time.perf_counter()
    with pytest.raises(psycopg.OperationalError, match="The IAM authentication failed"):
        _connect_and_query(slow_proxy, forged)
    took = time.perf_counter() - started

    assert [r.reason for r in slow_proxy.rejections_since(mark)] == ["bad-signature"]
    assert took < DELAY


def test_the_default_is_no_delay(rds_proxy: RdsProxyStandIn) -> None:
    assert rds_proxy.login_delay == 0.0
    with pytest.raises(ValueError, match="negative"):
        RdsProxyStandIn(
            rds_proxy.aws,
            rds_proxy.db_proxy_name,
            upstream_host="127.0.0.1",
            upstream_port=1,
            upstream_ca_file=rds_proxy.ca_file,
            login_delay=-0.5,
        )

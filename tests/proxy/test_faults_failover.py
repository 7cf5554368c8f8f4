"""Fault: RDS Proxy fails over, its endpoint's DNS name moves to another address (issue 14,
fault 2).

The proxy runs in a mount namespace whose /etc/hosts is a file this test rewrites, so it
resolves the endpoint name through the system resolver (glibc, which reads the file on
every lookup) exactly as it would a DNS answer whose TTL ran out. Two stand-ins of the same
RDS Proxy listen on the same port at 127.0.0.2 (old) and 127.0.0.3 (new), in front of `pg`.

Decided and checked here: the proxy caches no address. A new session resolves the name
afresh; warm upstream connections are checked against the name's addresses every sweep
(one second) and those to an old address are closed, never handed out. Sessions already
on the old address go on while it serves (rdsgate cannot tell a failover from DNS
round-robin) and end with `08006` naming the endpoint when it goes away.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rdsgate.lab.aws import AwsLab
from rdsgate.lab.postgres import PostgresServer
from rdsgate.lab.rdsproxy import RdsProxyStandIn, wait_for
from tests.fixtures.lab import DbIdentity, LabCA
from tests.fixtures.pods import mount_namespaces_unavailable
from tests.fixtures.proxy import ProxyLab, RunningProxy
from tests.fixtures.standins import HostsFile, StandIn

OLD, NEW = "127.0.0.2", "127.0.0.3"


def connect(proxy: RunningProxy, **kw: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(**kw), autocommit=True)


def connections_to(standin: StandIn) -> int:
    """Upstream connections open on a stand-in now: sessions and warm connections."""
    return standin.current.active_sessions if standin.current is not None else 0


@pytest.fixture
def failover_lab(
    aws: AwsLab,
    pg: PostgresServer,
    rds_proxy: RdsProxyStandIn,
    proxy_identity: DbIdentity,
    lab_ca: LabCA,
    tmp_path: Path,
) -> Iterator[tuple[StandIn, StandIn, HostsFile, ProxyLab]]:
    reason = mount_namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)
    name = f"orders.proxy-{os.urandom(3).hex()}.eu-west-1.rds.lab"
    old = StandIn(
        aws, rds_proxy.db_proxy_name, pg, lab_ca, listen_host=OLD, endpoint_host=name
    ).start()
    new = StandIn(
        aws,
        rds_proxy.db_proxy_name,
        pg,
        lab_ca,
        listen_host=NEW,
        endpoint_host=name,
        port=old.port,
    ).start()
    hosts = HostsFile(tmp_path / "hosts", name, OLD)
    try:
        yield old, new, hosts, ProxyLab(lab_ca, old.first, proxy_identity, tmp_path)
    finally:
        old.stop()
        new.stop()


def test_endpoint_moves_to_another_address(
    failover_lab: tuple[StandIn, StandIn, HostsFile, ProxyLab],
) -> None:
    old, new, hosts, lab = failover_lab
    proxy = lab.start(wrap=hosts.wrap())
    try:
        # The start-up checks connect to the endpoint too: let them finish on OLD first.
        assert wait_for(lambda: '"check"' in proxy.http("/diagnose")[1], timeout=20)
        # Two log-ins with the same parameters: the pool keeps two warm connections (to OLD).
        for _ in range(2):
            with connect(proxy) as conn:
                conn.execute("select 1")
        assert wait_for(lambda: proxy.metric("rdsgate_upstream_warm_idle") == 2)
        before = connect(proxy)
        assert before.execute("select 'on the old address'").fetchone() is not None
        assert wait_for(lambda: proxy.metric("rdsgate_upstream_warm_idle") == 2)
        assert wait_for(lambda: connections_to(old) == 3) and new.sessions_total == 0

        hosts.point(NEW)
        # A parameter set with nothing warm resolves the name afresh: NEW at once.
        on_old = old.sessions_total
        with connect(proxy, application_name="right-after-the-move") as fresh:
            assert fresh.execute("select 2").fetchone() == (2,)
        assert new.sessions_total >= 1 and old.sessions_total == on_old
        # Warm connections to OLD are closed within a sweep and refilled on NEW.
        assert wait_for(lambda: connections_to(old) == 1, timeout=5)
        assert wait_for(lambda: proxy.metric("rdsgate_upstream_warm_idle") == 2)
        on_old = old.sessions_total
        for _ in range(3):
            with connect(proxy) as conn:
                assert conn.execute("select 3").fetchone() == (3,)
                # Only the session from before the move is on the old address.
                assert connections_to(old) == 1
        assert old.sessions_total == on_old, "a new session was served on the old address"
        assert proxy.metric("rdsgate_upstream_warm_total", {"result": "hit"}) >= 3

        # The session from before the move goes on while the old address serves ...
        assert before.execute("select 'still there'").fetchone() == ("still there",)
        mark = len(proxy.audit)
        # ... and ends with a FATAL naming the endpoint when it goes away.
        old.stop()
        with pytest.raises(psycopg.OperationalError) as ended:
            before.execute("select 1")
        assert ended.value.sqlstate == "08006"
        assert f"the upstream {old.endpoint} closed the connection" in str(ended.value)
        end = proxy.wait_audit(
            "session.end", lambda e: e["reason"] == "upstream_closed", start=mark
        )
        assert end["error"] == f"the upstream {old.endpoint} closed the connection"
        before.close()

        # With the old address down nothing tries it: new sessions just work.
        for _ in range(3):
            with connect(proxy) as conn:
                assert conn.execute("select 4").fetchone() == (4,)
        assert proxy.metric("rdsgate_upstream_errors_total", {"kind": "connect"}) == 0
        assert proxy.metric("rdsgate_upstream_errors_total", {"kind": "timeout"}) == 0
    finally:
        proxy.stop()

"""Warm upstream connections: logged in ahead of time, each serving one client session only.

Through rdsgate-proxy → RDS Proxy stand-in → PostgreSQL. A user sees them as faster
log-ins and as `rdsgate_upstream_warm_total{result}` / `rdsgate_upstream_warm_idle`; what
must never be seen is one session's state in another's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from rdsgate.lab.postgres import PostgresServer
from tests.fixtures.proxy import DEFAULT_ACCESS, RunningProxy

Start = Callable[..., RunningProxy]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def idle(proxy: RunningProxy) -> float:
    return proxy.metric("rdsgate_upstream_warm_idle")


def taken(proxy: RunningProxy, result: str) -> float:
    return proxy.metric("rdsgate_upstream_warm_total", {"result": result})


def connect(proxy: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(**kw), autocommit=True)


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_a_log_in_takes_a_warm_connection_and_each_serves_one_session(
    start_proxy: Start, pg: PostgresServer
) -> None:
    proxy = start_proxy()
    pids = set()
    for _ in range(2):  # a set of parameters is kept warm once it comes back
        with connect(proxy, application_name="warm-app") as first:
            pids.add(backend_pid(first))
            first.execute("set work_mem = '7MB'")
            first.execute("create temp table mine (v int)")
    assert (taken(proxy, "hit"), taken(proxy, "miss")) == (0, 2)
    wait_for(lambda: idle(proxy) == 2, "two warm connections")

    for _ in range(4):
        with connect(proxy, application_name="warm-app") as conn:
            assert conn.execute("select current_setting('work_mem')").fetchone() == ("4MB",)
            assert conn.execute("select to_regclass('pg_temp.mine')").fetchone() == (None,)
            pid = backend_pid(conn)
            assert pid not in pids, "an upstream connection served a second session"
            pids.add(pid)
        wait_for(lambda: idle(proxy) == 2, "the pool refilled")
    assert taken(proxy, "hit") == 4

    # Each upstream connection closed with its client: none of them is left on the server.
    def gone() -> bool:
        in_list = ",".join(map(str, pids))
        listed = pg.execute(f"select pid from pg_stat_activity where pid in ({in_list})")  # noqa: S608
        return listed == ""

    wait_for(gone, "the served sessions' backends to end")


def test_parameters_seen_once_cost_no_spare_log_ins(start_proxy: Start) -> None:
    """Clients that make every connection's parameters unique (a pid in application_name)
    get no warm connections, and cost the upstream no log-ins beyond their own."""
    proxy = start_proxy()
    for n in range(5):
        with connect(proxy, application_name=f"worker-{n}"):
            pass
    for _ in range(2):
        with connect(proxy, application_name="steady"):
            pass
    wait_for(lambda: idle(proxy) == 2, "two warm connections for the repeated set")
    # 7 client log-ins and the 2 warm ones for "steady": none for the unique sets.
    assert proxy.metric("rdsgate_upstream_connect_seconds_count") == 9


def test_only_the_same_start_up_parameters_take_a_warm_connection(start_proxy: Start) -> None:
    proxy = start_proxy()
    for _ in range(2):
        with connect(proxy, application_name="billing"):
            pass
    wait_for(lambda: idle(proxy) == 2, "two warm connections")
    with connect(proxy, application_name="reports") as conn:
        row = conn.execute("select current_setting('application_name')").fetchone()
        assert row == ("reports",)
    assert (taken(proxy, "hit"), taken(proxy, "miss")) == (0, 3)
    with connect(proxy, application_name="billing") as conn:
        row = conn.execute("select current_setting('application_name')").fetchone()
        assert row == ("billing",)
    assert taken(proxy, "hit") == 1


def test_bounds_idle_timeout_and_a_dead_warm_connection(
    start_proxy: Start, pg: PostgresServer
) -> None:
    proxy = start_proxy({"upstream": {"warm": {"perKey": 3, "maxTotal": 2}}})
    for _ in range(2):
        with connect(proxy, application_name="bounded"):
            pass
    wait_for(lambda: idle(proxy) == 2, "two warm connections (maxTotal)")
    for _ in range(2):
        with connect(proxy, application_name="other"):
            pass
    assert idle(proxy) <= 2

    # A warm connection the server ended is not handed out.
    pg.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where application_name in ('bounded', 'other')"
    )
    wait_for(lambda: idle(proxy) == 0, "dead warm connections noticed")
    misses = taken(proxy, "miss")
    with connect(proxy, application_name="bounded") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert taken(proxy, "miss") == misses + 1

    short = start_proxy({"upstream": {"warm": {"idleTimeout": "300ms"}}})
    for _ in range(2):
        with connect(short, application_name="short"):
            pass
    wait_for(lambda: idle(short) == 2, "two warm connections")
    wait_for(lambda: idle(short) == 0, "warm connections closed after idleTimeout")


def test_an_access_change_empties_the_pool_and_per_key_zero_turns_it_off(
    start_proxy: Start,
) -> None:
    proxy = start_proxy()
    for _ in range(2):
        with connect(proxy, application_name="reload"):
            pass
    wait_for(lambda: idle(proxy) == 2, "two warm connections")
    changed = dict(DEFAULT_ACCESS)
    changed["roles"] = [*DEFAULT_ACCESS["roles"], {"name": "spare", "allow": {}}]
    proxy.set_access(changed)
    wait_for(lambda: idle(proxy) == 0, "the pool emptied by the new access file")

    off = start_proxy({"upstream": {"warm": {"perKey": 0}}})
    for _ in range(2):
        with connect(off) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert (idle(off), taken(off, "hit"), taken(off, "miss")) == (0, 0, 0)


@pytest.mark.parametrize(
    ("warm", "problem"),
    [
        ({"perKey": -1}, "upstream.warm.perKey: Input should be greater than or equal to 0"),
        ({"idleTimeout": "soon"}, "upstream.warm.idleTimeout"),
    ],
)
def test_invalid_warm_settings_are_named(
    start_proxy: Start, warm: dict[str, Any], problem: str
) -> None:
    proxy = start_proxy({"upstream": {"warm": warm}}, wait_ready=False)
    assert proxy.process.wait(20) == 2
    wait_for(lambda: any(problem in line for line in proxy.logs), f"the message {problem!r}")

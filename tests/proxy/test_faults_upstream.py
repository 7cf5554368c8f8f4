"""Fault: the upstream dies mid-query (issue 14, fault 1).

`proxy` (the shared proxy in front of the session-wide `rds_proxy`) stands for another
Database, served by another proxy process with another upstream; `victim` is a proxy in
front of a stand-in and a PostgreSQL of this module's own, which the tests kill: the
stand-in during `pg_sleep`, PostgreSQL (SIGKILL to every process, as when the instance
dies) during a `COPY FROM STDIN` and a `pg_sleep`.

What a user sees: the client gets a FATAL at once, `08006` naming the upstream (or the
server's own `57P01` when it said one), `session.end` says `upstream_closed`, the other
Database's sessions go on, new sessions fail with `08001` while the upstream is down and
succeed once it is back, with the same proxy process; committed COPY rows are there and
the rows of the COPY that was cut are not.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest

from rdsgate.lab.aws import AwsLab
from rdsgate.lab.postgres import PostgresServer
from rdsgate.lab.rdsproxy import wait_for
from tests.fixtures.lab import LabCA
from tests.fixtures.proxy import RunningProxy
from tests.fixtures.standins import StandIn, new_rds_proxy, own_postgres, proxy_lab_for

UPSTREAM_CLOSED = {"reason": "upstream_closed"}
#: A client error must come this soon after the upstream died (a TCP timeout is minutes).
PROMPT = 3.0


@dataclass
class Victim:
    database: PostgresServer
    standin: StandIn
    proxy: RunningProxy


@pytest.fixture(scope="module")
def victim(
    aws: AwsLab, lab_ca: LabCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Victim]:
    database = own_postgres(lab_ca)
    standin = StandIn(
        aws, new_rds_proxy(aws, database, f"faults-{os.urandom(3).hex()}"), database, lab_ca
    ).start()
    lab = proxy_lab_for(aws, standin, lab_ca, tmp_path_factory.mktemp("faults-upstream"))
    proxy = lab.start()
    try:
        yield Victim(database, standin, proxy)
    finally:
        proxy.stop()
        standin.stop()
        database.stop()


def connect(proxy: RunningProxy) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(), autocommit=True)


class InThread:
    """Runs a blocking client call in a thread; records what it raised and when."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.failed_at = 0.0
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._call()
        except BaseException as exc:
            self.failed_at = time.monotonic()
            self.error = exc

    def join(self, timeout: float) -> BaseException:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the client still waits after {timeout}s"
        assert self.error is not None, "the call succeeded"
        return self.error


def running(database: PostgresServer, sql: str) -> Callable[[], bool]:
    """Whether a backend of `database` is running `sql` now."""
    text = sql.replace("'", "''")
    query = f"select count(*) from pg_stat_activity where state = 'active' and query = '{text}'"  # noqa: S608
    return lambda: database.execute(query) == "1"


def refusal(proxy: RunningProxy) -> asyncpg.PostgresError:
    """The error of a refused log-in (asyncpg keeps its SQLSTATE, libpq does not)."""

    async def log_in() -> None:
        conn = await asyncpg.connect(proxy.url(), timeout=15)
        await conn.close()

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(log_in())
    return info.value


def lost_upstream(err: BaseException, endpoint: str) -> None:
    """The FATAL a client sees when rdsgate's upstream went away mid-session."""
    assert isinstance(err, psycopg.OperationalError), repr(err)
    assert err.sqlstate == "08006", repr(err)
    assert f"the upstream {endpoint} closed the connection" in str(err)
    assert err.diag.message_hint is not None
    assert "RDS Proxy or the database behind it ended this session" in err.diag.message_hint


def test_the_servers_own_fatal_is_what_the_client_sees(victim: Victim) -> None:
    """When the database says why it ends a session, rdsgate adds nothing to it."""
    mark = len(victim.proxy.audit)
    with connect(victim.proxy) as conn, connect(victim.proxy) as killer:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        killer.execute("select pg_terminate_backend(%s)", pid)
        with pytest.raises(psycopg.errors.AdminShutdown) as ended:
            conn.execute("select 1")
    assert ended.value.diag.message_primary == "terminating connection due to administrator command"
    end = victim.proxy.wait_audit(
        "session.end", lambda e: e["reason"] == "upstream_closed", start=mark
    )
    assert end["error"] == (
        f"the upstream {victim.standin.endpoint} closed the connection: "
        "terminating connection due to administrator command"
    )


def test_standin_killed_during_pg_sleep(victim: Victim, proxy: RunningProxy) -> None:
    standin, endpoint = victim.standin, victim.standin.endpoint
    mark = len(victim.proxy.audit)
    closed_before = victim.proxy.metric("rdsgate_sessions_ended_total", UPSTREAM_CLOSED)
    with connect(victim.proxy) as sleeper, connect(proxy) as other:
        other.execute("begin")
        other.execute("select 1")
        sql = "select pg_sleep(30)"
        call = InThread(lambda: sleeper.execute(sql))
        assert wait_for(running(victim.database, sql))

        killed = time.monotonic()
        standin.stop()
        lost_upstream(call.join(PROMPT + 5), endpoint)
        assert call.failed_at - killed < PROMPT

        end = victim.proxy.wait_audit(
            "session.end", lambda e: e["reason"] == "upstream_closed", start=mark
        )
        assert end["error"] == f"the upstream {endpoint} closed the connection"
        assert end["db_user"] == "app"
        closed = victim.proxy.metric("rdsgate_sessions_ended_total", UPSTREAM_CLOSED)
        assert closed == closed_before + 1

        # The other Database's session, mid-transaction, never noticed.
        assert other.execute("select 'unaffected'").fetchone() == ("unaffected",)
        other.execute("commit")
    assert all(e["reason"] != "upstream_closed" for e in proxy.events("session.end"))

    # While the endpoint is down a new session is refused at once, naming it.
    started = time.monotonic()
    refused = refusal(victim.proxy)
    assert time.monotonic() - started < PROMPT
    assert refused.sqlstate == "08001"
    assert f"cannot connect to the upstream {endpoint}" in refused.message

    # Back on the same address: the same proxy process serves new sessions.
    standin.start()
    with connect(victim.proxy) as again:
        assert again.execute("select 'back'").fetchone() == ("back",)
    assert victim.proxy.process.poll() is None


def test_postgres_killed_during_copy(victim: Victim, proxy: RunningProxy) -> None:
    database, endpoint = victim.database, victim.standin.endpoint
    mark = len(victim.proxy.audit)
    with connect(victim.proxy) as setup:
        setup.execute("create table copied (n int primary key)")
        with setup.cursor().copy("copy copied from stdin") as copy:
            for n in range(1000):
                copy.write_row((n,))
    committed = int(database.execute("select count(*) from copied", "orders"))
    assert committed == 1000

    sent_half = threading.Event()
    go_on = threading.Event()

    def numbers(start: int, stop: int) -> bytes:
        return "".join(f"{n}\n" for n in range(start, stop)).encode()

    def copy_more(conn: psycopg.Connection[Any]) -> None:
        with conn.cursor().copy("copy copied from stdin") as copy:
            copy.write(numbers(1000, 50_000))  # ~290 KB: all but libpq's last buffer is sent
            sent_half.set()
            go_on.wait(30)
            copy.write(numbers(50_000, 60_000))

    progress = (
        "select coalesce(max(tuples_processed), 0) from pg_stat_progress_copy "
        "where relid = 'copied'::regclass"
    )
    with (
        connect(victim.proxy) as copier,
        connect(victim.proxy) as sleeper,
        connect(proxy) as other,
    ):
        sql = "select pg_sleep(30) -- during the COPY"
        sleeping = InThread(lambda: sleeper.execute(sql))
        copying = InThread(lambda: copy_more(copier))
        assert sent_half.wait(10)
        assert wait_for(lambda: int(database.execute(progress, "orders")) >= 40_000)
        assert wait_for(running(database, sql))

        killed = time.monotonic()
        database.kill()
        go_on.set()
        for call in (sleeping, copying):
            lost_upstream(call.join(PROMPT + 5), endpoint)
            assert call.failed_at - killed < PROMPT
        assert other.execute("select 'unaffected'").fetchone() == ("unaffected",)

        def ended() -> list[dict[str, Any]]:
            return [
                e
                for e in victim.proxy.events("session.end", mark)
                if e["reason"] == "upstream_closed"
            ]

        assert wait_for(lambda: len(ended()) == 2)

        # RDS Proxy is up, its database is not: refused at once, with no IAM hint.
        auth_errors = victim.proxy.metric("rdsgate_upstream_errors_total", {"kind": "auth"})
        refused = refusal(victim.proxy)
        assert refused.sqlstate == "08001"
        assert victim.proxy.metric("rdsgate_upstream_errors_total", {"kind": "refused"}) >= 1
        assert victim.proxy.metric("rdsgate_upstream_errors_total", {"kind": "auth"}) == auth_errors
        assert "could not connect to the database for the role app" in refused.message
        assert refused.hint is None

        database.restart()
        with connect(victim.proxy) as after:
            rows = after.execute("select count(*), max(n) from copied").fetchone()
        assert rows == (1000, 999), "the committed COPY is whole and the cut one left nothing"
        assert victim.proxy.process.poll() is None

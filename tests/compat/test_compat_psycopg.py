"""psycopg 3 (sync) through rdsgate-proxy gives what it gives against PostgreSQL directly.

Applications use more of the protocol than simple queries: pipelines, binary COPY, named
cursors, server-side prepared statements, LISTEN/NOTIFY and backend pids, cancellation and
large values. Each test runs the same code against both targets and compares the results
with each other and with the value PostgreSQL must give.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from tests.compat.conftest import Target, Targets, poll, unique
from tests.compat.data import (
    COPY_ROWS,
    COPY_TYPES,
    EXPECTED_WIDE_DIGEST,
    LARGE_SIZES,
    WIDE_ROWS,
    WIDE_SQL,
    large_payloads,
    md5,
    sha,
    wide_digest,
)
from tests.fixtures.proxy import cancel_from_child

pytestmark = pytest.mark.timeout(60)

R = TypeVar("R")


def on_both(targets: Targets, scenario: Callable[[Target], R]) -> dict[str, R]:
    return {t.name: scenario(t) for t in targets}


# -- what the driver learns at start-up ------------------------------------------------------

#: ParameterStatus values drivers act on (quoting, date parsing, version checks).
PARAMETERS = [
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "is_superuser",
    "session_authorization",
    "application_name",
    "default_transaction_read_only",
    "in_hot_standby",
]


def startup(t: Target) -> dict[str, Any]:
    with psycopg.connect(t.dsn(application_name="compat-startup")) as conn:
        return {
            "parameters": {name: conn.info.parameter_status(name) for name in PARAMETERS},
            "server_version": conn.info.server_version,
            "backend_pid": (conn.info.backend_pid,)
            == conn.execute("select pg_backend_pid()").fetchone(),
        }


def test_startup_parameters(targets: Targets) -> None:
    got = on_both(targets, startup)
    assert got["proxy"] == got["direct"]
    assert got["direct"]["backend_pid"] is True
    assert got["direct"]["server_version"] >= 150000
    assert {
        k: got["direct"]["parameters"][k]
        for k in ("server_encoding", "client_encoding", "standard_conforming_strings")
    } == {"server_encoding": "UTF8", "client_encoding": "UTF8", "standard_conforming_strings": "on"}
    assert got["direct"]["parameters"]["session_authorization"] == "app"
    assert got["direct"]["parameters"]["application_name"] == "compat-startup"


# -- pipeline mode --------------------------------------------------------------------------


def pipeline(t: Target) -> dict[str, Any]:
    with psycopg.connect(t.dsn(), autocommit=True) as conn:
        with conn.pipeline() as p:
            conn.execute("create temp table pl (id int primary key, v text)")
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into pl values (%s, %s)", [(i, f"v{i}") for i in range(1, 101)]
                )
            total = conn.execute("select count(*), sum(id) from pl")
            one = conn.execute("select v from pl where id = %s", [42])
            p.sync()
            batch = [total.fetchone(), one.fetchone()]
        # An error in the middle: the statements up to the next Sync form one transaction.
        failure: tuple[str, str | None] | None = None
        try:
            with conn.pipeline():
                conn.execute("insert into pl values (101, 'v101')")
                conn.execute("insert into pl values (1, 'duplicate')")
                conn.execute("insert into pl values (102, 'v102')")
        except psycopg.Error as exc:
            failure = (type(exc).__name__, exc.sqlstate)
        after = conn.execute("select count(*), max(id) from pl").fetchone()
        status = conn.info.transaction_status.name
    return {"batch": batch, "failure": failure, "after": after, "status": status}


def test_pipeline_mode(targets: Targets) -> None:
    expected = {
        "batch": [(100, 5050), ("v42",)],
        "failure": ("UniqueViolation", "23505"),
        "after": (100, 100),
        "status": "IDLE",
    }
    assert on_both(targets, pipeline) == {"proxy": expected, "direct": expected}


# -- binary COPY ----------------------------------------------------------------------------


def binary_copy(t: Target) -> dict[str, Any]:
    with psycopg.connect(t.dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "create temp table cb (id int4, name text, data bytea, amount numeric,"
            " at timestamptz, tags text[])"
        )
        with cur.copy("copy cb from stdin (format binary)") as copy:
            copy.set_types(COPY_TYPES)
            for row in COPY_ROWS:
                copy.write_row(row)
        copied_in = cur.rowcount
        with cur.copy("copy (select * from cb order by id) to stdout (format binary)") as copy:
            copy.set_types(COPY_TYPES)
            rows = list(copy.rows())
        raw = bytearray()
        with cur.copy("copy (select * from cb order by id) to stdout (format binary)") as copy:
            for chunk in copy:
                raw += chunk
        cur.execute("select count(*), sum(length(data)), sum(amount) from cb")
        summary = cur.fetchone()
    return {
        "copied_in": copied_in,
        "rows_equal": rows == COPY_ROWS,
        "first_rows": rows[:3],
        "raw_sha256": sha(bytes(raw)),
        "raw_head": bytes(raw[:11]),
        "summary": summary,
    }


def test_binary_copy_in_and_out(targets: Targets) -> None:
    got = on_both(targets, binary_copy)
    assert got["proxy"] == got["direct"]
    assert got["direct"]["copied_in"] == len(COPY_ROWS)
    assert got["direct"]["rows_equal"], got["direct"]["first_rows"]
    assert got["direct"]["raw_head"] == b"PGCOPY\n\xff\r\n\x00"
    with localcontext() as exact:
        exact.prec = 100  # PostgreSQL's numeric sum does not round
        total = sum((row[3] for row in COPY_ROWS if row[3] is not None), Decimal(0))
    lengths = sum(len(row[2]) for row in COPY_ROWS if row[2] is not None)
    assert got["direct"]["summary"] == (len(COPY_ROWS), lengths, total)


# -- server-side cursors --------------------------------------------------------------------


def named_cursors(t: Target) -> dict[str, Any]:
    with psycopg.connect(t.dsn()) as conn:
        with conn.cursor("compat_scroll") as cur:
            cur.itersize = 7
            cur.execute("select i, md5(i::text) from generate_series(1, 100) i order by i")
            open_cursors = conn.execute(
                "select name, is_holdable from pg_cursors order by name"
            ).fetchall()
            first = cur.fetchmany(10)
            one = cur.fetchone()
            rest = list(cur)  # fetched itersize rows at a time
            columns = [d.name for d in cur.description or []]
        conn.commit()
        with conn.cursor("compat_held", withhold=True) as held:
            held.execute("select generate_series(1, 5)")
            conn.commit()  # a WITH HOLD cursor outlives its transaction
            after_commit = held.fetchmany(3)
            tail = held.fetchall()
    return {
        "open_cursors": open_cursors,
        "columns": columns,
        "first": first,
        "one": one,
        "rest": rest,
        "after_commit": after_commit,
        "tail": tail,
    }


def test_server_side_cursors(targets: Targets) -> None:
    rows = [(i, md5(str(i))) for i in range(1, 101)]
    expected = {
        "open_cursors": [("compat_scroll", False)],
        "columns": ["i", "md5"],
        "first": rows[:10],
        "one": rows[10],
        "rest": rows[11:],
        "after_commit": [(1,), (2,), (3,)],
        "tail": [(4,), (5,)],
    }
    assert on_both(targets, named_cursors) == {"proxy": expected, "direct": expected}


# -- prepared statements --------------------------------------------------------------------


def prepared(t: Target) -> dict[str, Any]:
    with psycopg.connect(t.dsn(), prepare_threshold=2) as conn:
        results = []
        counts = []
        for i in range(6):
            row = conn.execute("select %s::int * 3, %s::text", [i, f"n{i}"]).fetchone()
            results.append(row)
            counts.append(
                conn.execute(
                    "select count(*) from pg_prepared_statements where not from_sql",
                    prepare=False,
                ).fetchone()
            )
        statements = conn.execute(
            "select name, statement, parameter_types::text[] from pg_prepared_statements",
            prepare=False,
        ).fetchall()
    return {"results": results, "counts": counts, "statements": statements}


def test_prepared_statements_past_the_threshold(targets: Targets) -> None:
    expected = {
        "results": [(i * 3, f"n{i}") for i in range(6)],
        # psycopg prepares a query on its threshold + 1st execution.
        "counts": [(0,), (0,), (1,), (1,), (1,), (1,)],
        # psycopg sends a small Python int as int2.
        "statements": [("_pg3_0", "select $1::int * 3, $2::text", ["smallint", "text"])],
    }
    assert on_both(targets, prepared) == {"proxy": expected, "direct": expected}


# -- LISTEN/NOTIFY and backend pids ---------------------------------------------------------


def listen_notify(t: Target) -> dict[str, Any]:
    channel = unique("compat_chan")
    with (
        psycopg.connect(t.dsn(), autocommit=True) as listener,
        psycopg.connect(t.dsn(), autocommit=True) as sender,
    ):
        server_pid = listener.execute("select pg_backend_pid()").fetchone()
        sender_pid = sender.execute("select pg_backend_pid()").fetchone()
        listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        listener.execute("select pg_notify(%s, 'from myself')", [channel])
        own = list(listener.notifies(timeout=5, stop_after=1))
        sender.execute("select pg_notify(%s, 'from another')", [channel])
        other = list(listener.notifies(timeout=5, stop_after=1))
        return {
            "payloads": [n.payload for n in own + other],
            "channels": {n.channel for n in own + other} == {channel},
            "listener_pid_is_backend_pid": (listener.info.backend_pid,) == server_pid,
            "sender_pid_is_backend_pid": (sender.info.backend_pid,) == sender_pid,
            "own_pid_is_listener": [n.pid for n in own] == [listener.info.backend_pid],
            "other_pid_is_sender": [n.pid for n in other] == [sender.info.backend_pid],
            "other_pid_differs": [n.pid for n in other] != [n.pid for n in own],
        }


def test_listen_notify_and_the_pid_idiom(targets: Targets) -> None:
    """Applications skip their own notifications by comparing the pid with backend_pid."""
    expected = {
        "payloads": ["from myself", "from another"],
        "channels": True,
        "listener_pid_is_backend_pid": True,
        "sender_pid_is_backend_pid": True,
        "own_pid_is_listener": True,
        "other_pid_is_sender": True,
        "other_pid_differs": True,
    }
    assert on_both(targets, listen_notify) == {"proxy": expected, "direct": expected}


def terminate_backend(t: Target) -> dict[str, Any]:
    app = unique("compat_victim")
    with (
        psycopg.connect(t.dsn(application_name=app), autocommit=True) as victim,
        psycopg.connect(t.dsn(), autocommit=True) as killer,
    ):
        pid = victim.info.backend_pid
        # By pid: through a proxy with warm upstream connections (docs/proxy.md), idle
        # sessions with the same application_name may sit beside this one.
        listed = killer.execute(
            "select application_name from pg_stat_activity where pid = %s", [pid]
        ).fetchall()
        terminated = killer.execute("select pg_terminate_backend(%s, 5000)", [pid]).fetchone()
        # With a pid that is not the backend's, nothing was terminated: no need to wait.
        gone = terminated == (True,) and poll(
            lambda: (
                not killer.execute(
                    "select 1 from pg_stat_activity where pid = %s", [pid]
                ).fetchall()
            ),
            "the terminated session to leave pg_stat_activity",
        )
        error: tuple[str, str | None, bool] | None = None
        try:
            victim.execute("select 1")
        except psycopg.Error as exc:
            error = (
                type(exc).__name__,
                exc.sqlstate,
                "terminating connection due to administrator command" in str(exc),
            )
        return {
            "listed_pid_is_backend_pid": listed == [(app,)],
            "terminated": terminated,
            "gone": gone,
            "error": error,
            "closed": victim.closed,
        }


def test_pg_terminate_backend_of_backend_pid(targets: Targets) -> None:
    expected = {
        "listed_pid_is_backend_pid": True,
        "terminated": (True,),
        "gone": True,
        "error": ("AdminShutdown", "57P01", True),
        "closed": True,
    }
    assert on_both(targets, terminate_backend) == {"proxy": expected, "direct": expected}


# -- cancel ---------------------------------------------------------------------------------


def cancel_sleep(t: Target, method: str) -> dict[str, Any]:
    app = unique("compat_cancel")
    with (
        psycopg.connect(t.dsn(application_name=app), autocommit=True) as conn,
        psycopg.connect(t.dsn(), autocommit=True) as watcher,
    ):
        problems: list[BaseException] = []

        def cancel_when_running() -> None:
            try:
                poll(
                    lambda: watcher.execute(
                        "select 1 from pg_stat_activity where application_name = %s"
                        " and state = 'active' and query = 'select pg_sleep(30)'",
                        [app],
                    ).fetchone(),
                    "pg_sleep(30) to run",
                )
                if method == "cancel":
                    cancel_from_child(conn)
                else:
                    getattr(conn, method)()
            except BaseException as exc:
                problems.append(exc)

        canceller = threading.Thread(target=cancel_when_running, daemon=True)
        canceller.start()
        started = time.monotonic()
        error: tuple[str, str | None] | None = None
        try:
            conn.execute("select pg_sleep(30)")
        except psycopg.Error as exc:
            error = (type(exc).__name__, exc.sqlstate)
        took = time.monotonic() - started
        canceller.join(10)
        assert not problems, problems
        usable = conn.execute("select 'still usable'").fetchone()
    return {"error": error, "quick": took < 5, "usable": usable}


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_stops_a_long_query(targets: Targets, method: str) -> None:
    """`cancel()` sends libpq's plain CancelRequest; `cancel_safe()` (libpq 17+) its TLS one."""
    expected = {"error": ("QueryCanceled", "57014"), "quick": True, "usable": ("still usable",)}
    got = on_both(targets, lambda t: cancel_sleep(t, method))
    assert got == {"proxy": expected, "direct": expected}


# -- large values ---------------------------------------------------------------------------


def large_rows(t: Target) -> dict[str, Any]:
    payloads = large_payloads()
    with psycopg.connect(t.dsn()) as conn:
        conn.execute("create temp table big (id int, b bytea, t text)")
        with conn.cursor() as cur:
            cur.executemany(
                "insert into big values (%s, %s, %s)",
                [(i, p, p.hex()[: len(p)]) for i, p in enumerate(payloads)],
            )
        text_rows = conn.execute("select id, b, t from big order by id").fetchall()
        with conn.cursor(binary=True) as cur:
            binary_rows = cur.execute("select id, b, t from big order by id").fetchall()
        wide = conn.execute(WIDE_SQL).fetchall()
    expected = [(i, p, p.hex()[: len(p)]) for i, p in enumerate(payloads)]
    return {
        "text_equal": text_rows == expected,
        "binary_equal": binary_rows == expected,
        "sizes": [(len(b), len(s)) for _, b, s in text_rows],
        "digest": sha(b"".join(b for _, b, _ in binary_rows)),
        "wide_count": len(wide),
        "wide_digest": wide_digest(wide),
    }


def test_large_rows_arrive_byte_for_byte(targets: Targets) -> None:
    payloads = large_payloads()
    expected = {
        "text_equal": True,
        "binary_equal": True,
        "sizes": [(n, n) for n in LARGE_SIZES],
        "digest": sha(b"".join(payloads)),
        "wide_count": WIDE_ROWS,
        "wide_digest": EXPECTED_WIDE_DIGEST,
    }
    assert on_both(targets, large_rows) == {"proxy": expected, "direct": expected}

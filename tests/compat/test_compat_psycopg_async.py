"""psycopg 3's AsyncConnection through rdsgate-proxy gives what it gives against PostgreSQL.

The async connection has its own waiting code (non-blocking sockets on the event loop), so
it meets the proxy's TLS records and flow control differently from the sync one. The
scenarios mirror test_compat_psycopg.py; each runs under a watchdog so a hang fails.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.compat.conftest import Target, Targets, apoll, on_both_async, unique, within
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

pytestmark = pytest.mark.timeout(60)


async def connect(t: Target, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(t.dsn(), **kwargs)


async def pipeline(t: Target) -> dict[str, Any]:
    async with await connect(t, autocommit=True) as conn:
        async with conn.pipeline() as p:
            await conn.execute("create temp table pl (id int primary key, v text)")
            async with conn.cursor() as cur:
                await cur.executemany(
                    "insert into pl values (%s, %s)", [(i, f"v{i}") for i in range(1, 101)]
                )
            total = await conn.execute("select count(*), sum(id) from pl")
            one = await conn.execute("select v from pl where id = %s", [42])
            await p.sync()
            batch = [await total.fetchone(), await one.fetchone()]
        failure: tuple[str, str | None] | None = None
        try:
            async with conn.pipeline():
                await conn.execute("insert into pl values (101, 'v101')")
                await conn.execute("insert into pl values (1, 'duplicate')")
                await conn.execute("insert into pl values (102, 'v102')")
        except psycopg.Error as exc:
            failure = (type(exc).__name__, exc.sqlstate)
        after = await (await conn.execute("select count(*), max(id) from pl")).fetchone()
        status = conn.info.transaction_status.name
    return {"batch": batch, "failure": failure, "after": after, "status": status}


def test_async_pipeline_mode(targets: Targets) -> None:
    expected = {
        "batch": [(100, 5050), ("v42",)],
        "failure": ("UniqueViolation", "23505"),
        "after": (100, 100),
        "status": "IDLE",
    }
    assert on_both_async(targets, pipeline) == {"proxy": expected, "direct": expected}


async def binary_copy(t: Target) -> dict[str, Any]:
    async with await connect(t) as conn, conn.cursor() as cur:
        await cur.execute(
            "create temp table cb (id int4, name text, data bytea, amount numeric,"
            " at timestamptz, tags text[])"
        )
        async with cur.copy("copy cb from stdin (format binary)") as copy:
            copy.set_types(COPY_TYPES)
            for row in COPY_ROWS:
                await copy.write_row(row)
        copied_in = cur.rowcount
        query = "copy (select * from cb order by id) to stdout (format binary)"
        async with cur.copy(query) as copy:
            copy.set_types(COPY_TYPES)
            rows = [row async for row in copy.rows()]
        raw = bytearray()
        async with cur.copy(query) as copy:
            async for chunk in copy:
                raw += chunk
    return {
        "copied_in": copied_in,
        "rows_equal": rows == COPY_ROWS,
        "first_rows": rows[:3],
        "raw_sha256": sha(bytes(raw)),
        "raw_head": bytes(raw[:11]),
    }


def test_async_binary_copy_in_and_out(targets: Targets) -> None:
    got = on_both_async(targets, binary_copy)
    assert got["proxy"] == got["direct"]
    assert got["direct"]["copied_in"] == len(COPY_ROWS)
    assert got["direct"]["rows_equal"], got["direct"]["first_rows"]
    assert got["direct"]["raw_head"] == b"PGCOPY\n\xff\r\n\x00"


async def named_cursors(t: Target) -> dict[str, Any]:
    async with await connect(t) as conn:
        async with conn.cursor("compat_scroll") as cur:
            cur.itersize = 7
            await cur.execute("select i, md5(i::text) from generate_series(1, 100) i order by i")
            first = await cur.fetchmany(10)
            one = await cur.fetchone()
            rest = [row async for row in cur]
        await conn.commit()
        async with conn.cursor("compat_held", withhold=True) as held:
            await held.execute("select generate_series(1, 5)")
            await conn.commit()
            after_commit = await held.fetchall()
    return {"first": first, "one": one, "rest": rest, "after_commit": after_commit}


def test_async_server_side_cursors(targets: Targets) -> None:
    rows = [(i, md5(str(i))) for i in range(1, 101)]
    expected = {
        "first": rows[:10],
        "one": rows[10],
        "rest": rows[11:],
        "after_commit": [(i,) for i in range(1, 6)],
    }
    assert on_both_async(targets, named_cursors) == {"proxy": expected, "direct": expected}


async def prepared(t: Target) -> dict[str, Any]:
    async with await connect(t, prepare_threshold=3) as conn:
        results = []
        for i in range(8):
            cur = await conn.execute("select %s::numeric * 2", [Decimal(i) / 4])
            results.append(await cur.fetchone())
        cur = await conn.execute(
            "select name, statement from pg_prepared_statements where not from_sql",
            prepare=False,
        )
        statements = await cur.fetchall()
    return {"results": results, "statements": statements}


def test_async_prepared_statements_past_the_threshold(targets: Targets) -> None:
    expected = {
        "results": [(Decimal(i) / 2,) for i in range(8)],
        "statements": [("_pg3_0", "select $1::numeric * 2")],
    }
    assert on_both_async(targets, prepared) == {"proxy": expected, "direct": expected}


async def listen_notify(t: Target) -> dict[str, Any]:
    channel = unique("compat_chan")
    async with (
        await connect(t, autocommit=True) as listener,
        await connect(t, autocommit=True) as sender,
    ):
        server_pid = await (await listener.execute("select pg_backend_pid()")).fetchone()
        await listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        await listener.execute("select pg_notify(%s, 'from myself')", [channel])
        own = [n async for n in listener.notifies(timeout=5, stop_after=1)]
        await sender.execute("select pg_notify(%s, 'from another')", [channel])
        other = [n async for n in listener.notifies(timeout=5, stop_after=1)]
        return {
            "payloads": [n.payload for n in own + other],
            "listener_pid_is_backend_pid": (listener.info.backend_pid,) == server_pid,
            "own_pid_is_listener": [n.pid for n in own] == [listener.info.backend_pid],
            "other_pid_is_sender": [n.pid for n in other] == [sender.info.backend_pid],
            "other_pid_differs": [n.pid for n in other] != [n.pid for n in own],
        }


def test_async_listen_notify_and_the_pid_idiom(targets: Targets) -> None:
    expected = {
        "payloads": ["from myself", "from another"],
        "listener_pid_is_backend_pid": True,
        "own_pid_is_listener": True,
        "other_pid_is_sender": True,
        "other_pid_differs": True,
    }
    assert on_both_async(targets, listen_notify) == {"proxy": expected, "direct": expected}


async def terminate_backend(t: Target) -> dict[str, Any]:
    app = unique("compat_victim")
    async with (
        await connect(t, autocommit=True, application_name=app) as victim,
        await connect(t, autocommit=True) as killer,
    ):
        pid = victim.info.backend_pid
        terminated = await (
            await killer.execute("select pg_terminate_backend(%s, 5000)", [pid])
        ).fetchone()

        async def gone() -> bool:
            cur = await killer.execute("select 1 from pg_stat_activity where pid = %s", [pid])
            return not await cur.fetchall()

        if terminated == (True,):  # else the pid was not the backend's: nothing to wait for
            await apoll(gone, "the terminated session to leave pg_stat_activity")
        error: tuple[str, str | None] | None = None
        try:
            await victim.execute("select 1")
        except psycopg.Error as exc:
            error = (type(exc).__name__, exc.sqlstate)
        return {"terminated": terminated, "error": error, "closed": victim.closed}


def test_async_pg_terminate_backend_of_backend_pid(targets: Targets) -> None:
    expected = {"terminated": (True,), "error": ("AdminShutdown", "57P01"), "closed": True}
    assert on_both_async(targets, terminate_backend) == {"proxy": expected, "direct": expected}


async def cancel_sleep(t: Target) -> dict[str, Any]:
    app = unique("compat_cancel")
    async with (
        await connect(t, autocommit=True, application_name=app) as conn,
        await connect(t, autocommit=True) as watcher,
    ):

        async def running() -> bool:
            cur = await watcher.execute(
                "select 1 from pg_stat_activity where application_name = %s"
                " and state = 'active' and query = 'select pg_sleep(30)'",
                [app],
            )
            return await cur.fetchone() is not None

        async def cancel_when_running() -> None:
            await apoll(running, "pg_sleep(30) to run")
            await conn.cancel_safe(timeout=5)

        canceller = asyncio.create_task(cancel_when_running())
        started = time.monotonic()
        error: tuple[str, str | None] | None = None
        try:
            await within(conn.execute("select pg_sleep(30)"))
        except psycopg.Error as exc:
            error = (type(exc).__name__, exc.sqlstate)
        took = time.monotonic() - started
        await within(canceller)
        usable = await (await conn.execute("select 'still usable'")).fetchone()
    return {"error": error, "quick": took < 5, "usable": usable}


def test_async_cancel_safe_stops_a_long_query(targets: Targets) -> None:
    expected = {"error": ("QueryCanceled", "57014"), "quick": True, "usable": ("still usable",)}
    assert on_both_async(targets, cancel_sleep) == {"proxy": expected, "direct": expected}


async def large_rows(t: Target) -> dict[str, Any]:
    payloads = large_payloads()
    async with await connect(t) as conn:
        await conn.execute("create temp table big (id int, b bytea)")
        async with conn.cursor() as cur:
            await cur.executemany(
                "insert into big values (%s, %s)", [(i, p) for i, p in enumerate(payloads)]
            )
            await cur.execute("select id, b from big order by id")
            text_rows = await cur.fetchall()
        async with conn.cursor(binary=True) as cur:
            await cur.execute("select id, b from big order by id")
            binary_rows = await cur.fetchall()
        cur = await conn.execute(WIDE_SQL)
        wide = await cur.fetchall()
    expected = list(enumerate(payloads))
    return {
        "text_equal": text_rows == expected,
        "binary_equal": binary_rows == expected,
        "sizes": [len(b) for _, b in binary_rows],
        "wide_count": len(wide),
        "wide_digest": wide_digest(wide),
    }


def test_async_large_rows_arrive_byte_for_byte(targets: Targets) -> None:
    expected = {
        "text_equal": True,
        "binary_equal": True,
        "sizes": LARGE_SIZES,
        "wide_count": WIDE_ROWS,
        "wide_digest": EXPECTED_WIDE_DIGEST,
    }
    assert on_both_async(targets, large_rows) == {"proxy": expected, "direct": expected}

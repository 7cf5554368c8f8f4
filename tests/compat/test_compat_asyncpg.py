"""asyncpg through rdsgate-proxy gives what it gives against PostgreSQL directly.

asyncpg speaks only the extended protocol with named prepared statements, does COPY in
binary, delivers notifications to callbacks with the sender's pid, and on `terminate()`
drops its socket without a Terminate message: the proxy must keep all of that intact and
end the server session when the client vanishes.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.compat.conftest import Target, Targets, apoll, on_both_async, unique, within
from tests.compat.data import (
    COPY_ROWS,
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

COPY_COLUMNS = ["id", "name", "data", "amount", "at", "tags"]
COPY_TABLE = (
    "create temp table cr (id int4, name text, data bytea, amount numeric,"
    " at timestamptz, tags text[])"
)


async def connect(t: Target, **kwargs: Any) -> Any:
    return await within(asyncpg.connect(**t.asyncpg_kwargs(**kwargs)))


async def prepared(t: Target) -> dict[str, Any]:
    conn = await connect(t)
    try:
        query = "select $1::int * 2 as doubled, $2::text as label"
        stmt = await conn.prepare(query)
        rows = [tuple(await stmt.fetchrow(i, f"n{i}")) for i in range(20)]
        await conn.execute("create temp table pt (id int primary key, v text)")
        insert = await conn.prepare("insert into pt values ($1, $2)")
        await insert.executemany([(i, f"v{i}") for i in range(200)])
        count = await conn.fetchrow("select count(*), sum(id) from pt")
        on_server = await conn.fetch(
            "select name like '\\_\\_asyncpg\\_stmt\\_%' as asyncpg_named,"
            " parameter_types::text[] as types"
            " from pg_prepared_statements where statement = $1",
            query,
        )
        return {
            "rows": rows,
            "parameters": [p.name for p in stmt.get_parameters()],
            "attributes": [(a.name, a.type.name) for a in stmt.get_attributes()],
            "inserted": tuple(count),
            "on_server": [tuple(r) for r in on_server],
        }
    finally:
        await within(conn.close())


def test_prepared_statements(targets: Targets) -> None:
    expected = {
        "rows": [(i * 2, f"n{i}") for i in range(20)],
        "parameters": ["int4", "text"],
        "attributes": [("doubled", "int4"), ("label", "text")],
        "inserted": (200, sum(range(200))),
        "on_server": [(True, ["integer", "text"])],
    }
    assert on_both_async(targets, prepared) == {"proxy": expected, "direct": expected}


async def copy_records(t: Target) -> dict[str, Any]:
    conn = await connect(t)
    try:
        await conn.execute(COPY_TABLE)
        status = await conn.copy_records_to_table("cr", records=COPY_ROWS, columns=COPY_COLUMNS)
        rows = [tuple(r) for r in await conn.fetch("select * from cr order by id")]
        return {"status": status, "rows_equal": rows == COPY_ROWS, "first_rows": rows[:3]}
    finally:
        await within(conn.close())


def test_copy_records_to_table(targets: Targets) -> None:
    got = on_both_async(targets, copy_records)
    assert got["proxy"] == got["direct"]
    assert got["direct"]["status"] == f"COPY {len(COPY_ROWS)}"
    assert got["direct"]["rows_equal"], got["direct"]["first_rows"]


async def copy_out(t: Target, directory: Path) -> dict[str, Any]:
    conn = await connect(t)
    try:
        buf = io.BytesIO()
        csv_status = await conn.copy_from_query(
            "select i, md5(i::text), case when i % 3 = 0 then null else 'a,\"b\"' end"
            " from generate_series(1, $1::int) i order by i",
            5000,
            output=buf,
            format="csv",
        )
        await conn.execute(COPY_TABLE)
        await conn.copy_records_to_table("cr", records=COPY_ROWS, columns=COPY_COLUMNS)
        path = directory / f"{t.name}.bin"
        binary_status = await conn.copy_from_query(
            "select * from cr order by id", output=path, format="binary"
        )
        binary = path.read_bytes()
        return {
            "csv_status": csv_status,
            "csv": buf.getvalue(),
            "binary_status": binary_status,
            "binary_sha256": sha(binary),
            "binary_head": binary[:11],
        }
    finally:
        await within(conn.close())


def test_copy_from_query(targets: Targets, tmp_path: Path) -> None:
    got = on_both_async(targets, lambda t: copy_out(t, tmp_path))
    quoted = '"a,""b"""'  # CSV quoting of a,"b"
    csv = "".join(
        f"{i},{md5(str(i))},{'' if i % 3 == 0 else quoted}\n" for i in range(1, 5001)
    ).encode()
    assert got["proxy"] == got["direct"]
    assert got["direct"]["csv_status"] == "COPY 5000"
    assert got["direct"]["csv"] == csv
    assert got["direct"]["binary_status"] == f"COPY {len(COPY_ROWS)}"
    assert got["direct"]["binary_head"] == b"PGCOPY\n\xff\r\n\x00"


async def listeners(t: Target) -> dict[str, Any]:
    channel = unique("compat_chan")
    listener, sender = await connect(t), await connect(t)
    try:
        heard: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()

        def on_notify(_conn: Any, pid: int, chan: str, payload: object) -> None:
            heard.put_nowait((pid, chan, str(payload)))

        await listener.add_listener(channel, on_notify)
        await listener.execute(f"notify {channel}, 'from myself'")
        own = await within(heard.get(), 5)
        await sender.execute("select pg_notify($1, 'from another')", channel)
        other = await within(heard.get(), 5)
        backend_pid = await listener.fetchval("select pg_backend_pid()")
        pid = listener.get_server_pid()
        await listener.remove_listener(channel, on_notify)
        listening = await listener.fetchval("select count(*) from pg_listening_channels()")
        return {
            "heard": [(chan == channel, payload) for _, chan, payload in (own, other)],
            "server_pid_is_backend_pid": pid == backend_pid,
            "own_pid_is_server_pid": own[0] == pid,
            "other_pid_is_sender": other[0] == sender.get_server_pid(),
            "other_pid_differs": other[0] != own[0],
            "listening_after_remove": listening,
        }
    finally:
        await within(asyncio.gather(listener.close(), sender.close()))


def test_listeners_and_the_pid_idiom(targets: Targets) -> None:
    expected = {
        "heard": [(True, "from myself"), (True, "from another")],
        "server_pid_is_backend_pid": True,
        "own_pid_is_server_pid": True,
        "other_pid_is_sender": True,
        "other_pid_differs": True,
        "listening_after_remove": 0,
    }
    assert on_both_async(targets, listeners) == {"proxy": expected, "direct": expected}


async def terminate(t: Target) -> dict[str, Any]:
    app = unique("compat_terminate")
    conn = await connect(t, server_settings={"application_name": app})
    watcher = await connect(t)
    try:
        pid = conn.get_server_pid()
        # By pid: through a proxy with warm upstream connections (docs/proxy.md), idle
        # sessions with the same application_name may sit beside this one.
        listed = await watcher.fetch(
            "select application_name from pg_stat_activity where pid = $1", pid
        )
        conn.terminate()

        async def gone() -> bool:
            rows = await watcher.fetch("select 1 from pg_stat_activity where pid = $1", pid)
            return not rows

        await apoll(gone, "the terminated session to leave pg_stat_activity", limit=5)
        return {
            "listed_once": len(listed),
            "closed": conn.is_closed(),
            "listed_pid_is_server_pid": [r["application_name"] for r in listed] == [app],
        }
    finally:
        await within(watcher.close())


def test_terminate_ends_the_server_session(targets: Targets) -> None:
    """`terminate()` closes the socket without a Terminate: the server session must end."""
    expected = {"listed_once": 1, "closed": True, "listed_pid_is_server_pid": True}
    assert on_both_async(targets, terminate) == {"proxy": expected, "direct": expected}


async def large_results(t: Target) -> dict[str, Any]:
    payloads = large_payloads()
    conn = await connect(t)
    try:
        await conn.execute("create temp table big (id int, b bytea, t text)")
        await conn.executemany(
            "insert into big values ($1, $2, $3)",
            [(i, p, p.hex()[: len(p)]) for i, p in enumerate(payloads)],
        )
        rows = await conn.fetch("select id, b, t from big order by id")
        wide = [tuple(r) for r in await conn.fetch(WIDE_SQL)]
        async with conn.transaction():
            streamed = [tuple(r) async for r in conn.cursor(WIDE_SQL, prefetch=333)]
        expected = [(i, p, p.hex()[: len(p)]) for i, p in enumerate(payloads)]
        return {
            "rows_equal": [tuple(r) for r in rows] == expected,
            "sizes": [(len(r["b"]), len(r["t"])) for r in rows],
            "digest": sha(b"".join(r["b"] for r in rows)),
            "wide_count": len(wide),
            "wide_digest": wide_digest(wide),
            "streamed_digest": wide_digest(streamed),
        }
    finally:
        await within(conn.close())


def test_large_results(targets: Targets) -> None:
    expected = {
        "rows_equal": True,
        "sizes": [(n, n) for n in LARGE_SIZES],
        "digest": sha(b"".join(large_payloads())),
        "wide_count": WIDE_ROWS,
        "wide_digest": EXPECTED_WIDE_DIGEST,
        "streamed_digest": EXPECTED_WIDE_DIGEST,
    }
    assert on_both_async(targets, large_results) == {"proxy": expected, "direct": expected}

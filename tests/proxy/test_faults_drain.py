"""Fault: SIGTERM under load (issue 14, fault 6).

100 asyncpg sessions through one proxy, each in a loop of transactions that insert two
rows (client, txn, part 1 and 2) and record the transactions whose COMMIT was
acknowledged. The proxy gets SIGTERM while they run. Its drain (docs/proxy.md,
Lifecycle): stop accepting, let sessions go on for `limits.drainTimeout`, then end each
at the next moment the server waits for its client, with FATAL 57P01.

What must hold, read back from PostgreSQL directly: every acknowledged transaction is
in the table and nothing else is (no commit the client did not hear of), no transaction
is half-applied, and each client's only error is 57P01 "terminating connection due to
administrator command", between transactions or after the drain timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg

from rdsgate.lab.postgres import PostgresServer
from tests.fixtures.proxy import RunningProxy

Start = Callable[..., RunningProxy]

CLIENTS = 100
DRAIN = 2.0


#: How asyncpg reports a FATAL: as the cause of ConnectionDoesNotExistError when a call
#: was waiting for it; when it arrives while the connection is idle asyncpg drops it and
#: fails the next call (InternalClientError) or reports the closed connection, as it does
#: with PostgreSQL's own FATALs.
ASYNCPG_LOST = ("ConnectionDoesNotExistError", "InternalClientError")


@dataclass
class Client:
    n: int
    driver: str
    acked: list[int] = field(default_factory=list)
    #: The error that ended the loop: (phase, SQLSTATE, message, exception type, when).
    error: tuple[str, str | None, str, str, float] | None = None


async def transaction(
    conn: asyncpg.Connection | psycopg.AsyncConnection[Any], table: str, n: int, txn: int
) -> AsyncIterator[str]:
    """One transaction of two rows; yields the phase it enters (begin, insert, commit)."""
    yield "begin"
    if isinstance(conn, asyncpg.Connection):
        tr = conn.transaction()
        await tr.start()
        yield "insert"
        await conn.execute(f"insert into {table} values ($1, $2, 1), ($1, $2, 2)", n, txn)  # noqa: S608
        yield "commit"
        await tr.commit()
    else:
        await conn.execute("begin")
        yield "insert"
        await conn.execute(f"insert into {table} values (%s, %s, 1), (%s, %s, 2)", (n, txn, n, txn))  # noqa: S608
        yield "commit"
        await conn.execute("commit")


async def run_client(
    conn: asyncpg.Connection | psycopg.AsyncConnection[Any],
    client: Client,
    table: str,
    warmed: asyncio.Event,
) -> None:
    txn = 0
    while True:
        txn += 1
        phase = ""
        try:
            async for step in transaction(conn, table, client.n, txn):
                phase = step
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            psycopg.Error,
            OSError,
        ) as exc:
            cause = exc.__cause__
            server = cause if isinstance(cause, asyncpg.PostgresError) else exc
            sqlstate = getattr(server, "sqlstate", None)
            message = str(getattr(server, "message", None) or server)
            if isinstance(server, psycopg.Error) and server.diag.message_primary:
                message = server.diag.message_primary
            client.error = (phase, sqlstate, message, type(exc).__name__, time.monotonic())
            return
        client.acked.append(txn)
        if len(client.acked) == 3:
            warmed.set()


async def load_then_sigterm(proxy: RunningProxy, table: str) -> tuple[list[Client], float]:
    """Half the clients on asyncpg, half on psycopg; SIGTERM once each committed three."""
    half = CLIENTS // 2
    conns: list[asyncpg.Connection | psycopg.AsyncConnection[Any]] = [
        *await asyncio.gather(*(asyncpg.connect(proxy.url()) for _ in range(half))),
        *await asyncio.gather(
            *(
                psycopg.AsyncConnection.connect(proxy.dsn(), autocommit=True)
                for _ in range(CLIENTS - half)
            )
        ),
    ]
    clients = [Client(n, "asyncpg" if n < half else "psycopg") for n in range(CLIENTS)]
    warmed = [asyncio.Event() for _ in clients]
    loops = [
        asyncio.create_task(run_client(c, cl, table, ev))
        for c, cl, ev in zip(conns, clients, warmed, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in warmed)), 60)
    sent = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*loops), DRAIN + 30)
    for c in conns:
        if isinstance(c, asyncpg.Connection):
            c.terminate()
        else:
            await c.close()
    return clients, sent


def test_sigterm_under_load(start_proxy: Start, pg: PostgresServer) -> None:
    proxy = start_proxy({"limits": {"drainTimeout": f"{DRAIN:g}s"}})
    table = f"drain_{os.urandom(3).hex()}"
    pg.execute(
        f"create table {table} (client int, txn int, part int, primary key (client, txn, part));"
        f"grant insert, select on {table} to app;",
        "orders",
    )
    try:
        clients, sent = asyncio.run(load_then_sigterm(proxy, table))
        assert proxy.process.wait(DRAIN + 15) == 0
        counts = f"select client, txn, count(*) from {table} group by 1, 2"  # noqa: S608
        rows = pg.execute(counts, "orders")
    finally:
        pg.execute(f"drop table if exists {table}", "orders")

    stored = {}
    for line in rows.splitlines():
        n, txn, parts = map(int, line.split("|"))
        stored[(n, txn)] = parts
    assert set(stored.values()) == {2}, "a transaction was half-applied"
    acked = {(c.n, txn) for c in clients for txn in c.acked}
    assert stored.keys() == acked, (
        f"committed but not acknowledged: {sorted(stored.keys() - acked)[:5]}; "
        f"acknowledged but lost: {sorted(acked - stored.keys())[:5]}"
    )

    shutdown = ("57P01", "terminating connection due to administrator command")
    for c in clients:
        assert c.error is not None
        phase, sqlstate, message, kind, when = c.error
        if c.driver == "psycopg" or kind not in ASYNCPG_LOST:
            assert (sqlstate, message) == shutdown, c.error
        # Sessions may go on for the drain timeout: nobody is ended before it ...
        assert when >= sent + DRAIN, c.error
        # ... and within it, only between transactions.
        assert phase == "begin" or when >= sent + DRAIN

    ends = proxy.events("session.end")
    assert len(ends) == CLIENTS
    assert {e["reason"] for e in ends} == {"shutdown"}

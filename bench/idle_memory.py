"""Memory of idle sessions (issue 13, target 5): 2,000 idle TLS client sessions on one
rdsgate-proxy within 200 MiB RSS, and the bytes each session costs.

Each session is a full log-in through rdsgate (TLS, the Token secret as password, the
access check, an upstream TLS connection and log-in) followed by one `select 1`, then left
idle; rdsgate holds an upstream connection for every one of them. The upstream is a
pgbouncer in *transaction* mode (TLS on its client side, `auth_type = trust` so the IAM
token rdsgate sends is not checked, `max_client_conn` above the session count, a pool of 4
PostgreSQL connections): a real server that speaks the protocol and TLS the way RDS Proxy
does, so rdsgate's side of each upstream connection is what it would be in production,
while 2,000 upstream sessions cost a few kB each in pgbouncer instead of 2,000
PostgreSQL backends (about 10 MB each) or 2,000 sessions of the Python stand-in, which
would open a PostgreSQL connection for each. Only rdsgate's memory is measured.

The sessions are opened from this process with asyncio and asyncpg, at most 32 log-ins
at a time. The proxy's RSS (VmRSS in /proc/PID/status) is read once after one warm-up
session has come and gone (the baseline: everything loaded, no session open) and once
when its `rdsgate_connections_active` gauge shows all sessions open; the difference over
the session count is the bytes per session. That cost is not linear at small counts
(the first few dozen sessions cost about three times what each of 2,000 does), so with
another count (`--idle-sessions`, for a quick check) `idle_rss_mib_2000` is null rather
than an extrapolation, and `idle_rss_mib` is the RSS at the count measured.

The run needs about two descriptors per session in the proxy and one in this process:
it raises RLIMIT_NOFILE (soft, and hard when allowed) before starting the proxy and
pgbouncer, which inherit it (pgbouncer through runuser gets it back from a shell; see
`bench.rig.start_pgbouncer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.rig import (
    DB_NAME,
    DB_USER,
    HOST,
    STATIC_AWS_ENV,
    BenchError,
    Rdsgate,
    raise_open_files_limit,
    rss_bytes,
    start_pgbouncer,
    start_rdsgate,
)
from rdsgate.lab.postgres import LabCA, PostgresServer

SESSIONS = 2000
TARGET_MIB = 200
MiB = 1024 * 1024
CONCURRENT_LOGINS = 32
UPSTREAM_POOL = 4
SETTLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class IdleMemory:
    sessions: int
    rss_baseline: int
    rss_open: int
    open_seconds: float

    @property
    def bytes_per_session(self) -> float:
        return (self.rss_open - self.rss_baseline) / self.sessions

    @property
    def rss_mib(self) -> float:
        return self.rss_open / MiB

    @property
    def rss_mib_2000(self) -> float | None:
        """RSS with 2,000 sessions open; None when another count was measured."""
        return self.rss_mib if self.sessions == SESSIONS else None

    def as_json(self) -> dict[str, Any]:
        at_2000 = self.rss_mib_2000
        return {
            "idle_rss_mib_2000": None if at_2000 is None else round(at_2000, 1),
            "idle_bytes_per_session": round(self.bytes_per_session),
            "idle_sessions": self.sessions,
            "idle_rss_mib": round(self.rss_mib, 1),
            "idle_rss_baseline_mib": round(self.rss_baseline / MiB, 1),
        }


async def _wait_active(proxy: Rdsgate, count: int, within: float) -> None:
    """Until the proxy's gauge of open sessions reads `count`."""
    deadline = time.monotonic() + within
    seen: float | None = None
    while True:
        seen = await asyncio.to_thread(proxy.metric, "rdsgate_connections_active")
        if seen == count:
            return
        proxy.service.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"rdsgate-proxy showed {seen} open sessions, not {count}, after {within:g}s:\n"
                f"{proxy.service.log_tail()}"
            )
        await asyncio.sleep(0.05)  # the pause between polls of the gauge


async def _hold_sessions(
    proxy: Rdsgate,
    ca_file: Path,
    secret: str,
    sessions: int,
    progress: Callable[[str, int], None],
) -> IdleMemory:
    ctx = ssl.create_default_context(cafile=str(ca_file))

    async def login() -> Any:
        conn = await asyncpg.connect(
            host=HOST,
            port=proxy.port,
            user=DB_USER,
            database=DB_NAME,
            password=secret,
            ssl=ctx,
            timeout=60,
            statement_cache_size=0,
        )
        try:
            if await conn.fetchval("select 1") != 1:
                raise BenchError("select 1 through rdsgate did not answer 1")
        except BaseException:
            conn.terminate()
            raise
        return conn

    warm = await login()
    await warm.close()
    await _wait_active(proxy, 0, SETTLE_TIMEOUT)
    baseline = rss_bytes(proxy.service.pid)

    held: list[Any] = []
    gate = asyncio.Semaphore(CONCURRENT_LOGINS)

    async def open_one() -> None:
        async with gate:
            held.append(await login())
        progress(f"idle sessions: {len(held)}/{sessions} open", 1)

    started = time.monotonic()
    try:
        tasks = [asyncio.ensure_future(open_one()) for _ in range(sessions)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        opened = time.monotonic() - started
        await _wait_active(proxy, sessions, SETTLE_TIMEOUT)
        rss = rss_bytes(proxy.service.pid)
    finally:
        for conn in held:
            conn.terminate()
    return IdleMemory(sessions, baseline, rss, opened)


def measure(
    stack: contextlib.ExitStack,
    pgbouncer: Path,
    work: Path,
    ca: LabCA,
    pg: PostgresServer,
    secret: str,
    sessions: int,
    progress: Callable[[str, int], None],
) -> IdleMemory:
    """Starts pgbouncer (transaction mode) and an rdsgate in front of it, opens `sessions`
    idle sessions through rdsgate and reads its RSS; `progress(text, n)` per session."""
    raise_open_files_limit(2 * sessions + 1024)
    bouncer = start_pgbouncer(
        stack,
        pgbouncer,
        work,
        ca,
        pg,
        pg.passwords.get(DB_USER, secret),
        name="pgbouncer-idle",
        pool_mode="transaction",
        auth_type="trust",
        max_client_conn=sessions + 100,
        pool_size=UPSTREAM_POOL,
    )
    proxy = start_rdsgate(
        stack,
        work,
        ca,
        secret,
        name="rdsgate-idle",
        upstream=f"localhost:{bouncer.port}",
        aws={"region": "eu-west-1"},
        aws_env=STATIC_AWS_ENV,
        limits={"maxConnections": sessions + 100},
    )
    try:
        return asyncio.run(_hold_sessions(proxy, ca.cert_file, secret, sessions, progress))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BenchError(
            f"an idle session through rdsgate failed: {exc!r}\n"
            f"--- rdsgate-proxy log ---\n{proxy.service.log_tail()}\n"
            f"--- pgbouncer log ---\n{bouncer.service.log_tail()}"
        ) from exc

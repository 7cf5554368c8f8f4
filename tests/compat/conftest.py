"""The two targets of every driver compatibility test: rdsgate-proxy, and PostgreSQL itself.

A driver feature is compatible when it gives through the proxy what it gives without it, so
each test runs the same driver code against both targets, the same database (`orders`) as
the same database user (`app`) over verified TLS (sslmode=verify-full, the lab CA), on
127.0.0.1, and compares. One proxy serves the whole package; the tests use temporary tables
and unique channel and application names, so the two runs cannot see each other.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rdsgate.lab.postgres import PostgresServer
from tests.fixtures.proxy import APP_SECRET, ProxyLab, RunningProxy

T = TypeVar("T")

#: How long one driver operation may take before the test fails instead of hanging.
OP_TIMEOUT = 10.0


def conninfo_quote(value: str) -> str:
    """A libpq connection-string value, quoted (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Target:
    """Where a driver connects: `proxy` (rdsgate-proxy) or `direct` (PostgreSQL)."""

    name: str
    host: str
    port: int
    user: str
    password: str
    dbname: str
    ca_file: Path

    def dsn(self, **extra: str) -> str:
        """A libpq key=value string with sslmode=verify-full against the lab CA."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca_file),
            "connect_timeout": "10",
            **extra,
        }
        return " ".join(f"{k}={conninfo_quote(v)}" for k, v in parts.items())

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def asyncpg_kwargs(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for `asyncpg.connect` (it takes no key=value strings)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.dbname,
            "ssl": self.ssl_context(),
            "timeout": OP_TIMEOUT,
            **extra,
        }


@dataclass(frozen=True)
class Targets:
    """Both targets; iterating gives the proxy first, then PostgreSQL directly."""

    proxy: Target
    direct: Target

    def __iter__(self) -> Iterator[Target]:
        yield self.proxy
        yield self.direct


@pytest.fixture(scope="package")
def compat_proxy(proxy_lab: ProxyLab) -> Iterator[RunningProxy]:
    """One rdsgate-proxy for the whole compatibility suite."""
    running = proxy_lab.start()
    yield running
    running.stop()


@pytest.fixture(scope="package")
def targets(compat_proxy: RunningProxy, pg: PostgresServer) -> Targets:
    proxy = Target(
        name="proxy",
        host="127.0.0.1",  # where it listens; its certificate names 127.0.0.1 too
        port=compat_proxy.port,
        user="app",
        password=APP_SECRET,
        dbname="orders",
        ca_file=compat_proxy.ca_file,
    )
    direct = Target(
        name="direct",
        host=pg.host,
        port=pg.port,
        user="app",
        password=pg.passwords["app"],
        dbname="orders",
        ca_file=pg.ca_file,
    )
    return Targets(proxy, direct)


async def within(aw: Awaitable[T], seconds: float = OP_TIMEOUT) -> T:
    """Await one driver operation under a watchdog: a hang becomes a TimeoutError."""
    return await asyncio.wait_for(aw, seconds)


#: A whole scenario against one target must finish within this many seconds.
SCENARIO_TIMEOUT = 20.0


def on_both_async(targets: Targets, scenario: Callable[[Target], Awaitable[T]]) -> dict[str, T]:
    """Runs an async scenario against each target in turn, each under the watchdog."""

    async def main() -> dict[str, T]:
        return {t.name: await within(scenario(t), SCENARIO_TIMEOUT) for t in targets}

    return asyncio.run(main())


def poll(
    check: Callable[[], T | None], what: str, timeout: float = OP_TIMEOUT, every: float = 0.02
) -> T:
    """Call `check` until it returns something other than None (or False); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def apoll(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    limit: float = OP_TIMEOUT,
    every: float = 0.02,
) -> T:
    """`poll` for coroutines, each call of `check` under the watchdog too."""
    deadline = time.monotonic() + limit
    while True:
        value = await within(check())
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(every)


def unique(prefix: str) -> str:
    """A name no other run uses (channels, application names, tables)."""
    return f"{prefix}_{os.urandom(4).hex()}"

"""`python bench/soak.py` (`make soak`): one rdsgate-proxy under a mixed load for
`--minutes` (default 30), with access-file reloads and revocations, watching its memory
and open file descriptors (issue 14, load and capacity).

The load, through one proxy in front of PostgreSQL (as `bench/run.py` runs it: client
TLS, IAM tokens signed locally, default audit into a file):

- **steady**: 20 sessions (Token `soak/app`) open for the whole run, each committing 10
  transactions a second (`UPDATE ... RETURNING` of a row of its own, checked against the
  count it committed, and every row checked at the end);
- **churn**: 8 clients (Token `soak/churn`), each twice a second: log in, a few queries
  (extended and simple protocol, checked), every 10th time a COPY OUT, every 15th a query
  cancelled by the driver's timeout (a CancelRequest through the proxy), every 25th a
  log-in with a wrong password (must be refused with 28P01), then a clean close or, every
  7th time, a dropped connection;
- **revocable**: 4 more churn clients as Token `soak/revocable`.

Every `--reload-every` seconds the access file is rewritten as the operator's projected
Secret changes (the kubelet's `..data` swap, `ProjectedVolume`): other Tokens come and
go, and the proxy must apply each version (its `rdsgate_access_grants` gauge and
`rdsgate_access_reloads_total{result="ok"}` say so) within 15 s. Every `--revoke-every`
seconds `soak/revocable`'s grant is removed: an idle session of that Token must fail its
next query (57P01 "access revoked: ...", or a closed connection), one inside a 60 s query
must be ended within 15 s (the proxy cuts it 5 s after the reload, as docs/proxy.md says),
every other upstream session of it must be gone from PostgreSQL, a new log-in with its
secret must be refused with 28P01, and the audit trail must say `session.revoked`; then
the grant comes back and a log-in works again. The cut session's upstream backend must be
gone within 15 s too: the proxy cancels its statement (`busy_upstream_lingering` counts
the times it was not). While
that grant is away, the revocable clients' own failures of exactly those kinds are
expected; any other error anywhere, a Traceback in the proxy's log, or an invalid reload
is unexpected and fails the run.

RSS (VmRSS in /proc/PID/status) and open descriptors (/proc/PID/fd) are read after the
warm-up (which includes one reload and one revocation) and at the end, each time with the
churn paused, so that only the steady sessions are open: the same state both times. The
proxy's warm upstream connections (a pool bounded by its config) are counted apart, and
left out of the descriptors compared. The run fails if either grew by more than
`--max-growth` (10 %).

Intervals scale down for short runs: a reload every min(30, max(10, duration/12)) s and a
revocation every min(300, max(40, duration/3)) s, so 30 minutes gives 30 s and 5 min, and
the CI's 2 minutes 10 s and 40 s. Progress on stderr every 10 s; `--json` prints only the
result on stdout. On a machine shared with other work, rates and timings are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml

if __package__ in (None, ""):
    # `python bench/soak.py`: the repository root makes `bench` importable (appended, so
    # no directory of the repository shadows a module of the same name).
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.rig import (
    DB_NAME,
    DB_USER,
    HOST,
    STATIC_AWS_ENV,
    BenchError,
    Rdsgate,
    http_get,
    rss_bytes,
    signals_interrupt,
    start_rdsgate,
)
from rdsgate.lab.postgres import LabCA, PostgresError, PostgresNotInstalled, PostgresServer
from rdsgate.proxy.access import secret_digest

MINUTES = 30.0
STEADY = 20
STEADY_RATE = 10.0
CHURN = 8
REVOCABLE = 4
CYCLE_RATE = 2.0
MAX_GROWTH = 0.10
PROGRESS_EVERY = 10.0
APPLY_TIMEOUT = 15.0
QUIESCE_TIMEOUT = 30.0
#: How long after the grant is back a revocable client's refusal still counts as expected
#: (it may have been refused by the proxy just before it reloaded).
GRACE = 2.0
ERROR_SAMPLES = 20
COMMAND_TIMEOUT = 20.0
CONNECT_TIMEOUT = 15.0
COPY_ROWS = 2000
COPY_BYTES = sum(len(str(i)) + 1 for i in range(1, COPY_ROWS + 1))
MiB = 1024 * 1024

ROLE = "soak-rw"
IDENTITIES = {"steady": "soak/app", "churn": "soak/churn", "revocable": "soak/revocable"}

_STARTED = time.monotonic()


def say(text: str) -> None:
    """A progress line on stderr, stamped with the seconds since the run began."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {text}", file=sys.stderr, flush=True)


# -- the access file --------------------------------------------------------------------


def access_doc(
    keys: Mapping[str, str], generation: int, *, revoked: bool
) -> tuple[dict[str, Any], int]:
    """The access file as the operator renders it, and its number of grants: a Token per
    load group (without `soak/revocable` while it is revoked) and, varying with
    `generation`, other Tokens that come and go as people request and delete them."""
    grants = [
        {"identity": IDENTITIES[group], "secretSha256": secret_digest(key), "roles": [ROLE]}
        for group, key in keys.items()
        if not (revoked and group == "revocable")
    ]
    for k in range(generation % 7 * 5):
        grants.append(
            {
                "identity": f"soak/token-{generation}-{k}",
                "secretSha256": hashlib.sha256(f"{generation}-{k}".encode()).hexdigest(),
                "roles": [ROLE],
                "expiresAt": "2099-01-01T00:00:00Z",
            }
        )
    doc = {
        "version": 1,
        "roles": [
            {
                "name": ROLE,
                "allow": {
                    "databases": {},
                    "databaseNames": [DB_NAME],
                    "databaseUsers": [DB_USER],
                },
            }
        ],
        "grants": grants,
    }
    return doc, len(grants)


# -- what the proxy shows ---------------------------------------------------------------


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """One sample of Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in (labels or {}).items())
    prefix = f"{name}{{{want}}} " if want else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass(frozen=True)
class Snapshot:
    """The proxy's resources at one moment, with only the steady sessions open."""

    at_s: float
    rss_bytes: int
    fds: int
    warm_idle: int
    sessions: int

    @property
    def fds_compared(self) -> int:
        """Descriptors less the warm upstream connections (a pool the config bounds)."""
        return self.fds - self.warm_idle

    def as_json(self) -> dict[str, Any]:
        return {
            "at_s": round(self.at_s, 1),
            "rss_mib": round(self.rss_bytes / MiB, 2),
            "fds": self.fds,
            "warm_idle": self.warm_idle,
            "fds_compared": self.fds_compared,
            "sessions": self.sessions,
        }


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError as exc:
        raise BenchError(f"cannot list the descriptors of process {pid}: {exc}") from exc


# -- the load ---------------------------------------------------------------------------


@dataclass
class Counts:
    logins: int = 0
    refused_as_expected: int = 0
    transactions: int = 0
    queries: int = 0
    copies: int = 0
    cancels: int = 0
    dropped: int = 0
    expected_errors: int = 0
    #: the expected errors by what the client saw (SQLSTATE, or the driver's error)
    expected_by_kind: dict[str, int] = field(default_factory=dict)
    unexpected_errors: int = 0
    samples: list[str] = field(default_factory=list)


def revocation_error(exc: BaseException) -> bool:
    """What a client of a Token being revoked may see: its session ended (57P01, "access
    revoked", or the closed connection when it was between queries), or its log-in
    refused (28P01: the secret is no longer a current one)."""
    state = getattr(exc, "sqlstate", None)
    if state == "57P01":
        return "access revoked" in str(exc)
    if state == "28P01":
        return True
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        return True
    if isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc):
        # asyncpg loses a FATAL that arrives while its connection is idle (PostgreSQL's own
        # included) and then refuses the next query this way.
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


CLIENT_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Load:
    """The steady sessions and the churning clients, in this process's event loop."""

    def __init__(self, port: int, ca_file: Path, keys: Mapping[str, str]) -> None:
        self.port = port
        self.ssl = ssl.create_default_context(cafile=str(ca_file))
        self.keys = keys
        self.counts = Counts()
        self.stopping = asyncio.Event()
        self.running = asyncio.Event()
        self.running.set()
        self.busy = 0
        #: (start, end or None) of each time `soak/revocable` was without its grant
        self.revoked_windows: list[tuple[float, float | None]] = []
        self.committed = [0] * STEADY
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, group: str, password: str | None = None) -> Any:
        return await asyncpg.connect(
            host=HOST,
            port=self.port,
            user=DB_USER,
            database=DB_NAME,
            password=self.keys[group] if password is None else password,
            ssl=self.ssl,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings={"application_name": f"soak-{group}"},
        )

    def unexpected(self, text: str) -> None:
        self.counts.unexpected_errors += 1
        if len(self.counts.samples) < ERROR_SAMPLES:
            self.counts.samples.append(f"{time.monotonic() - _STARTED:.1f}s {text}")
        say(f"UNEXPECTED: {text}")

    def in_revoked_window(self) -> bool:
        now = time.monotonic()
        return any(
            a <= now <= (b if b is not None else now) + GRACE for a, b in self.revoked_windows
        )

    def failed(self, group: str, what: str, exc: BaseException) -> None:
        if group == "revocable" and self.in_revoked_window() and revocation_error(exc):
            self.counts.expected_errors += 1
            kind = getattr(exc, "sqlstate", None) or type(exc).__name__
            self.counts.expected_by_kind[kind] = self.counts.expected_by_kind.get(kind, 0) + 1
        else:
            self.unexpected(f"{group}: {what}: {exc!r}")

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self.steady(i)) for i in range(STEADY)]
        for group, n in (("churn", CHURN), ("revocable", REVOCABLE)):
            self.tasks += [asyncio.ensure_future(self.churn(group, k)) for k in range(n)]

    async def stop(self) -> None:
        self.stopping.set()
        self.running.set()
        await asyncio.gather(*self.tasks)

    async def steady_connected(self, within: float) -> None:
        """Until every steady session has committed at least once."""
        await wait_for("the steady sessions to start", lambda: min(self.committed) > 0, within)

    async def pause(self) -> None:
        """Parks the churning clients between cycles, none holding a session."""
        self.running.clear()
        await wait_for("the churning clients to park", lambda: self.busy == 0, QUIESCE_TIMEOUT)

    def resume(self) -> None:
        self.running.set()

    async def steady(self, i: int) -> None:
        """One long-lived session: a transaction every 1/STEADY_RATE s, each checked."""
        row = i + 1
        try:
            conn = await self.connect("steady")
        except CLIENT_ERRORS as exc:
            self.unexpected(f"steady session {row}: log-in: {exc!r}")
            return
        self.counts.logins += 1
        period = 1 / STEADY_RATE
        next_at = time.monotonic() + random.uniform(0, period)
        try:
            while not self.stopping.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing: the next transaction is due then
                    continue
                next_at = max(next_at + period, time.monotonic())
                try:
                    async with conn.transaction():
                        n = await conn.fetchval(
                            "update soak_rows set n = n + 1 where id = $1 returning n", row
                        )
                except CLIENT_ERRORS as exc:
                    self.unexpected(f"steady session {row}: transaction: {exc!r}")
                    return
                if n != self.committed[i] + 1:
                    self.unexpected(f"steady session {row}: n={n}, {self.committed[i]} committed")
                    return
                self.committed[i] = n
                self.counts.transactions += 1
        finally:
            await _close(conn)

    async def churn(self, group: str, k: int) -> None:
        """Log in, a few queries, log out, CYCLE_RATE times a second, until stopped."""
        period = 1 / CYCLE_RATE
        next_at = time.monotonic() + random.uniform(0, period)
        cycle = k  # staggers the every-Nth extras between clients
        while not self.stopping.is_set():
            await self.running.wait()
            if self.stopping.is_set():
                return
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: the next cycle is due then
                continue
            next_at = max(next_at + period, time.monotonic())
            cycle += 1
            self.busy += 1
            try:
                await self.cycle(group, cycle)
            except Exception as exc:  # counted, so one client's surprise ends no run
                self.unexpected(f"{group}: {exc!r}")
            finally:
                self.busy -= 1

    async def cycle(self, group: str, cycle: int) -> None:
        if cycle % 25 == 0:
            try:
                conn = await self.connect(group, password="not-a-token-" + secrets.token_hex(8))
            except asyncpg.InvalidPasswordError:
                self.counts.refused_as_expected += 1
            except CLIENT_ERRORS as exc:
                self.unexpected(f"{group}: a wrong password: {exc!r}")
            else:
                await _close(conn)
                self.unexpected(f"{group}: a wrong password was let in")
            return
        try:
            conn = await self.connect(group)
        except CLIENT_ERRORS as exc:
            self.failed(group, "log-in", exc)
            return
        self.counts.logins += 1
        try:
            for j in range(random.randint(1, 8)):
                if await conn.fetchval("select $1::int + 1", j) != j + 1:
                    self.unexpected(f"{group}: select {j} + 1 answered wrong")
                self.counts.queries += 1
            await conn.execute("select 1; select 2")  # the simple protocol
            self.counts.queries += 1
            if cycle % 10 == 0:
                await self.copy(conn, group)
            if cycle % 15 == 0:
                await self.cancel(conn, group)
        except CLIENT_ERRORS as exc:
            self.failed(group, "query", exc)
        finally:
            if cycle % 7 == 0:
                conn.terminate()  # the client vanishes without a Terminate message
                self.counts.dropped += 1
            else:
                await _close(conn)

    async def copy(self, conn: Any, group: str) -> None:
        got = 0

        async def sink(chunk: bytes) -> None:
            nonlocal got
            got += len(chunk)

        await conn.copy_from_query(f"select generate_series(1, {COPY_ROWS})", output=sink)
        if got != COPY_BYTES:
            self.unexpected(f"{group}: COPY OUT gave {got} bytes, not {COPY_BYTES}")
        self.counts.copies += 1

    async def cancel(self, conn: Any, group: str) -> None:
        """A query the driver gives up on: it sends a CancelRequest (through the proxy)."""
        try:
            await conn.fetchval("select pg_sleep(60)", timeout=0.2)
        except (TimeoutError, asyncpg.QueryCanceledError):
            pass  # the latter when the server's 57014 beats asyncpg's own timeout
        else:
            self.unexpected(f"{group}: pg_sleep(60) ended within 0.2 s")
        # asyncpg sends the CancelRequest after raising: until the server's answer to it
        # has arrived, the connection refuses a new query (InternalClientError).
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            try:
                answer = await conn.fetchval("select 1")
                break
            except asyncpg.InternalClientError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # polling until the cancelled query is done
        if answer != 1:
            self.unexpected(f"{group}: select 1 after a cancel answered wrong")
        self.counts.cancels += 1


async def _close(conn: Any) -> None:
    """A clean close; when the proxy ended the session mid-operation, asyncpg refuses
    one (InternalClientError) and the connection is just dropped."""
    try:
        await conn.close(timeout=5)
    except (*CLIENT_ERRORS, asyncpg.InternalClientError):
        conn.terminate()


async def wait_for(what: str, condition: Callable[[], bool], within: float) -> None:
    """Polls `condition` until it holds; BenchError naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Polls an async `condition`; False (not raising) after `within` s."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


# -- the run ----------------------------------------------------------------------------


@dataclass
class Plan:
    seconds: float
    warm_up: float
    reload_every: float
    revoke_every: float

    @classmethod
    def of(cls, minutes: float, reload_every: float | None, revoke_every: float | None) -> Plan:
        seconds = minutes * 60
        return cls(
            seconds=seconds,
            warm_up=min(60.0, max(10.0, seconds / 8)),
            reload_every=reload_every or min(30.0, max(10.0, seconds / 12)),
            revoke_every=revoke_every or min(300.0, max(40.0, seconds / 3)),
        )


@dataclass
class SoakResult:
    plan: Plan
    start: Snapshot | None = None
    end: Snapshot | None = None
    reloads: int = 0
    revocations: int = 0
    revocation_s: list[float] = field(default_factory=list)
    #: what the revoked sentinel sessions saw, by kind
    sentinels: dict[str, int] = field(default_factory=dict)
    #: revocations after which the busy sentinel's upstream query was still running
    busy_upstream_lingering: int = 0
    failures: list[str] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    proxy: dict[str, float] = field(default_factory=dict)

    def growth(self, what: str) -> float | None:
        if self.start is None or self.end is None:
            return None
        a, b = (
            (self.start.rss_bytes, self.end.rss_bytes)
            if what == "rss"
            else (self.start.fds_compared, self.end.fds_compared)
        )
        return (b - a) / a if a else None

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_json(self) -> dict[str, Any]:
        counts = asdict(self.counts)
        samples = counts.pop("samples")
        rss, fds = self.growth("rss"), self.growth("fds")
        return {
            "ok": self.ok,
            "failures": self.failures,
            "minutes": round(self.plan.seconds / 60, 2),
            "warm_up_s": self.plan.warm_up,
            "reload_every_s": self.plan.reload_every,
            "revoke_every_s": self.plan.revoke_every,
            "start": self.start.as_json() if self.start else None,
            "end": self.end.as_json() if self.end else None,
            "rss_growth": None if rss is None else round(rss, 4),
            "fd_growth": None if fds is None else round(fds, 4),
            "reloads": self.reloads,
            "revocations": self.revocations,
            "revocation_s": {
                "max": round(max(self.revocation_s), 2) if self.revocation_s else None,
                "mean": round(sum(self.revocation_s) / len(self.revocation_s), 2)
                if self.revocation_s
                else None,
            },
            "revoked_sentinels_saw": self.sentinels,
            "busy_upstream_lingering": self.busy_upstream_lingering,
            **counts,
            "error_samples": samples,
            "proxy": self.proxy,
        }


class Soak:
    """The controller: the timeline of reloads and revocations, the checks, the samples."""

    def __init__(
        self,
        args: argparse.Namespace,
        pg: PostgresServer,
        proxy: Rdsgate,
        ca: LabCA,
        keys: Mapping[str, str],
    ) -> None:
        self.plan = Plan.of(args.minutes, args.reload_every, args.revoke_every)
        self.max_growth = args.max_growth
        self.pg = pg
        self.proxy = proxy
        self.ca = ca
        self.keys = keys
        self.generation = 0
        self.load = Load(proxy.port, ca.cert_file, self.keys)
        self.result = SoakResult(self.plan, counts=self.load.counts)
        self.admin: Any = None

    async def metrics(self) -> str:
        return (
            await asyncio.to_thread(http_get, f"http://{HOST}:{self.proxy.metrics_port}/metrics")
            or ""
        )

    async def publish(self, *, revoked: bool) -> None:
        """A new version of the access file, as the kubelet swaps it; returns when the
        proxy has applied it (its reload counter moved and its grant gauge agrees)."""
        before = sample(await self.metrics(), "rdsgate_access_reloads_total", {"result": "ok"})
        self.generation += 1
        doc, grants = access_doc(self.keys, self.generation, revoked=revoked)
        self.proxy.access.write({"access.yaml": yaml.safe_dump(doc, sort_keys=False)})

        async def applied() -> bool:
            text = await self.metrics()
            ok = sample(text, "rdsgate_access_reloads_total", {"result": "ok"})
            return ok > before and sample(text, "rdsgate_access_grants") == grants

        if not await wait_until(applied, APPLY_TIMEOUT):
            self.load.unexpected(
                f"access file version {self.generation} ({grants} grants) not applied "
                f"within {APPLY_TIMEOUT:g}s"
            )
        self.result.reloads += 1

    async def upstream_sessions(self, group: str, but: int = 0) -> int:
        value = await self.admin.fetchval(
            "select count(*) from pg_stat_activity where application_name = $1 and pid <> $2",
            f"soak-{group}",
            but,
        )
        return int(value)

    async def revoke_cycle(self) -> None:
        """Removes `soak/revocable`'s grant and checks what its clients see, then gives
        it back. Two sentinel sessions of that Token: one idle, whose next query must fail
        with 57P01 "access revoked" (or find the connection closed), and one inside a
        60 s query, which the proxy ends at most CLOSE_GRACE (5 s) later, as documented."""
        idle = await self.load.connect("revocable")
        busy = await self.load.connect("revocable")
        pid = await busy.fetchval("select pg_backend_pid()")
        query = asyncio.ensure_future(busy.fetchval("select pg_sleep(60)"))

        async def sleeping() -> bool:
            state = await self.admin.fetchval(
                "select wait_event from pg_stat_activity where pid = $1", pid
            )
            return bool(state == "PgSleep")

        if not await wait_until(sleeping, APPLY_TIMEOUT):
            raise BenchError("the revocable sentinel's pg_sleep never started")
        began = time.monotonic()
        self.load.revoked_windows.append((began, None))
        await self.publish(revoked=True)
        try:
            await asyncio.wait_for(query, APPLY_TIMEOUT)
        except (TimeoutError, *CLIENT_ERRORS) as exc:
            if isinstance(exc, TimeoutError) or not revocation_error(exc):
                self.load.unexpected(f"revoked session in a query: {exc!r}")
            else:
                self.result.revocation_s.append(time.monotonic() - began)
                self.note("busy", exc)
        else:
            self.load.unexpected("a revoked session's query ran to its end")
        finally:
            busy.terminate()
        try:
            await idle.fetchval("select 1")
        except CLIENT_ERRORS as exc:
            if revocation_error(exc):
                self.note("idle", exc)
            else:
                self.load.unexpected(f"revoked idle session: {exc!r}")
        else:
            self.load.unexpected("a revoked idle session still answered a query")
        finally:
            idle.terminate()

        # Every upstream session of the revoked Token must be gone; the busy sentinel's
        # too, as the proxy cancels the statement of a session it cuts.
        async def gone() -> bool:
            return await self.upstream_sessions("revocable", but=pid) == 0

        if not await wait_until(gone, APPLY_TIMEOUT):
            left = await self.admin.fetch(
                "select pid, state, wait_event, left(query, 40) as query, backend_start "
                "from pg_stat_activity where application_name = 'soak-revocable' and pid <> $1",
                pid,
            )
            self.load.unexpected(
                f"upstream sessions of the revoked Token remain: {[dict(r) for r in left]}"
            )

        async def busy_gone() -> bool:
            n = await self.admin.fetchval(
                "select count(*) from pg_stat_activity where pid = $1", pid
            )
            return not n

        if not await wait_until(busy_gone, APPLY_TIMEOUT):
            self.result.busy_upstream_lingering += 1
            self.load.unexpected("the cut session's statement still runs upstream")
        try:
            conn = await self.load.connect("revocable")
        except asyncpg.InvalidPasswordError:
            pass
        except CLIENT_ERRORS as exc:
            self.load.unexpected(f"a revoked Token's log-in failed with {exc!r}, not 28P01")
        else:
            await _close(conn)
            self.load.unexpected("a revoked Token's secret still logged in")

        await self.publish(revoked=False)
        try:
            conn = await self.load.connect("revocable")
            if await conn.fetchval("select 1") != 1:
                self.load.unexpected("select 1 after the re-grant answered wrong")
            await _close(conn)
        except CLIENT_ERRORS as exc:
            self.load.unexpected(f"log-in after the re-grant failed: {exc!r}")
        self.load.revoked_windows[-1] = (began, time.monotonic())
        self.result.revocations += 1

    def note(self, sentinel: str, exc: BaseException) -> None:
        """What a revoked sentinel session saw, counted by kind for the report."""
        kind = f"{sentinel}: {getattr(exc, 'sqlstate', None) or type(exc).__name__}"
        self.result.sentinels[kind] = self.result.sentinels.get(kind, 0) + 1

    async def snapshot(self) -> Snapshot:
        """RSS and descriptors with the churn parked and only the steady sessions open;
        read until two readings agree, so no log-in or warm fill is half done."""
        await self.load.pause()
        try:
            pid = self.proxy.service.pid

            async def settled() -> bool:
                text = await self.metrics()
                return sample(text, "rdsgate_connections_active") == STEADY

            if not await wait_until(settled, QUIESCE_TIMEOUT):
                raise BenchError("the proxy did not settle to the steady sessions alone")
            previous: tuple[int, int] | None = None
            deadline = time.monotonic() + QUIESCE_TIMEOUT
            while True:
                warm = int(sample(await self.metrics(), "rdsgate_upstream_warm_idle"))
                reading = (open_fds(pid), warm)
                if reading == previous or time.monotonic() > deadline:
                    break
                previous = reading
                await asyncio.sleep(0.5)  # the readings are compared half a second apart
            return Snapshot(
                at_s=time.monotonic() - self.t0,
                rss_bytes=rss_bytes(pid),
                fds=reading[0],
                warm_idle=reading[1],
                sessions=STEADY,
            )
        finally:
            self.load.resume()

    async def progress(self) -> None:
        c = self.load.counts
        pid = self.proxy.service.pid
        text = await self.metrics()
        say(
            f"{time.monotonic() - self.t0:6.0f}/{self.plan.seconds:.0f}s  "
            f"log-ins {c.logins:,}  txns {c.transactions:,}  queries {c.queries:,}  "
            f"reloads {self.result.reloads}  revocations {self.result.revocations}  "
            f"expected errors {c.expected_errors}  unexpected {c.unexpected_errors}  "
            f"open {sample(text, 'rdsgate_connections_active'):.0f}  "
            f"RSS {rss_bytes(pid) / MiB:.1f} MiB  fds {open_fds(pid)}"
        )

    async def run(self) -> SoakResult:
        self.t0 = time.monotonic()
        self.admin = await asyncpg.connect(
            host=HOST,
            port=self.pg.port,
            user="postgres",
            database=DB_NAME,
            ssl=ssl.create_default_context(cafile=str(self.ca.cert_file)),
        )
        try:
            await self._run()
        finally:
            await self.load.stop()
            await self.admin.close()
        await self.final_checks()
        return self.result

    async def _run(self) -> None:
        plan = self.plan
        say(
            f"soak: {plan.seconds / 60:g} min, warm-up {plan.warm_up:g} s, reload every "
            f"{plan.reload_every:g} s, revocation every {plan.revoke_every:g} s"
        )
        self.load.start()
        await self.load.steady_connected(APPLY_TIMEOUT)
        # The warm-up goes through every path once: a reload, a revocation.
        await self.publish(revoked=False)
        await self.revoke_cycle()
        await asyncio.sleep(max(0.0, self.t0 + plan.warm_up - time.monotonic()))
        self.result.start = await self.snapshot()
        say(f"start (after warm-up): {self.result.start.as_json()}")
        now = time.monotonic()
        next_reload, next_revoke = now + plan.reload_every, now + plan.revoke_every
        next_progress = now + PROGRESS_EVERY
        end = self.t0 + plan.seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_revoke:
                await self.revoke_cycle()
                next_revoke += plan.revoke_every
                next_reload = time.monotonic() + plan.reload_every
            elif now >= next_reload:
                await self.publish(revoked=False)
                next_reload += plan.reload_every
            if time.monotonic() >= next_progress:
                await self.progress()
                next_progress += PROGRESS_EVERY
            self.proxy.service.check_alive()
            upcoming = min(next_reload, next_revoke, next_progress, end)
            await asyncio.sleep(max(0.0, upcoming - time.monotonic()))  # the timeline's next point
        self.result.end = await self.snapshot()
        say(f"end: {self.result.end.as_json()}")

    async def final_checks(self) -> None:
        result, counts = self.result, self.load.counts
        rows = await asyncio.to_thread(
            self.pg.execute, "select id, n from soak_rows order by id", DB_NAME
        )
        found = {int(i): int(n) for i, n in (line.split("|") for line in rows.splitlines())}
        want = {i + 1: n for i, n in enumerate(self.load.committed)}
        if found != want:
            result.failures.append(f"steady rows {found} != the commits acknowledged {want}")
        text = await self.metrics()
        result.proxy = {
            "sessions_total": sample(text, "rdsgate_sessions_total"),
            "ended_revoked": sample(text, "rdsgate_sessions_ended_total", {"reason": "revoked"}),
            "reloads_ok": sample(text, "rdsgate_access_reloads_total", {"result": "ok"}),
            "reloads_invalid": sample(text, "rdsgate_access_reloads_total", {"result": "invalid"}),
        }
        if result.proxy["reloads_invalid"]:
            result.failures.append("the proxy rejected an access file it was given")
        audit = self.proxy.service.log_file.with_name(
            self.proxy.service.log_file.stem + "-audit.log"
        )
        revoked_events = sum(
            1
            for line in audit.read_text(errors="replace").splitlines()
            if '"session.revoked"' in line and IDENTITIES["revocable"] in line
        )
        result.proxy["audit_session_revoked"] = revoked_events
        if revoked_events < result.revocations:
            result.failures.append(
                f"{revoked_events} session.revoked audit events for {result.revocations} "
                "revocations"
            )
        log = self.proxy.service.log_file.read_text(errors="replace")
        tracebacks = len(re.findall(r"^Traceback", log, re.MULTILINE))
        if tracebacks:
            result.failures.append(f"{tracebacks} Tracebacks in the proxy's log")
        if counts.unexpected_errors:
            result.failures.append(f"{counts.unexpected_errors} unexpected errors")
        if not result.reloads or not result.revocations:
            result.failures.append("the run had no reload or no revocation")
        for what in ("rss", "fds"):
            growth = result.growth(what)
            if growth is None:
                result.failures.append(f"no {what} reading at the start and the end")
            elif growth > self.max_growth:
                result.failures.append(f"{what} grew by {growth:.1%} (limit {self.max_growth:.0%})")


def run_soak(args: argparse.Namespace) -> SoakResult:
    work = Path(tempfile.mkdtemp(prefix="rdsgate-soak-"))
    say(f"work dir: {work} (removed on exit)")
    try:
        with contextlib.ExitStack() as stack:
            ca = LabCA.create(work, "rdsgate soak CA")
            say("starting PostgreSQL")
            # A backend whose client (the proxy) went away mid-query notices within 1 s.
            pg = PostgresServer(
                ca=ca.keypair,
                host_auth="trust",
                settings={"client_connection_check_interval": "1s"},
            )
            stack.enter_context(pg)
            pg.create_role(DB_USER)
            pg.create_database(DB_NAME, owner=DB_USER)
            pg.execute(
                f"set role {DB_USER};\n"
                "create table soak_rows (id int primary key, n bigint not null default 0);\n"
                f"insert into soak_rows (id) select generate_series(1, {STEADY});",
                dbname=DB_NAME,
            )
            say("starting rdsgate-proxy")
            # The Tokens' secrets; the proxy starts with the first version of the file.
            keys = {group: secrets.token_urlsafe(24) for group in IDENTITIES}
            proxy = start_rdsgate(
                stack,
                work,
                ca,
                keys["steady"],
                upstream=f"localhost:{pg.port}",
                aws={"region": "eu-west-1"},
                aws_env=STATIC_AWS_ENV,
                access_doc=access_doc(keys, 0, revoked=False)[0],
            )
            soak = Soak(args, pg, proxy, ca, keys)
            try:
                import uvloop

                return uvloop.run(soak.run())
            except ImportError:
                return asyncio.run(soak.run())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(result: SoakResult) -> None:
    doc = result.as_json()
    print(f"soak {doc['minutes']:g} min: {'OK' if result.ok else 'FAILED'}")
    for key in ("start", "end"):
        print(f"  {key:<5} {doc[key]}")
    print(f"  RSS growth {doc['rss_growth']}, descriptor growth {doc['fd_growth']}")
    print(
        f"  reloads {doc['reloads']}, revocations {doc['revocations']} "
        f"(session ended {doc['revocation_s']} s after the file changed)"
    )
    print(
        f"  log-ins {doc['logins']:,}, transactions {doc['transactions']:,}, queries "
        f"{doc['queries']:,}, COPYs {doc['copies']}, cancels {doc['cancels']}, dropped "
        f"{doc['dropped']}, refused wrong passwords {doc['refused_as_expected']}"
    )
    print(f"  errors: expected {doc['expected_errors']}, unexpected {doc['unexpected_errors']}")
    for failure in result.failures:
        print(f"  FAILURE: {failure}")
    for s in doc["error_samples"]:
        print(f"    {s}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=MINUTES, help="default %(default)s")
    p.add_argument("--reload-every", type=float, help="seconds (default: scaled, see above)")
    p.add_argument("--revoke-every", type=float, help="seconds (default: scaled, see above)")
    p.add_argument(
        "--max-growth", type=float, default=MAX_GROWTH, help="of RSS and descriptors (0.10)"
    )
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with signals_interrupt():
            result = run_soak(args)
    except KeyboardInterrupt:
        say("interrupted: everything the soak started was stopped")
        return 130
    except (BenchError, PostgresNotInstalled, PostgresError) as exc:
        say(f"error: {exc}")
        return 1
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        render(result)
    if not result.ok:
        say(f"FAILED: {'; '.join(result.failures)}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`python bench/load.py`: many active sessions and large COPYs through one rdsgate-proxy,
against the same load straight to PostgreSQL in the same run (issue 14, load and capacity).

1. **Active sessions** (`--sessions`, default 1,000, each running `--transactions`, default
   100): every session logs in (TLS; through rdsgate with a Token secret as the password),
   and once all of them are in, each runs its transactions back to back:
   `BEGIN`, `UPDATE load_accounts SET n = n + 1 WHERE id = $1 RETURNING n` on a row of its
   own, `COMMIT`. A transaction counts only if `n` comes back as the number that session
   has committed, so a lost commit, or an answer relayed to the wrong session, is an error;
   so is any exception; and afterwards every row must show all its session's commits. The
   load runs direct (TLS, `trust`) and then through rdsgate, after a short uncounted
   warm-up of each. Reported: errors (0 or the run fails), transactions/s, and the p50 and
   p99 of the UPDATE's round trip ("query") and of the whole transaction, in ms. With every
   session busy at once the latency is mostly queueing (Little's law: sessions / tps), on
   both sides alike; that is what 1,000 busy clients see.
2. **COPY** (`--copy-rows`, default 10^6 rows of about 104 bytes) while `--copy-background`
   (default 200) other sessions through the same rdsgate each run a primary-key select
   `--copy-background-rate` times a second: `COPY (SELECT ... ORDER BY id) TO STDOUT`
   direct, then through rdsgate; then `COPY ... FROM STDIN` of those bytes (64 kB CopyData
   messages, as drivers send) through rdsgate, then direct, each into a table of its own.
   The md5 of both COPY OUT streams must be equal, and so must the md5 of each loaded table
   read back and the source's. Reported: MB/s (10^6 bytes) of each COPY, and the background
   sessions' latency while a COPY ran through rdsgate and while one ran direct.

rdsgate runs as `bench/run.py` runs it: client TLS, an access file granting one Token,
default audit (every query a `session.query` line, into a file), IAM tokens signed
locally with static fake keys, PostgreSQL (trust) as its upstream, so only rdsgate's own
cost is measured. PostgreSQL gets `max_connections` for every session at once.

The clients are asyncpg (on uvloop) in `--client-processes` processes (default 2, the
sessions split between them) so that the client is not the bottleneck of the direct run;
the COPYs run in this process. Progress goes to stderr; `--json` prints only the results
on stdout. `--quick`: 200 sessions x 20 transactions, 10^5 rows, 50 background sessions.
Exit status 1 when any error happened or a checksum differs. On a machine shared with
other work the figures are indicative; the ratios, measured in one run, are what compare.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import multiprocessing.synchronize
import os
import queue
import random
import secrets
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

if __package__ in (None, ""):
    # `python bench/load.py`: the repository root makes `bench` importable (appended, so
    # no directory of the repository shadows a module of the same name).
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.rig import (
    DB_NAME,
    DB_USER,
    HOST,
    STATIC_AWS_ENV,
    BenchError,
    Rdsgate,
    raise_open_files_limit,
    signals_interrupt,
    start_rdsgate,
)
from rdsgate.lab.postgres import LabCA, PostgresError, PostgresNotInstalled, PostgresServer

SESSIONS = 1000
TRANSACTIONS = 100
COPY_ROWS = 1_000_000
COPY_BACKGROUND = 200
COPY_BACKGROUND_RATE = 5.0
CLIENT_PROCESSES = 2
WARM_UP_SESSIONS = 50
WARM_UP_TRANSACTIONS = 10
#: Log-ins in flight per client process: a burst of 1,000 TLS handshakes would only queue.
LOGIN_CONCURRENCY = 16
CONNECT_TIMEOUT = 60.0
COMMAND_TIMEOUT = 300.0
COPY_CHUNK = 64 * 1024
MB = 1e6
PROGRESS_EVERY = 2.0
ERROR_SAMPLES = 20
#: Upstream connections rdsgate may keep besides its sessions (its warm pool's maximum).
WARM_POOL_MAX = 32
SETTLE_TIMEOUT = 60.0
WORKER_START_TIMEOUT = 120.0

UPDATE_SQL = "update load_accounts set n = n + 1 where id = $1 returning n"
SELECT_SQL = "select n from load_accounts where id = $1"
#: asyncpg wraps it in `COPY (...) TO STDOUT`.
COPY_OUT_SQL = "select id, payload from {table} order by id"

#: What a client can see go wrong: the server's errors, the driver's, the network's.
CLIENT_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

T = TypeVar("T")


def say(text: str) -> None:
    """A progress line on stderr, stamped with the seconds since the run began."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {text}", file=sys.stderr, flush=True)


_STARTED = time.monotonic()


# -- statistics -------------------------------------------------------------------------


def latency_ms(samples: Sequence[float]) -> dict[str, float | int]:
    """p50, p99 and mean of samples in seconds, as ms; `n` the sample count."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0, "n": 0}
    if len(samples) > 1:
        p99 = statistics.quantiles(samples, n=100, method="inclusive")[98]
    else:
        p99 = samples[0]
    return {
        "p50": round(statistics.median(samples) * 1000, 2),
        "p99": round(p99 * 1000, 2),
        "mean": round(statistics.fmean(samples) * 1000, 2),
        "n": len(samples),
    }


# -- client processes -------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where a client logs in: PostgreSQL direct, or rdsgate with a Token secret."""

    name: str
    port: int
    password: str | None
    ca_file: str

    async def connect(self) -> Any:
        return await asyncpg.connect(
            host=HOST,
            port=self.port,
            user=DB_USER,
            database=DB_NAME,
            password=self.password,
            ssl=ssl.create_default_context(cafile=self.ca_file),
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
        )


@dataclass(frozen=True)
class Job:
    """What one client process does: `count` sessions on rows `first_id`..., each running
    `transactions` transactions, or (0) a paced select `rate` times a second until told
    to stop."""

    endpoint: Endpoint
    first_id: int
    count: int
    transactions: int
    rate: float = 0.0


@dataclass
class WorkerResult:
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    transactions: int = 0
    query_s: array.array[float] = field(default_factory=lambda: array.array("d"))
    txn_s: array.array[float] = field(default_factory=lambda: array.array("d"))
    #: background: the monotonic clock (system-wide) when each query's answer arrived
    stamps: array.array[float] = field(default_factory=lambda: array.array("d"))
    #: the monotonic clock when the first log-in began and when the last one ended
    login_began: float = 0.0
    login_ended: float = 0.0
    finished: float = 0.0

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.samples) < ERROR_SAMPLES:
            self.samples.append(text)


@dataclass
class Signals:
    """What the parent and a client process share."""

    connected: Synchronized[int]
    done: Synchronized[int]
    ready: multiprocessing.synchronize.Event
    go: multiprocessing.synchronize.Event
    stop: multiprocessing.synchronize.Event


def _worker(job: Job, sig: Signals, results: multiprocessing.queues.Queue[WorkerResult]) -> None:
    """A client process: Ctrl-C is the parent's to handle (it stops this process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        result = uvloop.run(_work(job, sig))
    except ImportError:
        result = asyncio.run(_work(job, sig))
    except BaseException as exc:  # reported, not raised: the parent counts it
        result = WorkerResult()
        result.error(f"client process failed: {exc!r}")
    results.put(result)


async def _work(job: Job, sig: Signals) -> WorkerResult:
    result = WorkerResult()
    parent = os.getppid()
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def login(ident: int) -> Any:
        async with gate:
            try:
                conn = await job.endpoint.connect()
            except CLIENT_ERRORS as exc:
                result.error(f"session {ident}: log-in failed: {exc!r}")
                return None
        sig.connected.value += 1
        return conn

    idents = range(job.first_id, job.first_id + job.count)
    result.login_began = time.monotonic()
    conns = await asyncio.gather(*(login(i) for i in idents))
    result.login_ended = time.monotonic()
    sig.ready.set()
    while not await asyncio.to_thread(sig.go.wait, 0.5):
        if os.getppid() != parent:
            return result
    stopping = asyncio.Event()

    async def watch() -> None:
        """Publishes the count done; notices the stop signal and an orphaned process."""
        while True:
            sig.done.value = result.transactions
            if sig.stop.is_set() or os.getppid() != parent:
                stopping.set()
            await asyncio.sleep(0.1)

    async def transactions(conn: Any, ident: int) -> None:
        for j in range(job.transactions):
            t0 = time.perf_counter()
            try:
                async with conn.transaction():
                    t1 = time.perf_counter()
                    n = await conn.fetchval(UPDATE_SQL, ident)
                    t2 = time.perf_counter()
            except CLIENT_ERRORS as exc:
                result.error(f"session {ident}, transaction {j + 1}: {exc!r}")
                return
            t3 = time.perf_counter()
            if n != j + 1:
                result.error(f"session {ident}, transaction {j + 1}: the row said n={n}")
                return
            result.query_s.append(t2 - t1)
            result.txn_s.append(t3 - t0)
            result.transactions += 1

    async def background(conn: Any, ident: int) -> None:
        period = 1 / job.rate
        next_at = time.monotonic() + random.uniform(0, period)
        while not stopping.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: the next query is due then
                continue
            next_at = max(next_at + period, time.monotonic())
            t0 = time.perf_counter()
            try:
                n = await conn.fetchval(SELECT_SQL, ident)
            except CLIENT_ERRORS as exc:
                result.error(f"background session {ident}: {exc!r}")
                return
            result.query_s.append(time.perf_counter() - t0)
            result.stamps.append(time.monotonic())
            result.transactions += 1
            if n is None:
                result.error(f"background session {ident}: its row is missing")
                return

    watcher = asyncio.ensure_future(watch())
    run = transactions if job.transactions else background
    try:
        await asyncio.gather(*(run(c, i) for c, i in zip(conns, idents, strict=True) if c))
        result.finished = time.monotonic()
    finally:
        watcher.cancel()
        sig.done.value = result.transactions
        await asyncio.gather(
            *(c.close(timeout=10) for c in conns if c is not None), return_exceptions=True
        )
    return result


class Clients:
    """Client processes sharing one job's sessions, started together and released at once."""

    def __init__(self, job: Job, processes: int) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.results: multiprocessing.queues.Queue[WorkerResult] = self.ctx.Queue()
        self.go = self.ctx.Event()
        self.stop = self.ctx.Event()
        self.sessions = job.count
        self.procs: list[multiprocessing.context.SpawnProcess] = []
        self.signals: list[Signals] = []
        processes = max(1, min(processes, job.count))
        first = job.first_id
        for k in range(processes):
            count = job.count // processes + (1 if k < job.count % processes else 0)
            sub = Job(job.endpoint, first, count, job.transactions, job.rate)
            first += count
            sig = Signals(
                self.ctx.Value("q", 0, lock=False),
                self.ctx.Value("q", 0, lock=False),
                self.ctx.Event(),
                self.go,
                self.stop,
            )
            proc = self.ctx.Process(target=_worker, args=(sub, sig, self.results), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.signals.append(sig)
        self.released = 0.0

    @property
    def connected(self) -> int:
        return sum(s.connected.value for s in self.signals)

    @property
    def done(self) -> int:
        return sum(s.done.value for s in self.signals)

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.exitcode not in (None, 0):
                raise BenchError(f"a client process exited with status {proc.exitcode}")

    def wait_ready(self, label: str) -> None:
        """Until every session has logged in (or failed to)."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT + self.sessions * 0.1
        shown = 0.0
        while not all(s.ready.wait(0.2) for s in self.signals):
            self._check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: sessions still logging in after the deadline")
            if time.monotonic() - shown > PROGRESS_EVERY:
                shown = time.monotonic()
                say(f"{label}: {self.connected}/{self.sessions} sessions logged in")

    def release(self) -> float:
        self.released = time.monotonic()
        self.go.set()
        return self.released

    def collect(self, label: str, total: int | None = None) -> list[WorkerResult]:
        """Every process's result (after `stop` for background jobs); progress meanwhile."""
        got: list[WorkerResult] = []
        shown = time.monotonic()
        while len(got) < len(self.procs):
            try:
                got.append(self.results.get(timeout=0.2))
            except queue.Empty:
                if all(not p.is_alive() for p in self.procs) and self.results.empty():
                    raise BenchError(f"{label}: a client process ended without a result") from None
            if total and time.monotonic() - shown > PROGRESS_EVERY:
                shown = time.monotonic()
                say(f"{label}: {self.done:,}/{total:,} transactions")
        for proc in self.procs:
            proc.join(10)
        return got

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def clients(job: Job, processes: int) -> Iterator[Clients]:
    group = Clients(job, processes)
    try:
        yield group
    finally:
        group.close()


# -- the active-sessions measurement ----------------------------------------------------


@dataclass
class Phase:
    """One target's run of the active-sessions load."""

    target: str
    sessions: int
    transactions: int
    login_s: float
    seconds: float
    results: list[WorkerResult]
    row_errors: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results) + len(self.row_errors)

    @property
    def samples(self) -> list[str]:
        return [s for r in self.results for s in r.samples] + self.row_errors

    @property
    def done(self) -> int:
        return sum(r.transactions for r in self.results)

    def as_json(self) -> dict[str, Any]:
        query = [x for r in self.results for x in r.query_s]
        txn = [x for r in self.results for x in r.txn_s]
        return {
            "errors": self.errors,
            "transactions": self.done,
            "seconds": round(self.seconds, 2),
            "tps": round(self.done / self.seconds, 1) if self.seconds else 0.0,
            "login_seconds": round(self.login_s, 2),
            "query_ms": latency_ms(query),
            "transaction_ms": latency_ms(txn),
        }


def run_phase(
    pg: PostgresServer, endpoint: Endpoint, sessions: int, transactions: int, processes: int
) -> Phase:
    label = f"{endpoint.name} {sessions}x{transactions}"
    reset = f"update load_accounts set n = 0 where id <= {sessions}"  # noqa: S608 - an int
    pg.execute(reset, dbname=DB_NAME)
    with clients(Job(endpoint, 1, sessions, transactions), processes) as group:
        group.wait_ready(label)
        say(f"{label}: {group.connected}/{sessions} logged in; go")
        released = group.release()
        results = group.collect(label, sessions * transactions)
    finished = max((r.finished for r in results), default=released)
    login_s = max(r.login_ended for r in results) - min(r.login_began for r in results)
    phase = Phase(endpoint.name, sessions, transactions, login_s, finished - released, results)
    short = pg.execute(
        f"select id, n from load_accounts where id <= {sessions} and n <> {transactions} "  # noqa: S608
        "order by id limit 5",
        dbname=DB_NAME,
    )
    if short and not phase.errors:
        phase.row_errors.append(f"rows without all their commits (id|n): {short}")
    say(f"{label}: {phase.done:,} transactions in {phase.seconds:.1f} s, {phase.errors} errors")
    return phase


def wait_settled(pg: PostgresServer, proxy: Rdsgate) -> None:
    """Until rdsgate has no session open and PostgreSQL no more backends than its warm
    pool can hold, so the next phase starts with every connection slot free."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    sql = "select count(*) from pg_stat_activity where backend_type = 'client backend'"
    while True:
        backends = int(pg.execute(sql))
        active = proxy.metric("rdsgate_connections_active")
        if active == 0 and backends <= WARM_POOL_MAX:
            return
        proxy.service.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"sessions did not end within {SETTLE_TIMEOUT:g}s: rdsgate shows {active} open, "
                f"PostgreSQL {backends} backends"
            )
        time.sleep(0.1)  # polling two counters; nothing to wait on


# -- the COPY measurement ---------------------------------------------------------------


@dataclass(frozen=True)
class Copied:
    seconds: float
    nbytes: int
    md5: str
    rows: int

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds if self.seconds else 0.0


async def copy_out(endpoint: Endpoint, table: str, keep: bytearray | None = None) -> Copied:
    """`COPY (SELECT ... ORDER BY id) TO STDOUT`, hashed as it arrives (kept when asked)."""
    conn = await endpoint.connect()
    try:
        digest = hashlib.md5(usedforsecurity=False)
        nbytes = 0

        async def sink(chunk: bytes) -> None:
            nonlocal nbytes
            digest.update(chunk)
            nbytes += len(chunk)
            if keep is not None:
                keep.extend(chunk)

        t0 = time.perf_counter()
        status = await conn.copy_from_query(COPY_OUT_SQL.format(table=table), output=sink)
        seconds = time.perf_counter() - t0
    finally:
        await conn.close(timeout=10)
    return Copied(seconds, nbytes, digest.hexdigest(), int(status.split()[-1]))


async def copy_in(endpoint: Endpoint, table: str, data: bytes) -> Copied:
    """`COPY table FROM STDIN` of `data` in 64 kB CopyData messages."""

    async def chunks() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(view), COPY_CHUNK):
            yield bytes(view[start : start + COPY_CHUNK])

    conn = await endpoint.connect()
    try:
        t0 = time.perf_counter()
        status = await conn.copy_to_table(table, source=chunks(), format="text")
        seconds = time.perf_counter() - t0
    finally:
        await conn.close(timeout=10)
    return Copied(seconds, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest(),
                  int(status.split()[-1]))  # fmt: skip


def _run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    try:
        import uvloop

        return uvloop.run(wrapper())
    except ImportError:
        return asyncio.run(wrapper())


@dataclass
class CopyResult:
    rows: int
    source_md5: str
    out: dict[str, Copied]
    into: dict[str, Copied]
    loaded_md5: dict[str, str]
    loaded_rows: dict[str, int]
    windows: dict[str, list[tuple[float, float]]]
    background: list[WorkerResult]
    background_sessions: int
    background_rate: float
    problems: list[str] = field(default_factory=list)

    @property
    def checksums_equal(self) -> bool:
        md5s = {c.md5 for c in self.out.values()} | set(self.loaded_md5.values())
        return md5s == {self.source_md5}

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.background) + len(self.problems)

    def background_during(self, target: str) -> dict[str, float | int]:
        spans = self.windows.get(target, [])
        lat = [
            q
            for r in self.background
            for q, t in zip(r.query_s, r.stamps, strict=True)
            if any(a <= t <= b for a, b in spans)
        ]
        return latency_ms(lat)

    def as_json(self) -> dict[str, Any]:
        nbytes = next(iter(self.out.values())).nbytes if self.out else 0
        return {
            "rows": self.rows,
            "bytes": nbytes,
            "checksums_equal": self.checksums_equal,
            "source_md5": self.source_md5,
            "out_md5": {t: c.md5 for t, c in self.out.items()},
            "in_md5": self.loaded_md5,
            "out_mb_s": {t: round(c.mb_s, 1) for t, c in self.out.items()},
            "in_mb_s": {t: round(c.mb_s, 1) for t, c in self.into.items()},
            "errors": self.errors,
            "background": {
                "sessions": self.background_sessions,
                "rate_per_session": self.background_rate,
                "errors": sum(r.errors for r in self.background),
                "queries": sum(r.transactions for r in self.background),
                "query_ms_during_copy": {
                    t: self.background_during(t) for t in ("direct", "rdsgate")
                },
            },
        }


def run_copy(
    pg: PostgresServer,
    direct: Endpoint,
    rdsgate: Endpoint,
    rows: int,
    background: int,
    rate: float,
    processes: int,
) -> CopyResult:
    say(f"COPY: creating the source table ({rows:,} rows)")
    pg.execute(
        f"set role {DB_USER};\n"  # noqa: S608 - constants and an int
        "create table copy_src (id int primary key, payload text not null);\n"
        "insert into copy_src select i, repeat(md5(i::text), 3) "
        f"from generate_series(1, {rows}) i;\n"
        "create table copy_in_direct (like copy_src);\n"
        "create table copy_in_rdsgate (like copy_src);\n"
        "vacuum analyze copy_src;",
        dbname=DB_NAME,
    )
    windows: dict[str, list[tuple[float, float]]] = {"direct": [], "rdsgate": []}
    out: dict[str, Copied] = {}
    into: dict[str, Copied] = {}
    data = bytearray()

    def timed(target: str, what: str, run: Callable[[], Awaitable[Copied]]) -> Copied:
        say(f"COPY: {what} {target} ...")
        start = time.monotonic()
        try:
            copied = _run(run())
        except CLIENT_ERRORS as exc:
            raise BenchError(f"COPY {what} {target} failed: {exc!r}") from exc
        windows[target].append((start, time.monotonic()))
        say(f"COPY: {what} {target}: {copied.nbytes / MB:,.1f} MB at {copied.mb_s:,.1f} MB/s")
        return copied

    job = Job(rdsgate, 1, background, 0, rate)
    with clients(job, processes) if background else contextlib.nullcontext() as group:
        if group is not None:
            group.wait_ready(f"COPY background {background} sessions")
            group.release()
            say(f"COPY: {group.connected} background sessions running")
        out["direct"] = timed("direct", "out", lambda: copy_out(direct, "copy_src", data))
        out["rdsgate"] = timed("rdsgate", "out", lambda: copy_out(rdsgate, "copy_src"))
        payload = bytes(data)
        data.clear()
        into["rdsgate"] = timed(
            "rdsgate", "in", lambda: copy_in(rdsgate, "copy_in_rdsgate", payload)
        )
        into["direct"] = timed("direct", "in", lambda: copy_in(direct, "copy_in_direct", payload))
        results: list[WorkerResult] = []
        if group is not None:
            group.stop.set()
            results = group.collect("COPY background")
    say("COPY: reading both loaded tables back (direct) to compare")
    loaded = {t: _run(copy_out(direct, f"copy_in_{t}")) for t in ("direct", "rdsgate")}
    result = CopyResult(
        rows=rows,
        source_md5=out["direct"].md5,
        out=out,
        into=into,
        loaded_md5={t: c.md5 for t, c in loaded.items()},
        loaded_rows={t: c.rows for t, c in loaded.items()},
        windows=windows,
        background=results,
        background_sessions=background,
        background_rate=rate,
    )
    for name, copied in [*(("out " + t, c) for t, c in out.items()),
                         *(("in " + t, c) for t, c in into.items()),
                         *(("loaded " + t, c) for t, c in loaded.items())]:  # fmt: skip
        if copied.rows != rows:
            result.problems.append(f"COPY {name}: {copied.rows} rows, not {rows}")
    if not result.checksums_equal:
        result.problems.append(
            f"checksums differ: source {result.source_md5}, out "
            f"{ {t: c.md5 for t, c in out.items()} }, loaded {result.loaded_md5}"
        )
    return result


# -- the run ----------------------------------------------------------------------------


@dataclass
class LoadResults:
    sessions: int
    transactions: int
    processes: int
    phases: dict[str, Phase] = field(default_factory=dict)
    copy: CopyResult | None = None

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.phases.values()) + (self.copy.errors if self.copy else 0)

    @property
    def samples(self) -> list[str]:
        found = [s for p in self.phases.values() for s in p.samples]
        if self.copy is not None:
            found += [s for r in self.copy.background for s in r.samples] + self.copy.problems
        return found[:ERROR_SAMPLES]

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "sessions": self.sessions,
            "transactions_per_session": self.transactions,
            "client_processes": self.processes,
            "active": {t: p.as_json() for t, p in self.phases.items()},
        }
        if self.copy is not None:
            doc["copy"] = self.copy.as_json()
        doc["errors"] = self.errors
        doc["error_samples"] = self.samples
        return doc


def start_postgres(stack: contextlib.ExitStack, ca: LabCA, connections: int) -> PostgresServer:
    """A throwaway PostgreSQL with a connection slot for every session at once (plus the
    warm pool and some headroom); `trust` lets rdsgate log in with its IAM token."""
    pg = PostgresServer(
        ca=ca.keypair,
        host_auth="trust",
        max_connections=connections,
        settings={"shared_buffers": "256MB", "max_wal_size": "4GB"},
    )
    stack.enter_context(pg)
    pg.create_role(DB_USER)
    pg.create_database(DB_NAME, owner=DB_USER)
    return pg


def measure(args: argparse.Namespace) -> LoadResults:
    results = LoadResults(args.sessions, args.transactions, args.client_processes)
    work = Path(tempfile.mkdtemp(prefix="rdsgate-load-"))
    say(f"work dir: {work} (removed on exit)")
    biggest = max(args.sessions, args.copy_background + 4, WARM_UP_SESSIONS)
    try:
        with contextlib.ExitStack() as stack:
            # rdsgate holds two descriptors a session; each client process one.
            raise_open_files_limit(2 * biggest + 1024)
            ca = LabCA.create(work, "rdsgate load CA")
            say(f"starting PostgreSQL (max_connections {biggest + WARM_POOL_MAX + 50})")
            pg = start_postgres(stack, ca, biggest + WARM_POOL_MAX + 50)
            pg.execute(
                f"set role {DB_USER};\n"
                "create table load_accounts (id int primary key, n bigint not null default 0);\n"
                f"insert into load_accounts (id) select generate_series(1, {biggest});",
                dbname=DB_NAME,
            )
            secret = secrets.token_urlsafe(24)
            say("starting rdsgate-proxy (PostgreSQL as its upstream)")
            proxy = start_rdsgate(
                stack,
                work,
                ca,
                secret,
                upstream=f"localhost:{pg.port}",
                aws={"region": "eu-west-1"},
                aws_env=STATIC_AWS_ENV,
                limits={"maxConnections": biggest + 100},
            )
            direct = Endpoint("direct", pg.port, None, str(ca.cert_file))
            rdsgate = Endpoint("rdsgate", proxy.port, secret, str(ca.cert_file))
            for endpoint in (direct, rdsgate):
                warm = run_phase(
                    pg,
                    endpoint,
                    min(WARM_UP_SESSIONS, args.sessions),
                    WARM_UP_TRANSACTIONS,
                    args.client_processes,
                )
                if warm.errors:
                    raise BenchError(f"warm-up through {endpoint.name} failed: {warm.samples}")
                wait_settled(pg, proxy)
            for endpoint in (direct, rdsgate):
                results.phases[endpoint.name] = run_phase(
                    pg, endpoint, args.sessions, args.transactions, args.client_processes
                )
                wait_settled(pg, proxy)
            if args.copy_rows:
                results.copy = run_copy(
                    pg,
                    direct,
                    rdsgate,
                    args.copy_rows,
                    args.copy_background,
                    args.copy_background_rate,
                    args.client_processes,
                )
            proxy.service.check_alive()
            say("measured; stopping everything")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def render(results: LoadResults) -> None:
    """A plain-text summary on stdout (without --json)."""
    print(
        f"{results.sessions} concurrent sessions x {results.transactions} transactions "
        f"(BEGIN; UPDATE ... RETURNING; COMMIT), {results.processes} client processes"
    )
    print(f"{'target':<9} {'errors':>6} {'tps':>9} {'query p50':>10} {'query p99':>10} "
          f"{'txn p50':>9} {'txn p99':>9} {'log-in s':>8}")  # fmt: skip
    for target, phase in results.phases.items():
        doc = phase.as_json()
        q, t = doc["query_ms"], doc["transaction_ms"]
        print(f"{target:<9} {doc['errors']:>6} {doc['tps']:>9,.0f} {q['p50']:>8.1f}ms "
              f"{q['p99']:>8.1f}ms {t['p50']:>7.1f}ms {t['p99']:>7.1f}ms "
              f"{doc['login_seconds']:>8.1f}")  # fmt: skip
    if results.copy is not None:
        c = results.copy.as_json()
        print(f"COPY {c['rows']:,} rows ({c['bytes'] / MB:,.1f} MB) with "
              f"{c['background']['sessions']} background sessions: checksums "
              f"{'equal' if c['checksums_equal'] else 'DIFFER'}")  # fmt: skip
        for target in ("direct", "rdsgate"):
            bg = c["background"]["query_ms_during_copy"][target]
            print(f"  {target:<9} out {c['out_mb_s'][target]:>7.1f} MB/s  in "
                  f"{c['in_mb_s'][target]:>7.1f} MB/s  background p50 {bg['p50']:.1f} ms "
                  f"p99 {bg['p99']:.1f} ms")  # fmt: skip
    print(f"errors: {results.errors}")
    for sample in results.samples:
        print(f"  {sample}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, help=f"concurrent sessions (default {SESSIONS})")
    p.add_argument("--transactions", type=int, help=f"per session (default {TRANSACTIONS})")
    p.add_argument("--copy-rows", type=int, help=f"rows of COPY (default {COPY_ROWS}; 0 skips)")
    p.add_argument("--copy-background", type=int, help=f"default {COPY_BACKGROUND}")
    p.add_argument(
        "--copy-background-rate",
        type=float,
        default=COPY_BACKGROUND_RATE,
        help="queries per second of each background session (default %(default)s)",
    )
    p.add_argument("--client-processes", type=int, default=CLIENT_PROCESSES)
    p.add_argument("--quick", action="store_true", help="200x20, 10^5 rows, 50 background")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    args = p.parse_args(argv)
    quick = {"sessions": 200, "transactions": 20, "copy_rows": 100_000, "copy_background": 50}
    full = {"sessions": SESSIONS, "transactions": TRANSACTIONS, "copy_rows": COPY_ROWS,
            "copy_background": COPY_BACKGROUND}  # fmt: skip
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sessions < 1 or args.transactions < 1 or args.client_processes < 1:
        p.error("--sessions, --transactions and --client-processes must be at least 1")
    if args.copy_rows < 0 or args.copy_background < 0 or args.copy_background_rate <= 0:
        p.error("--copy-rows and --copy-background must not be negative, the rate positive")
    return args


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    before = machine()
    try:
        with signals_interrupt():
            results = measure(args)
    except KeyboardInterrupt:
        say("interrupted: everything the benchmark started was stopped")
        return 130
    except (BenchError, PostgresNotInstalled, PostgresError) as exc:
        say(f"error: {exc}")
        return 1
    doc = results.as_json() | {"machine": {"before": before, "after": machine()}}
    if args.json:
        print(json.dumps(doc))
    else:
        render(results)
    if results.errors:
        say(f"FAILED: {results.errors} errors: {results.samples}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

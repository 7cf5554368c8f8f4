"""`make bench`: rdsgate-proxy next to its peers, measured in one run on this machine.

A proxy's cost only means something next to a peer measured on the same machine at the
same moment, so this starts everything on loopback and reads the results as ratios.

1. **Throughput**: pgbench -S through three targets, interleaved per point (direct,
   pgbouncer, rdsgate at c=1, then c=8, ...) so drift on a shared machine hits all alike,
   then pgbench -S -C (a new connection per transaction), then a large
   `COPY ... TO STDOUT` through each (psql, output discarded):

   - `direct`: a throwaway PostgreSQL (the lab's) over TLS, `sslmode=require`;
   - `pgbouncer`: session mode, TLS on both legs (`client_tls_sslmode=require`,
     `server_tls_sslmode=verify-full`), `auth_type = plain` — the same cleartext password
     inside TLS that rdsgate asks its clients for;
   - `rdsgate`: `rdsgate-proxy` with client TLS, an access file granting one Token,
     default audit (every query is a `session.query` line) and IAM tokens signed locally
     with static fake keys, pointed at PostgreSQL directly (`trust` auth ignores the
     token), so only rdsgate's own cost is measured.

2. **Connection latency** (`bench/connect_latency.py`, `--connections`, default 1000 per
   target, 200 with --quick): sequential new connections, start of connect to the result
   of `select 1`, through an rdsgate in front of the lab's RDS Proxy stand-in (which checks
   IAM tokens as RDS Proxy does and answers a log-in 20 ms late) against logging in to the
   stand-in directly with an IAM token from boto3.

3. **Idle memory** (`bench/idle_memory.py`, `--idle-sessions`, default 2000): the RSS of
   one rdsgate holding that many idle TLS sessions, each with its upstream connection (to
   a pgbouncer in transaction mode), and the bytes per session.

`--json` prints only this on stdout (every number rounded; ratios are left to the reader):

- `tps` {target: {clients: TPS}}, `connect_rate` {target: connections/s of the -C run},
  `copy_mb_s` {target: MB/s};
- `proxy_cpu_us` {proxy: {"c=N" | "connect" | "copy": µs of proxy CPU per transaction,
  per new connection, per MB}}, and `cpu_us_per_connection` {proxy: µs per new
  connection}, the same "connect" figure on its own, for pgbouncer and rdsgate;
- `tps_audit` {clients: TPS}: rdsgate's TPS with every query audited at c=8 and c=32 (at
  the client counts measured when the run had neither); absent with --no-audit-queries;
- `connect_latency_ms` {"rdsgate" | "rds-proxy-direct": {"p50", "p99", "mean": ms, "n":
  connections}}; rdsgate's entry also has `warm` {"hit": n, "miss": n} (the proxy's
  `rdsgate_upstream_warm_total` during the measured connections) when the proxy exports
  it; absent with --connections 0;
- `idle_rss_mib_2000` (MiB; null unless exactly 2,000 sessions were measured),
  `idle_bytes_per_session`, `idle_sessions`, `idle_rss_mib` (at that count),
  `idle_rss_baseline_mib`; absent with --idle-sessions 0;
- `machine`: what it ran on, and the load average before and after.

Without rdsgate in --targets, points 2 and 3 are skipped (both measure rdsgate).
Everything started here is stopped and its files removed on exit, Ctrl-C and SIGTERM
included; the run raises its own open-files limit for point 3 (its children inherit it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rdsgate.lab.postgres import LabCA, PostgresError, PostgresNotInstalled, PostgresServer

if __package__ in (None, ""):
    # `python bench/run.py`, as `make bench` runs it: the repository root makes the `bench`
    # package importable, as pytest's `pythonpath` does for the smoke test.
    # Appended, so that no directory of the repository shadows a module of the same name.
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench import connect_latency, idle_memory, native_profile, rig
from bench.rig import (
    DB_NAME,
    DB_USER,
    HOST,
    INSTALL_HINT,
    STATIC_AWS_ENV,
    BenchError,
    Service,
    clean_env,
    find_pgbouncer,
    find_program,
)

TARGETS = ("direct", "pgbouncer", "rdsgate")
DEFAULT_CLIENTS = (1, 8, 32)
CONNECT_CLIENTS = 8
#: Each COPY row is 1,000 bytes of text and a newline.
COPY_ROW_BYTES = 1001
PROFILE_CLIENTS = 8
RESULTS_DIR = Path(__file__).resolve().parent / "results"

TPS_RE = re.compile(
    r"^tps = ([0-9.]+) \((without initial connection time|including reconnection times)\)",
    re.MULTILINE,
)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


# -- tools ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    """The programs the benchmark drives, found once up front so a missing one fails fast."""

    pgbench: Path
    psql: Path
    pgbouncer: Path | None
    pyspy: Path | None
    perf: Path | None = None


def find_tools(targets: Sequence[str], profile: bool, *, idle_sessions: bool = False) -> Tools:
    """Every program this run needs, or one error naming all the missing ones; pgbouncer
    also serves as the upstream of the idle-session measurement."""
    missing: list[str] = []
    pgbench = find_program("pgbench")
    psql = find_program("psql")
    if pgbench is None:
        missing.append("pgbench (Debian package postgresql-contrib)")
    if psql is None:
        missing.append("psql (postgresql-client)")
    pgbouncer = None
    if "pgbouncer" in targets or idle_sessions:
        pgbouncer = find_pgbouncer()
        if pgbouncer is None:
            missing.append("pgbouncer (Debian package pgbouncer)")
    pyspy = None
    if profile:
        pyspy = find_program("py-spy", [Path(sys.executable).parent])
        if pyspy is None:
            missing.append("py-spy (`.venv/bin/pip install py-spy`, in the bench extras)")
    if missing:
        raise BenchError("missing: " + "; ".join(missing) + f". {INSTALL_HINT}.")
    assert pgbench is not None and psql is not None
    return Tools(pgbench, psql, pgbouncer, pyspy)


# -- targets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where pgbench connects for one target, and the proxy process whose CPU is watched."""

    name: str
    port: int
    password: str | None
    #: the proxy in front of PostgreSQL, if any: its CPU is measured and its log quoted
    service: Service | None = None

    @property
    def pid(self) -> int | None:
        return self.service.pid if self.service else None

    def env(self) -> dict[str, str]:
        """libpq settings for pgbench and psql: the same TLS mode for every target."""
        env = clean_env() | {
            "PGHOST": HOST,
            "PGPORT": str(self.port),
            "PGUSER": DB_USER,
            "PGDATABASE": DB_NAME,
            "PGSSLMODE": "require",
            "PGCONNECT_TIMEOUT": "10",
            "PGAPPNAME": "rdsgate-bench",
        }
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


def start_postgres(stack: contextlib.ExitStack, ca: LabCA) -> PostgresServer:
    """The throwaway server every target ends at; `trust` lets rdsgate log in with its
    IAM token as the (ignored) password, and pgbouncer without one."""
    pg = PostgresServer(ca=ca.keypair, host_auth="trust", settings={"shared_buffers": "256MB"})
    stack.enter_context(pg)
    pg.create_role(DB_USER)
    pg.create_database(DB_NAME, owner=DB_USER)
    return pg


def pgbench_init(tools: Tools, pg: PostgresServer, scale: int) -> None:
    """`pgbench -i` as the benchmark's own user, over the same TLS path the runs take."""
    direct = Target("direct", pg.port, None)
    cmd = [str(tools.pgbench), "-i", "-q", "-s", str(scale)]
    proc = subprocess.run(
        cmd, env=direct.env(), capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode:
        raise BenchError(f"pgbench -i failed ({proc.returncode}):\n{proc.stderr.strip()}")


def start_pgbouncer(
    stack: contextlib.ExitStack, tools: Tools, work: Path, ca: LabCA, pg: PostgresServer, pw: str
) -> Target:
    """pgbouncer in session mode with TLS on both legs and cleartext auth, like rdsgate."""
    assert tools.pgbouncer is not None
    bouncer = rig.start_pgbouncer(stack, tools.pgbouncer, work, ca, pg, pw)
    return Target("pgbouncer", bouncer.port, pw, bouncer.service)


def start_rdsgate(
    stack: contextlib.ExitStack,
    work: Path,
    ca: LabCA,
    pg: PostgresServer,
    secret: str,
    *,
    audit_queries: bool = True,
    pinning: bool = True,
) -> Target:
    """rdsgate-proxy pointed at PostgreSQL directly; static fake AWS keys sign IAM tokens
    locally (`trust` ignores them)."""
    proxy = rig.start_rdsgate(
        stack,
        work,
        ca,
        secret,
        upstream=f"localhost:{pg.port}",
        aws={"region": "eu-west-1"},
        aws_env=STATIC_AWS_ENV,
        audit_queries=audit_queries,
        pinning=pinning,
    )
    return Target("rdsgate", proxy.port, secret, proxy.service)


def check_target(tools: Tools, target: Target) -> None:
    """One query through the target proving both legs use TLS (pg_stat_ssl is the server's
    view of the connection that reached it)."""
    proc = subprocess.run(
        [
            str(tools.psql),
            "-X",
            "-A",
            "-t",
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ],
        env=target.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode or proc.stdout.strip() != "t":
        raise BenchError(
            f"a test query through {target.name} failed: "
            f"{(proc.stderr or proc.stdout).strip() or 'the server leg is not TLS'}"
        )


# -- measuring --------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuUse:
    """CPU a proxy process (all its threads) used during one run."""

    user_s: float
    sys_s: float
    elapsed_s: float
    #: transactions (or, with -C, connections) per second of that run
    tps: float

    @property
    def cores(self) -> float:
        """1.0 = one core busy for the whole run."""
        return (self.user_s + self.sys_s) / self.elapsed_s

    @property
    def us_per_txn(self) -> float:
        """Proxy CPU per transaction: comparable even when the machine is shared."""
        return 1e6 * self.cores / self.tps if self.tps else 0.0

    @property
    def sys_share(self) -> float:
        total = self.user_s + self.sys_s
        return self.sys_s / total if total else 0.0


@dataclass(frozen=True)
class RunResult:
    tps: float
    failed: int
    proxy_cpu: CpuUse | None


def _cpu_times(pid: int) -> tuple[float, float] | None:
    """(utime, stime) in seconds of a process and all its threads, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def pgbench_command(tools: Tools, clients: int, duration: int, connect: bool) -> list[str]:
    cmd = [str(tools.pgbench), "-S", "-n", "-T", str(duration)]
    cmd += ["-c", str(clients), "-j", str(min(clients, 2))]
    return [*cmd, "-C"] if connect else cmd


def run_pgbench(
    tools: Tools,
    target: Target,
    clients: int,
    duration: int,
    *,
    connect: bool = False,
    during: Callable[[], None] | None = None,
) -> RunResult:
    """One pgbench run; `during` runs while pgbench does (to attach a profiler)."""
    cmd = pgbench_command(tools, clients, duration, connect)
    cpu_before = _cpu_times(target.pid) if target.pid else None
    started = time.monotonic()
    with subprocess.Popen(
        cmd,
        env=target.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        if during is not None:
            during()
        out, err = proc.communicate(timeout=duration + 120)
    elapsed = time.monotonic() - started
    cpu_after = _cpu_times(target.pid) if target.pid else None
    match = TPS_RE.search(out)
    if proc.returncode or match is None:
        detail = "\n".join((err.strip() or out.strip()).splitlines()[-15:])
        if target.service is not None:
            detail += f"\n--- {target.service.name} log ---\n{target.service.log_tail()}"
        raise BenchError(
            f"pgbench against {target.name} (c={clients}{', -C' if connect else ''}) failed "
            f"with status {proc.returncode}:\n{detail}"
        )
    tps = float(match.group(1))
    failed = FAILED_RE.search(out)
    cpu = None
    if cpu_before is not None and cpu_after is not None and elapsed > 0:
        user, system = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
        cpu = CpuUse(user, system, elapsed, tps)
    return RunResult(tps, int(failed.group(1)) if failed else 0, cpu)


def run_copy(tools: Tools, target: Target, megabytes: int) -> RunResult:
    """`COPY (…) TO STDOUT` of `megabytes` MB through psql into /dev/null; tps is MB/s, and
    the proxy's CPU per "transaction" is per MB."""
    rows = megabytes * 1_000_000 // COPY_ROW_BYTES
    sql = f"copy (select repeat('x', 1000) from generate_series(1, {rows})) to stdout"  # noqa: S608
    cpu_before = _cpu_times(target.pid) if target.pid else None
    started = time.monotonic()
    proc = subprocess.run(
        [str(tools.psql), "-X", "-q", "-c", sql],
        env=target.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - started
    cpu_after = _cpu_times(target.pid) if target.pid else None
    if proc.returncode:
        raise BenchError(f"COPY through {target.name} failed: {proc.stderr.strip()}")
    mb_s = rows * COPY_ROW_BYTES / 1e6 / elapsed
    cpu = None
    if cpu_before is not None and cpu_after is not None:
        user, system = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
        cpu = CpuUse(user, system, elapsed, mb_s)
    return RunResult(mb_s, 0, cpu)


#: Client counts whose rdsgate TPS `tps_audit` names (issue 13 asks for c=8 and c=32).
AUDIT_CLIENTS = (8, 32)


@dataclass
class Results:
    targets: list[str]
    clients: list[int]
    #: whether rdsgate audited every query (the default) or ran with audit.queries=false
    audit_queries: bool = True
    #: whether rdsgate classified statements for RDS Proxy pinning (the default)
    pinning: bool = True
    tps: dict[str, dict[int, float]] = field(default_factory=dict)
    connect_rate: dict[str, float] = field(default_factory=dict)
    copy_mb_s: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, dict[str, CpuUse]] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)
    connect_latency: connect_latency.ConnectLatency | None = None
    idle: idle_memory.IdleMemory | None = None
    native: list[native_profile.LayerProfile] = field(default_factory=list)

    def record(self, target: str, key: str, result: RunResult) -> None:
        if result.proxy_cpu is not None:
            self.cpu.setdefault(target, {})[key] = result.proxy_cpu
        self.failed[target] += result.failed

    def tps_audit(self) -> dict[int, float] | None:
        """rdsgate's TPS with every query audited at c=8 and c=32, or at the client counts
        measured when the run had neither; None with audit.queries=false."""
        measured = self.tps.get("rdsgate")
        if not self.audit_queries or not measured:
            return None
        named = {c: v for c, v in measured.items() if c in AUDIT_CLIENTS}
        return named or dict(measured)

    def cpu_us_per_connection(self) -> dict[str, float]:
        """Proxy CPU (µs) per new connection, from the pgbench -C runs."""
        return {
            t: by_key["connect"].us_per_txn for t, by_key in self.cpu.items() if "connect" in by_key
        }

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pinning_classified": self.pinning,
            "tps": {t: {str(c): round(v, 1) for c, v in self.tps[t].items()} for t in self.tps},
            "connect_rate": {t: round(v, 1) for t, v in self.connect_rate.items()},
            "copy_mb_s": {t: round(v, 1) for t, v in self.copy_mb_s.items()},
            # µs of proxy CPU per transaction, per new connection ("connect"), per MB ("copy")
            "proxy_cpu_us": {
                t: {k: round(u.us_per_txn, 1) for k, u in by_key.items()}
                for t, by_key in self.cpu.items()
            },
            "cpu_us_per_connection": {
                t: round(v, 1) for t, v in self.cpu_us_per_connection().items()
            },
        }
        audited = self.tps_audit()
        if audited is not None:
            out["tps_audit"] = {str(c): round(v, 1) for c, v in audited.items()}
        if self.connect_latency is not None:
            out["connect_latency_ms"] = self.connect_latency.as_json()
        if self.idle is not None:
            out |= self.idle.as_json()
        if self.native:
            # µs of rdsgate-proxy CPU per transaction (per connection for -C) by layer
            out["native_profile"] = {
                p.label: {
                    "us_per_unit": round(p.us_per_unit, 1),
                    "layers": {k: round(p.us(k), 1) for k in native_profile.layers_in_order([p])},
                }
                for p in self.native
            }
        return out


# -- profiling --------------------------------------------------------------------------

_FRAME_RE = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")
_WRITE_CALLS = frozenset({"write", "writev", "send", "sendmsg", "sendto", "__write"})
_READ_CALLS = frozenset({"read", "readv", "recv", "recvmsg", "recvfrom", "__read"})
_IDLE_CALLS = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2"})
IDLE = "idle (waiting in epoll)"
LAYERS = (
    "socket write() syscalls",
    "socket read() syscalls",
    "OpenSSL (record encryption, decryption)",
    "TLS layering (ssl.SSLObject memory BIO, uvloop SSLProtocol)",
    "audit trail (JSON encoding, write to stdout)",
    "rdsgate Python (relay, frontend scan, session)",
    "event loop and interpreter (uvloop, CPython)",
)
#: Wall-clock time in these includes being preempted by the peer a write woke up.
SYSCALL_LAYERS = frozenset(LAYERS[:2])


def _split_frame(frame: str) -> tuple[str, str]:
    """`name (file:line)` or `name (lib.so)` -> (name, where)."""
    m = _FRAME_RE.match(frame)
    return (m.group("name"), m.group("where")) if m else (frame, "")


def _in_libc(where: str) -> bool:
    return where.startswith(("libc.", "libc-"))


def _leaf_label(frames: Sequence[str]) -> str:
    """The innermost named frame; an unsymbolised native leaf is named by its library, and
    a libc leaf (a syscall wrapper, memcpy) by its caller too, since `write` to a socket
    and `write` of the audit trail are different costs."""
    named = [f for f in frames if not f.startswith("0x")]
    if not named:
        return frames[-1]
    label = named[-1]
    leaf_where = _split_frame(frames[-1])[1]
    if frames[-1].startswith("0x"):
        label = f"{label} > [{leaf_where}]"
    if _in_libc(leaf_where):
        caller = next((f for f in reversed(named) if not _in_libc(_split_frame(f)[1])), "")
        if caller:
            label = f"{label} < {_split_frame(caller)[0]}"
    return label


def _layer(frames: Sequence[str]) -> str:
    """Which part of the data path a sample of the event-loop thread is spent in."""
    if any("proxy/audit.py" in f for f in frames):
        return LAYERS[4]
    for frame in reversed(frames):
        name, where = _split_frame(frame)
        if name in _IDLE_CALLS:
            return IDLE
        if _in_libc(where) and name in _WRITE_CALLS:
            return LAYERS[0]
        if _in_libc(where) and name in _READ_CALLS:
            return LAYERS[1]
        if where.startswith(("libcrypto", "libssl")):
            return LAYERS[2]
        if where.startswith(("_ssl.c", "ssl.py")) or "SSLProtocol" in name:
            return LAYERS[3]
        if where.startswith("proxy/"):
            return LAYERS[5]
    return LAYERS[6]


@dataclass(frozen=True)
class StackProfile:
    """py-spy's collapsed stacks of the event-loop thread, reduced to two views."""

    #: samples of the event-loop thread that were not waiting in epoll
    busy: int
    idle: int
    #: samples of other threads (executor for token signing, metrics HTTP): off the data path
    other_threads: int
    layers: list[tuple[str, int]]
    top: list[tuple[str, int]]
    native: bool


def analyse_stacks(raw: Path) -> StackProfile:
    """Own time per function and per layer, from `py-spy record --format raw`.

    Only the main thread runs the event loop, and so the data path; py-spy's idle
    detection misses some waiting threads on this kind of VM, so the other threads are
    dropped by name rather than trusted to be filtered out."""
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    busy = idle = other = 0
    native = False
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        native = native or any(".so" in _split_frame(f)[1] for f in frames)
        if not any(f.startswith("<module> (") for f in frames):
            other += count
            continue
        layer = _layer(frames)
        if layer == IDLE:
            idle += count
            continue
        busy += count
        layers[layer] += count
        own[_leaf_label(frames)] += count
    return StackProfile(busy, idle, other, layers.most_common(), own.most_common(), native)


@dataclass(frozen=True)
class Profile:
    svg: Path
    raw: Path
    stacks: StackProfile
    tps: float


def _pyspy(tools: Tools, pid: int, duration: int, out: Path, *extra: str) -> subprocess.Popen[str]:
    assert tools.pyspy is not None
    cmd = [str(tools.pyspy), "record", "--pid", str(pid), "--duration", str(duration)]
    return subprocess.Popen(
        [*cmd, "-o", str(out), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish_pyspy(proc: subprocess.Popen[str], out: Path, timeout: float) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    if proc.returncode or not out.exists():
        raise BenchError(f"py-spy failed ({proc.returncode}):\n{output.strip()[-2000:]}")


def _native_supported(tools: Tools, pid: int) -> bool:
    """Whether py-spy can unwind native frames of this process (uvloop, OpenSSL, syscalls)."""
    assert tools.pyspy is not None
    proc = subprocess.run(
        [str(tools.pyspy), "dump", "--native", "--pid", str(pid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0


def _profiled_run(
    tools: Tools, target: Target, run_for: int, duration: int, out: Path, extra: Sequence[str]
) -> float:
    """One rdsgate run with py-spy attached once pgbench has started."""
    assert target.pid is not None
    spies: list[subprocess.Popen[str]] = []
    try:
        result = run_pgbench(
            tools,
            target,
            PROFILE_CLIENTS,
            run_for,
            during=lambda: spies.append(_pyspy(tools, target.pid or 0, duration, out, *extra)),
        )
        for spy in spies:
            _finish_pyspy(spy, out, timeout=30)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
    return result.tps


def profile_rdsgate(
    tools: Tools, target: Target, duration: int, progress: Callable[[str], None]
) -> Profile:
    """Two extra rdsgate c=8 runs under py-spy: a flame graph to look at, and collapsed
    stacks (by function) for the own-time tables. py-spy writes one format per recording,
    and two samplers at once would double its cost on the process."""
    assert target.pid is not None
    RESULTS_DIR.mkdir(exist_ok=True)
    svg = RESULTS_DIR / f"rdsgate-c{PROFILE_CLIENTS}.svg"
    raw = RESULTS_DIR / f"rdsgate-c{PROFILE_CLIENTS}.txt"
    native = ["--native"] if _native_supported(tools, target.pid) else []
    # pgbench runs a little longer than py-spy samples, so every sample is under load.
    run_for = duration + 2
    recordings = [(svg, native), (raw, [*native, "--format", "raw", "--function"])]
    tps = 0.0
    for out, extra in recordings:
        out.unlink(missing_ok=True)
        progress(f"py-spy -> {out.name} during rdsgate c={PROFILE_CLIENTS}")
        tps = _profiled_run(tools, target, run_for, duration, out, extra)
    return Profile(svg, raw, analyse_stacks(raw), tps)


# -- the machine ------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine_info(tools: Tools, pg: PostgresServer | None) -> dict[str, Any]:
    """What the numbers were measured on; the load average says how shared it was."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "uvloop": _package_version("uvloop"),
        "openssl": ssl.OPENSSL_VERSION,
        "pgbench": _first_line([str(tools.pgbench), "--version"]),
    }
    if pg is not None and pg.running:
        with contextlib.suppress(PostgresError):
            info["postgresql"] = pg.execute("show server_version")
    if tools.pgbouncer is not None:
        info["pgbouncer"] = _first_line([str(tools.pgbouncer), "--version"])
    return info


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- output -----------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def render(
    console: Console,
    results: Results,
    machine: Mapping[str, Any],
    args: argparse.Namespace,
    profile: Profile | None,
) -> None:
    cols = [f"c={c}" for c in results.clients]
    audit = "every query audited" if args.audit_queries else "audit.queries=false"
    audit += ", pinning classified" if args.pinning else ", audit.pinning=false"
    table = Table(
        title=(
            f"pgbench -S -n (select-only), scale {args.scale}, {args.duration} s per point, "
            "sslmode=require — TPS"
        ),
        caption=(
            "-j = min(c, 2) for every target; connect/s = pgbench -S -n -C "
            f"-c {CONNECT_CLIENTS} -j 2 (tps = new TLS connections + auth per second); "
            f"COPY = psql COPY TO STDOUT of {args.copy_mb} MB into /dev/null; "
            f"rdsgate: {audit}"
        ),
    )
    table.add_column("target", style="bold")
    for col in cols:
        table.add_column(col, justify="right")
    table.add_column(f"connect/s (-C, c={CONNECT_CLIENTS})", justify="right")
    table.add_column("COPY MB/s", justify="right")

    def row(name: str, values: list[float | None]) -> list[str]:
        return [name, *(f"{v:,.0f}" if v is not None else "-" for v in values)]

    for t in results.targets:
        tps = results.tps.get(t, {})
        values = [tps.get(c) for c in results.clients]
        table.add_row(*row(t, [*values, results.connect_rate.get(t), results.copy_mb_s.get(t)]))
    if "rdsgate" in results.targets:
        mine = results.tps.get("rdsgate", {})
        for peer in ("pgbouncer", "direct"):
            if peer not in results.targets:
                continue
            theirs = results.tps.get(peer, {})
            cells = [_ratio(mine.get(c), theirs.get(c)) for c in results.clients]
            conn = _ratio(results.connect_rate.get("rdsgate"), results.connect_rate.get(peer))
            copy = _ratio(results.copy_mb_s.get("rdsgate"), results.copy_mb_s.get(peer))
            table.add_row(f"rdsgate / {peer}", *cells, conn, copy, style="cyan")
    console.print(table)

    if results.cpu:
        cpu = Table(
            title="proxy process CPU (all threads) during each run",
            caption="µs per transaction (per connection for -C, per MB for COPY) is the figure "
            "that compares "
            "on a shared machine; the kernel share is mostly loopback socket I/O",
        )
        cpu.add_column("proxy", style="bold")
        cpu.add_column("")
        keys = [*cols, "connect", "copy"]
        for key in keys:
            cpu.add_column(key, justify="right")
        for t, by_key in results.cpu.items():
            uses = [by_key.get(k) for k in keys]
            cpu.add_row(t, "µs/txn", *[f"{u.us_per_txn:,.0f}" if u else "-" for u in uses])
            cpu.add_row("", "cores busy", *[f"{u.cores:.2f}" if u else "-" for u in uses])
            cpu.add_row(
                "",
                "in kernel",
                *[f"{u.sys_share:.0%}" if u else "-" for u in uses],
                end_section=True,
            )
        console.print(cpu)

    if sum(results.failed.values()):
        console.print(f"[yellow]failed transactions:[/] {dict(results.failed)}")

    if results.connect_latency is not None:
        render_connect_latency(console, results.connect_latency)
    if results.idle is not None:
        render_idle_memory(console, results.idle)

    facts = Table(title="machine", show_header=False)
    facts.add_column("what", style="bold")
    facts.add_column("value")
    for k, v in machine.items():
        facts.add_row(k, str(v))
    console.print(facts)

    if results.native:
        render_native(console, results.native)
    if profile is not None:
        print_profile(console, profile)


def render_native(console: Console, profiles: Sequence[native_profile.LayerProfile]) -> None:
    table = Table(
        title="rdsgate-proxy CPU by library (perf record -e cpu-clock, --perf)",
        caption="µs of proxy CPU per transaction (per new connection for -C), split by the "
        "share of perf samples in each shared object",
    )
    table.add_column("layer", style="bold")
    for p in profiles:
        table.add_column(f"{p.label} µs", justify="right")
        table.add_column("share", justify="right")
    for layer in native_profile.layers_in_order(profiles):
        cells: list[str] = []
        for p in profiles:
            cells += [f"{p.us(layer):,.1f}", f"{p.shares.get(layer, 0.0):.0%}"]
        table.add_row(layer, *cells)
    table.add_row(
        "total", *[c for p in profiles for c in (f"{p.us_per_unit:,.1f}", "")], style="cyan"
    )
    console.print(table)


def render_connect_latency(console: Console, result: connect_latency.ConnectLatency) -> None:
    first = next(iter(result.by_target.values()))
    caption = [
        f"{len(first.samples)} sequential connections per target, alternating; psycopg "
        "(libpq), sslmode=verify-full; the RDS Proxy stand-in answers an IAM log-in "
        f"{result.login_delay_ms:g} ms late",
        "target (issue 13): rdsgate / direct at most 1.00x at p50 and 1.50x at p99",
    ]
    if result.warm is not None:
        counts = ", ".join(f"{k} {v}" for k, v in result.warm.items())
        caption.append(f"rdsgate warm upstream connections taken: {counts}")
    table = Table(
        title="connection latency: start of connect to the result of `select 1` (ms)",
        caption="\n".join(caption),
    )
    table.add_column("target", style="bold")
    stats = ("p50", "p99", "mean")
    for stat in stats:
        table.add_column(stat, justify="right")
    for target, lat in result.by_target.items():
        table.add_row(target, *(f"{getattr(lat, s):.1f}" for s in stats))
    if len(result.by_target) == 2:
        ratios = [result.ratio(s) for s in stats]
        table.add_row(
            f"{connect_latency.RDSGATE} / {connect_latency.DIRECT}",
            *(f"{r:.2f}x" if r is not None else "-" for r in ratios),
            style="cyan",
        )
    console.print(table)


def render_idle_memory(console: Console, result: idle_memory.IdleMemory) -> None:
    mib = idle_memory.MiB
    table = Table(
        title=f"rdsgate-proxy memory with {result.sessions:,} idle TLS sessions",
        caption=(
            "each session: TLS, password, an upstream TLS connection (pgbouncer, transaction "
            f"mode) and one select 1, then idle; opened in {result.open_seconds:.1f} s; "
            f"target (issue 13): {idle_memory.SESSIONS:,} sessions within "
            f"{idle_memory.TARGET_MIB} MiB RSS"
        ),
        show_header=False,
    )
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row(
        "RSS, no session open (after one came and went)", f"{result.rss_baseline / mib:.1f} MiB"
    )
    table.add_row(f"RSS, {result.sessions:,} sessions open", f"{result.rss_mib:.1f} MiB")
    table.add_row("bytes per session", f"{result.bytes_per_session:,.0f}", style="cyan")
    console.print(table)


def print_profile(console: Console, profile: Profile, top_n: int = 20) -> None:
    st = profile.stacks
    head = (
        f"rdsgate-proxy at c={PROFILE_CLIENTS} under py-spy ({profile.tps:,.0f} tps): "
        f"{st.busy} busy samples of the event-loop thread"
    )
    notes = [
        f"{st.idle} idle samples (epoll) and {st.other_threads} of other threads left out",
        "wall-clock samples: on a saturated machine, time in a syscall includes being "
        "preempted by the process the write woke",
        f"flame graph: {profile.svg}",
        f"collapsed stacks: {profile.raw}",
    ]
    if not st.native:
        notes.insert(1, "no native frames: C time (uvloop, OpenSSL, syscalls) shows as its caller")
    layers = Table(title=head + " — by layer", caption="\n".join(notes))
    layers.add_column("own %", justify="right")
    layers.add_column("% outside syscalls", justify="right")
    layers.add_column("samples", justify="right")
    layers.add_column("layer")
    syscalls = sum(n for layer, n in st.layers if layer in SYSCALL_LAYERS)
    for layer, count in st.layers:
        rest = st.busy - syscalls
        outside = "" if layer in SYSCALL_LAYERS or not rest else f"{100 * count / rest:.1f}"
        layers.add_row(f"{100 * count / st.busy:.1f}", outside, str(count), layer)
    console.print(layers)
    top = Table(title=f"top {top_n} functions by own time (event-loop thread, busy samples)")
    top.add_column("own %", justify="right")
    top.add_column("samples", justify="right")
    top.add_column("function (file:first line, or library)")
    for frame, count in st.top[:top_n]:
        top.add_row(f"{100 * count / st.busy:.1f}", str(count), escape(frame))
    console.print(top)


# -- main -------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("client counts must be positive integers")
    return values


def _target_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in TARGETS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"targets are {', '.join(TARGETS)}; got {text!r}")
    return [t for t in TARGETS if t in values]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="pgbench -S through rdsgate-proxy, pgbouncer (session mode) and "
        "PostgreSQL direct, all over TLS on loopback, measured in one interleaved run; then "
        "connection latency through rdsgate against logging in to the RDS Proxy stand-in "
        "directly, and rdsgate's memory with idle sessions.",
    )
    p.add_argument("--targets", type=_target_list, default=list(TARGETS), help="default: all")
    p.add_argument("--clients", type=_int_list, default=list(DEFAULT_CLIENTS), help="1,8,32")
    p.add_argument("--duration", type=int, help="seconds per point (default 15, --quick 3)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short runs (3 s per point, 20 MB of COPY, 200 connections per target); "
        "under 3 minutes on 2 cores",
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument(
        "--copy-mb",
        type=int,
        help="MB of COPY TO STDOUT per target (default 300, --quick 20)",
    )
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument(
        "--no-audit-queries",
        dest="audit_queries",
        action="store_false",
        help="run rdsgate with audit.queries=false, to see what the per-query audit costs "
        "(the default measures the default: every query audited)",
    )
    p.add_argument(
        "--no-pinning",
        dest="pinning",
        action="store_false",
        help="run rdsgate with audit.pinning=false, to see what classifying statements for "
        "RDS Proxy pinning costs (the default classifies them)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help=f"py-spy rdsgate-proxy during extra c={PROFILE_CLIENTS} runs (into bench/results/)",
    )
    p.add_argument(
        "--perf",
        action="store_true",
        help="perf-record rdsgate-proxy during extra c=8, c=32 and -C runs and split its CPU "
        "by library (kernel, interpreter, OpenSSL, uvloop; needs Debian's linux-perf)",
    )
    p.add_argument(
        "--connections",
        type=int,
        help="sequential connections per target for the connection latency through rdsgate "
        "and to the RDS Proxy stand-in directly (default 1000, --quick 200; 0 skips it)",
    )
    p.add_argument(
        "--idle-sessions",
        type=int,
        default=idle_memory.SESSIONS,
        help=f"idle sessions held open through one rdsgate-proxy to measure its RSS "
        f"(default {idle_memory.SESSIONS}, the target's count; 0 skips it)",
    )
    args = p.parse_args(argv)
    if args.connections is None:
        args.connections = 200 if args.quick else 1000
    if args.connections < 0 or args.idle_sessions < 0:
        p.error("--connections and --idle-sessions must not be negative")
    if "rdsgate" not in args.targets:  # both measure rdsgate
        args.connections = args.idle_sessions = 0
    if args.duration is None:
        args.duration = 3 if args.quick else 15
    if args.copy_mb is None:
        args.copy_mb = 20 if args.quick else 300
    if args.copy_mb < 1:
        p.error("--copy-mb must be at least 1")
    if args.duration < 1:
        p.error("--duration must be at least 1 second")
    if args.scale < 1:
        p.error("--scale must be at least 1")
    if (args.profile or args.perf) and "rdsgate" not in args.targets:
        p.error("--profile and --perf profile rdsgate: include it in --targets")
    return args


def run_points(
    args: argparse.Namespace,
    tools: Tools,
    order: Sequence[Target],
    results: Results,
    say: Console,
) -> Profile | None:
    """Warm-up, then every client count with the targets interleaved, then the connection
    rate, then (with --profile) the py-spy runs; fills `results` as it goes."""
    warmup = min(2, args.duration)
    warm_c = min(8, max(args.clients))
    perf_runs = NATIVE_RUNS if tools.perf is not None else ()
    runs = len(order) * (len(args.clients) + 3) + (2 if args.profile else 0) + len(perf_runs)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=say, transient=True) as progress:
        task = progress.add_task("measuring", total=runs)

        def step(text: str) -> None:
            progress.update(task, description=text)

        def done(text: str) -> None:
            progress.console.print(text, highlight=False)
            progress.advance(task)

        for target in order:
            step(f"warm-up {target.name} c={warm_c} ({warmup} s, not counted)")
            run_pgbench(tools, target, warm_c, warmup)
            done(f"  warm-up {target.name} done")
        for c in args.clients:
            for target in order:
                step(f"{target.name} c={c} ({args.duration} s)")
                result = run_pgbench(tools, target, c, args.duration)
                results.tps.setdefault(target.name, {})[c] = result.tps
                results.record(target.name, f"c={c}", result)
                done(f"  {target.name:<9} c={c:<3} {result.tps:>10,.0f} tps")
        for target in order:
            step(f"{target.name} -C c={CONNECT_CLIENTS} ({args.duration} s)")
            result = run_pgbench(tools, target, CONNECT_CLIENTS, args.duration, connect=True)
            results.connect_rate[target.name] = result.tps
            results.record(target.name, "connect", result)
            done(f"  {target.name:<9} -C     {result.tps:>10,.0f} connections/s")
        for target in order:
            step(f"{target.name} COPY {args.copy_mb} MB to stdout")
            result = run_copy(tools, target, args.copy_mb)
            results.copy_mb_s[target.name] = result.tps
            results.record(target.name, "copy", result)
            done(f"  {target.name:<9} COPY   {result.tps:>10,.0f} MB/s")
        if perf_runs:
            rdsgate = next(t for t in order if t.name == "rdsgate")
            for label, clients, connect in perf_runs:
                step(f"perf record rdsgate-proxy during {label}")
                results.native.append(native_run(tools, rdsgate, label, clients, connect, args))
                done(f"  perf profile of rdsgate {label} done")
        if not args.profile:
            return None
        rdsgate = next(t for t in order if t.name == "rdsgate")
        profile = profile_rdsgate(tools, rdsgate, args.duration, step)
        progress.advance(task, 2)
        return profile


#: (label, clients, -C) of the runs profiled with `--perf`
NATIVE_RUNS = (("c=8", 8, False), ("c=32", 32, False), (f"-C c={CONNECT_CLIENTS}", 8, True))


def native_run(
    tools: Tools, target: Target, label: str, clients: int, connect: bool, args: argparse.Namespace
) -> native_profile.LayerProfile:
    """One extra pgbench run with perf sampling the proxy for all but its last second."""
    assert tools.perf is not None and target.pid is not None
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"perf-rdsgate-{label.replace(' ', '').replace('=', '')}.data"
    seconds = max(1, args.duration - 1)
    recorders: list[subprocess.Popen[bytes]] = []
    perf = tools.perf
    pid = target.pid
    result = run_pgbench(
        tools,
        target,
        clients,
        args.duration,
        connect=connect,
        during=lambda: recorders.append(native_profile.record(perf, pid, seconds, out)),
    )
    for recorder in recorders:
        _, err = recorder.communicate(timeout=60)
        if recorder.returncode:
            raise BenchError(f"perf record failed: {err.decode(errors='replace')[-500:]}")
    us = result.proxy_cpu.us_per_txn if result.proxy_cpu else 0.0
    return native_profile.analyse(perf, out, label, us)


@contextlib.contextmanager
def _progress(say: Console, total: int) -> Iterator[Callable[[str, int], None]]:
    """A transient progress bar; the callback sets its text and advances it."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=say, transient=True) as progress:
        task = progress.add_task("", total=total)

        def update(text: str, advance: int) -> None:
            progress.update(task, description=text, advance=advance)

        yield update


def run_connect_latency(
    args: argparse.Namespace,
    work: Path,
    ca: LabCA,
    standin: connect_latency.StandIn,
    secret: str,
    say: Console,
) -> connect_latency.ConnectLatency:
    """rdsgate in front of the stand-in, sequential connections through it and to the
    stand-in directly; stops that rdsgate and the stand-in afterwards."""
    with contextlib.ExitStack() as stack, _progress(say, 2 * args.connections) as progress:
        progress("starting rdsgate-proxy in front of the RDS Proxy stand-in", 0)
        result = connect_latency.measure(
            stack, work, ca, standin, secret, args.connections, progress
        )
    standin.service.stop()
    for target, lat in result.by_target.items():
        say.print(
            f"  {target:<16} connect→select 1  p50 {lat.p50:6.1f} ms  p99 {lat.p99:6.1f} ms  "
            f"mean {lat.mean:6.1f} ms ({len(lat.samples)} connections)",
            highlight=False,
        )
    if result.warm is not None:
        say.print(f"  rdsgate warm upstream connections: {result.warm}", highlight=False)
    return result


def run_idle_memory(
    args: argparse.Namespace,
    tools: Tools,
    work: Path,
    ca: LabCA,
    pg: PostgresServer,
    secret: str,
    say: Console,
) -> idle_memory.IdleMemory:
    """pgbouncer (transaction mode) and an rdsgate in front of it, `--idle-sessions` idle
    sessions through it; stops both afterwards."""
    assert tools.pgbouncer is not None
    with contextlib.ExitStack() as stack, _progress(say, args.idle_sessions) as progress:
        progress("starting pgbouncer (transaction mode) and rdsgate-proxy in front of it", 0)
        result = idle_memory.measure(
            stack, tools.pgbouncer, work, ca, pg, secret, args.idle_sessions, progress
        )
    say.print(
        f"  rdsgate-proxy RSS {result.rss_baseline / idle_memory.MiB:.1f} MiB idle, "
        f"{result.rss_open / idle_memory.MiB:.1f} MiB with {result.sessions} sessions open "
        f"({result.bytes_per_session:,.0f} bytes per session; opened in "
        f"{result.open_seconds:.1f} s)",
        highlight=False,
    )
    return result


def measure(
    args: argparse.Namespace, tools: Tools, say: Console
) -> tuple[Results, dict[str, Any], Profile | None]:
    """Starts everything, runs the points, stops everything; returns what was measured."""
    results = Results(
        list(args.targets),
        list(args.clients),
        audit_queries=args.audit_queries,
        pinning=args.pinning,
    )
    load_before = _load()
    work = Path(tempfile.mkdtemp(prefix="rdsgate-bench-"))
    work.chmod(0o755)  # pgbouncer runs as postgres and must reach its own subdirectory
    say.print(f"[dim]work dir: {work} (removed on exit)[/]", highlight=False)
    profile: Profile | None = None
    try:
        with contextlib.ExitStack() as stack:
            ca = LabCA.create(work, "rdsgate bench CA")
            with say.status("Starting a throwaway PostgreSQL (TLS on, trust auth)"):
                pg = start_postgres(stack, ca)
            say.print(f"[green]✓[/] PostgreSQL on {HOST}:{pg.port}")
            standin = None
            if args.connections:
                # moto takes seconds to load: it does so while pgbench -i runs.
                standin = connect_latency.StandIn(stack, work, ca, pg)
            with say.status(f"pgbench -i -s {args.scale} as user {DB_USER}"):
                pgbench_init(tools, pg, args.scale)
            say.print(f"[green]✓[/] pgbench -i -s {args.scale} (database {DB_NAME})")
            if standin is not None:
                with say.status("Starting the RDS Proxy stand-in and moto"):
                    info = standin.ready()
                say.print(
                    f"[green]✓[/] RDS Proxy stand-in on {info.endpoint} (IAM auth, "
                    f"{info.login_delay * 1000:g} ms log-in delay)"
                )

            targets: dict[str, Target] = {}
            if "direct" in args.targets:
                targets["direct"] = Target("direct", pg.port, None)
            secret = secrets.token_urlsafe(24)
            if "pgbouncer" in args.targets:
                with say.status("Starting pgbouncer (session mode, TLS on both legs)"):
                    targets["pgbouncer"] = start_pgbouncer(stack, tools, work, ca, pg, secret)
                say.print(f"[green]✓[/] pgbouncer on {HOST}:{targets['pgbouncer'].port}")
            if "rdsgate" in args.targets:
                with say.status("Starting rdsgate-proxy (waiting for /readyz)"):
                    targets["rdsgate"] = start_rdsgate(
                        stack,
                        work,
                        ca,
                        pg,
                        secret,
                        audit_queries=args.audit_queries,
                        pinning=args.pinning,
                    )
                say.print(f"[green]✓[/] rdsgate-proxy on {HOST}:{targets['rdsgate'].port}")
            with say.status("Checking a query through each target"):
                for target in targets.values():
                    check_target(tools, target)
            say.print("[green]✓[/] every target answers over TLS on both legs")

            profile = run_points(args, tools, [targets[t] for t in args.targets], results, say)
            if standin is not None:
                say.print(
                    f"[green]✓[/] pgbench done; connection latency, {args.connections} "
                    "connections per target"
                )
                results.connect_latency = run_connect_latency(args, work, ca, standin, secret, say)
            if args.idle_sessions:
                say.print(f"[green]✓[/] memory with {args.idle_sessions} idle sessions")
                results.idle = run_idle_memory(args, tools, work, ca, pg, secret, say)
            machine = machine_info(tools, pg)
            say.print("[green]✓[/] measured; stopping everything")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["load_before"] = load_before
    machine["load_after"] = _load()
    return results, machine, profile


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = Console(stderr=True)
    try:
        tools = find_tools(args.targets, args.profile, idle_sessions=args.idle_sessions > 0)
        if args.perf:
            tools = dataclasses.replace(tools, perf=native_profile.find_perf())
        with rig.signals_interrupt():
            results, machine, profile = measure(args, tools, say)
    except KeyboardInterrupt:
        say.print("[yellow]interrupted[/]: everything the benchmark started was stopped")
        return 130
    except (BenchError, PostgresNotInstalled, PostgresError, native_profile.PerfUnavailable) as exc:
        say.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    if args.json:
        print(json.dumps(results.as_json() | {"machine": machine}))
        if profile is not None:
            print_profile(say, profile)
    else:
        render(Console(), results, machine, args, profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())

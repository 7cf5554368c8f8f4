"""`make bench`: pgbench -S through rdsgate-proxy, pgbouncer and PostgreSQL direct, in one run,
and the throughput of a large `COPY ... TO STDOUT` through each (psql, output discarded).

A proxy's cost only means something next to a peer measured on the same machine at the
same moment, so this starts all three on loopback and reads the result as ratios:

- `direct`: a throwaway PostgreSQL (the lab's) over TLS, `sslmode=require`;
- `pgbouncer`: session mode, TLS on both legs (`client_tls_sslmode=require`,
  `server_tls_sslmode=verify-full`), `auth_type = plain` — the same cleartext password
  inside TLS that rdsgate asks its clients for;
- `rdsgate`: `rdsgate-proxy` with client TLS, an access file granting one Token, default
  audit (every query is a `session.query` line) and IAM tokens signed locally with static
  fake keys, pointed at PostgreSQL directly (`trust` auth ignores the token), so only
  rdsgate's own cost is measured.

Targets run interleaved per point (direct, pgbouncer, rdsgate at c=1, then c=8, ...) so
drift on a shared machine hits all of them alike. Everything started here is stopped and
its files removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rdsgate.lab.kubelet import ProjectedVolume
from rdsgate.lab.postgres import (
    LabCA,
    PostgresError,
    PostgresNotInstalled,
    PostgresServer,
    free_port,
)
from rdsgate.operator import pki
from rdsgate.proxy.access import secret_digest

TARGETS = ("direct", "pgbouncer", "rdsgate")
DEFAULT_CLIENTS = (1, 8, 32)
CONNECT_CLIENTS = 8
#: Each COPY row is 1,000 bytes of text and a newline.
COPY_ROW_BYTES = 1001
PROFILE_CLIENTS = 8
DB_USER = "bench"
DB_NAME = "bench"
#: Loopback for every leg; the lab certificates name both `localhost` and 127.0.0.1.
HOST = "127.0.0.1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
INSTALL_HINT = "`make bench` installs them (scripts/system-deps postgres pgbouncer)"
READY_TIMEOUT = 30.0

TPS_RE = re.compile(
    r"^tps = ([0-9.]+) \((without initial connection time|including reconnection times)\)",
    re.MULTILINE,
)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


class BenchError(RuntimeError):
    """A failure the user can act on; the message says what happened and what to do."""


# -- tools ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    """The programs the benchmark drives, found once up front so a missing one fails fast."""

    pgbench: Path
    psql: Path
    pgbouncer: Path | None
    pyspy: Path | None


def _find_program(name: str, extra_dirs: Sequence[Path] = ()) -> Path | None:
    pg_dirs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)],
        reverse=True,
    )
    for directory in [*extra_dirs, *pg_dirs]:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def find_tools(targets: Sequence[str], profile: bool) -> Tools:
    """Every program this run needs, or one error naming all the missing ones."""
    missing: list[str] = []
    pgbench = _find_program("pgbench")
    psql = _find_program("psql")
    if pgbench is None:
        missing.append("pgbench (Debian package postgresql-contrib)")
    if psql is None:
        missing.append("psql (postgresql-client)")
    pgbouncer = None
    if "pgbouncer" in targets:
        pgbouncer = _find_program("pgbouncer", [Path("/usr/sbin")])
        if pgbouncer is None:
            missing.append("pgbouncer (Debian package pgbouncer)")
    pyspy = None
    if profile:
        pyspy = _find_program("py-spy", [Path(sys.executable).parent])
        if pyspy is None:
            missing.append("py-spy (`.venv/bin/pip install py-spy`, in the bench extras)")
    if missing:
        raise BenchError("missing: " + "; ".join(missing) + f". {INSTALL_HINT}.")
    assert pgbench is not None and psql is not None
    return Tools(pgbench, psql, pgbouncer, pyspy)


def proxy_command() -> list[str]:
    """The installed `rdsgate-proxy` next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "rdsgate-proxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rdsgate.proxy.main"]


def _clean_env() -> dict[str, str]:
    """This environment minus libpq's and AWS's variables, which would redirect clients."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_"))}


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
        env = _clean_env() | {
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


class Service:
    """A background server in its own process group, so Ctrl-C in the terminal reaches
    only this script, which then stops the group itself (runuser and its child alike)."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, str],
        log_file: Path,
        stdout_file: Path | None = None,
    ) -> None:
        """Output goes to `log_file`; with `stdout_file`, stdout goes there instead."""
        self.name = name
        self.log_file = log_file
        #: the process doing the work when `cmd` is a wrapper such as runuser
        self.pid_override: int | None = None
        with contextlib.ExitStack() as files:
            log = files.enter_context(log_file.open("wb"))
            out = files.enter_context(stdout_file.open("wb")) if stdout_file else log
            self.process = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=dict(env),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.pid_override or self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
            )

    def wait_until(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        """Polls `condition` until it holds; fails early if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if condition():
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name} was not {what} within {timeout:g}s:\n{self.log_tail()}"
                )
            # Waiting on the process doubles as the pause between polls and notices an exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        pgid = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.process.wait()
        # runuser's child (pgbouncer) may outlive runuser for a moment: wait for the group.
        deadline = time.monotonic() + 5
        while _group_alive(pgid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                break
            time.sleep(0.02)  # polling the group's exit; there is no handle to wait on


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _write_key_pair(directory: Path, keypair: pki.KeyPair) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(keypair.cert_pem)
    key.write_bytes(keypair.key_pem)
    key.chmod(0o600)
    return cert, key


def _chown_tree(path: Path, user: str) -> None:
    shutil.chown(path, user)
    for child in path.rglob("*"):
        shutil.chown(child, user)


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
    directory = work / "pgbouncer"
    directory.mkdir()
    cert, key = _write_key_pair(directory, pki.issue_server_cert(ca.keypair, ["localhost"], [HOST]))
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.keypair.cert_pem)
    userlist = directory / "userlist.txt"
    userlist.write_text(f'"{DB_USER}" "{pw}"\n')
    userlist.chmod(0o600)
    port = free_port(HOST)
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        f"""\
[databases]
{DB_NAME} = host=localhost port={pg.port} dbname={DB_NAME}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
pidfile = {directory / "pgbouncer.pid"}
auth_type = plain
auth_file = {userlist}
pool_mode = session
max_client_conn = 512
default_pool_size = 128
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
client_tls_sslmode = require
client_tls_cert_file = {cert}
client_tls_key_file = {key}
server_tls_sslmode = verify-full
server_tls_ca_file = {ca_file}
"""
    )
    cmd = [str(tools.pgbouncer), str(ini)]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        _chown_tree(directory, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    service = Service("pgbouncer", cmd, _clean_env(), work / "pgbouncer.log")
    stack.callback(service.stop)
    pidfile = directory / "pgbouncer.pid"
    service.wait_until(
        f"listening on {HOST}:{port}",
        lambda: pidfile.exists() and _port_open(port),
        READY_TIMEOUT,
    )
    service.pid_override = int(pidfile.read_text().split()[0])  # runuser's child
    return Target("pgbouncer", port, pw, service)


def start_rdsgate(
    stack: contextlib.ExitStack,
    work: Path,
    ca: LabCA,
    pg: PostgresServer,
    secret: str,
    *,
    audit_queries: bool = True,
) -> Target:
    """rdsgate-proxy from a config file and an access file in the kubelet's layout, as
    the operator renders them; static fake AWS keys sign IAM tokens locally."""
    directory = work / "rdsgate"
    directory.mkdir()
    cert, key = _write_key_pair(directory, pki.issue_server_cert(ca.keypair, ["localhost"], [HOST]))
    access = ProjectedVolume(directory / "access")
    access.write(
        {
            "access.yaml": yaml.safe_dump(
                {
                    "version": 1,
                    "roles": [
                        {
                            "name": "bench",
                            "allow": {
                                "databases": {},
                                "databaseNames": [DB_NAME],
                                "databaseUsers": [DB_USER],
                            },
                        }
                    ],
                    "grants": [
                        {
                            "identity": "bench/pgbench",
                            "secretSha256": secret_digest(secret),
                            "roles": ["bench"],
                        }
                    ],
                }
            )
        }
    )
    port, metrics_port = free_port(HOST), free_port(HOST)
    config = {
        "database": {"name": DB_NAME, "namespace": "bench", "labels": {"env": "bench"}},
        "listen": {"address": HOST, "port": port},
        "tls": {"certFile": str(cert), "keyFile": str(key)},
        "upstream": {
            "endpoint": f"localhost:{pg.port}",
            "tls": {"mode": "verify-full", "caFile": str(ca.cert_file)},
        },
        "aws": {"region": "eu-west-1"},
        "access": {"file": str(access.path("access.yaml"))},
        # Only shutdown is shortened; everything on the data path keeps its default.
        "limits": {"drainTimeout": "2s"},
        "audit": {"queries": audit_queries},
        "metrics": {"address": HOST, "port": metrics_port},
    }
    config_path = directory / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = _clean_env() | {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    # The audit trail (stdout) goes to a file, as a pod's stdout goes to its log.
    service = Service(
        "rdsgate-proxy",
        [*proxy_command(), "--config", str(config_path)],
        env,
        log_file=work / "rdsgate.log",
        stdout_file=work / "rdsgate-audit.log",
    )
    stack.callback(service.stop)
    url = f"http://{HOST}:{metrics_port}/readyz"
    service.wait_until(f"ready ({url})", lambda: _http_ok(url), READY_TIMEOUT)
    return Target("rdsgate", port, secret, service)


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


@dataclass
class Results:
    targets: list[str]
    clients: list[int]
    tps: dict[str, dict[int, float]] = field(default_factory=dict)
    connect_rate: dict[str, float] = field(default_factory=dict)
    copy_mb_s: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, dict[str, CpuUse]] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)

    def record(self, target: str, key: str, result: RunResult) -> None:
        if result.proxy_cpu is not None:
            self.cpu.setdefault(target, {})[key] = result.proxy_cpu
        self.failed[target] += result.failed

    def as_json(self) -> dict[str, Any]:
        return {
            "tps": {t: {str(c): round(v, 1) for c, v in self.tps[t].items()} for t in self.tps},
            "connect_rate": {t: round(v, 1) for t, v in self.connect_rate.items()},
            "copy_mb_s": {t: round(v, 1) for t, v in self.copy_mb_s.items()},
            # µs of proxy CPU per transaction, per new connection ("connect"), per MB ("copy")
            "proxy_cpu_us": {
                t: {k: round(u.us_per_txn, 1) for k, u in by_key.items()}
                for t, by_key in self.cpu.items()
            },
        }


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

    facts = Table(title="machine", show_header=False)
    facts.add_column("what", style="bold")
    facts.add_column("value")
    for k, v in machine.items():
        facts.add_row(k, str(v))
    console.print(facts)

    if profile is not None:
        print_profile(console, profile)


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
        "PostgreSQL direct, all over TLS on loopback, measured in one interleaved run.",
    )
    p.add_argument("--targets", type=_target_list, default=list(TARGETS), help="default: all")
    p.add_argument("--clients", type=_int_list, default=list(DEFAULT_CLIENTS), help="1,8,32")
    p.add_argument("--duration", type=int, help="seconds per point (default 15, --quick 3)")
    p.add_argument("--quick", action="store_true", help="short runs (3 s per point)")
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
        "--profile",
        action="store_true",
        help=f"py-spy rdsgate-proxy during extra c={PROFILE_CLIENTS} runs (into bench/results/)",
    )
    args = p.parse_args(argv)
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
    if args.profile and "rdsgate" not in args.targets:
        p.error("--profile profiles rdsgate: include it in --targets")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the same cleanup runs; SIGINT is set too,
    as a shell starts background jobs with it ignored."""
    handlers = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: _raise_interrupt,
        signal.SIGHUP: _raise_interrupt,
    }
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
    runs = len(order) * (len(args.clients) + 3) + (2 if args.profile else 0)
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
        if not args.profile:
            return None
        rdsgate = next(t for t in order if t.name == "rdsgate")
        profile = profile_rdsgate(tools, rdsgate, args.duration, step)
        progress.advance(task, 2)
        return profile


def measure(
    args: argparse.Namespace, tools: Tools, say: Console
) -> tuple[Results, dict[str, Any], Profile | None]:
    """Starts everything, runs the points, stops everything; returns what was measured."""
    results = Results(list(args.targets), list(args.clients))
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
            with say.status(f"pgbench -i -s {args.scale} as user {DB_USER}"):
                pgbench_init(tools, pg, args.scale)
            say.print(f"[green]✓[/] pgbench -i -s {args.scale} (database {DB_NAME})")

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
                        stack, work, ca, pg, secret, audit_queries=args.audit_queries
                    )
                say.print(f"[green]✓[/] rdsgate-proxy on {HOST}:{targets['rdsgate'].port}")
            with say.status("Checking a query through each target"):
                for target in targets.values():
                    check_target(tools, target)
            say.print("[green]✓[/] every target answers over TLS on both legs")

            profile = run_points(args, tools, [targets[t] for t in args.targets], results, say)
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
        tools = find_tools(args.targets, args.profile)
        with _signals_interrupt():
            results, machine, profile = measure(args, tools, say)
    except KeyboardInterrupt:
        say.print("[yellow]interrupted[/]: everything the benchmark started was stopped")
        return 130
    except (BenchError, PostgresNotInstalled, PostgresError) as exc:
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

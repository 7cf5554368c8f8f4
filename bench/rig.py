"""The servers a benchmark starts, and how it starts, watches and stops them.

Shared by `bench/run.py` (pgbench through each target) and the measurements it drives
(`bench/connect.py`, `bench/idle.py`): every server runs in its own process group so that
Ctrl-C in the terminal reaches only the benchmark, which stops each group itself; every
file lives under the run's work directory, which the benchmark removes on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import yaml

from rdsgate.lab.kubelet import ProjectedVolume
from rdsgate.lab.postgres import LabCA, PostgresServer, free_port
from rdsgate.operator import pki
from rdsgate.proxy.access import secret_digest

DB_USER = "bench"
DB_NAME = "bench"
#: Loopback for every leg; the lab certificates name both `localhost` and 127.0.0.1.
HOST = "127.0.0.1"
INSTALL_HINT = "`make bench` installs them (scripts/system-deps postgres pgbouncer)"
READY_TIMEOUT = 30.0

#: Static fake keys: rdsgate signs IAM tokens locally with them (no AWS call), for
#: upstreams that ignore the token (PostgreSQL or pgbouncer with `trust`).
STATIC_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class BenchError(RuntimeError):
    """A failure the user can act on; the message says what happened and what to do."""


# -- programs ---------------------------------------------------------------------------


def find_program(name: str, extra_dirs: Sequence[Path] = ()) -> Path | None:
    """`name` in `extra_dirs`, the newest PostgreSQL's bin directory, or on PATH."""
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


def find_pgbouncer() -> Path | None:
    return find_program("pgbouncer", [Path("/usr/sbin")])


def proxy_command() -> list[str]:
    """The installed `rdsgate-proxy` next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "rdsgate-proxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rdsgate.proxy.main"]


def clean_env() -> dict[str, str]:
    """This environment minus libpq's and AWS's variables, which would redirect clients."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_"))}


def raise_open_files_limit(needed: int) -> int:
    """Raises this process's RLIMIT_NOFILE soft limit to at least `needed` (and the hard
    limit too when allowed, as root); children started afterwards inherit it. Returns the
    new soft limit, or raises BenchError saying how to allow more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
        except (OSError, ValueError) as exc:
            raise BenchError(
                f"{needed} open files are needed but the hard limit is {hard} "
                f"(`ulimit -Hn`); raise it (e.g. `ulimit -n {needed}` as root) or pass fewer "
                "--idle-sessions"
            ) from exc
        return needed
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


# -- processes --------------------------------------------------------------------------


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


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5) -> str | None:
    """The body of a 200 answer, else None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.read().decode() if resp.status == 200 else None
    except (OSError, urllib.error.URLError):
        return None


def http_ok(url: str) -> bool:
    return http_get(url, timeout=2) is not None


def rss_bytes(pid: int) -> int:
    """The resident set size of a process (VmRSS in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read the memory of process {pid}: {exc}") from exc
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise BenchError(f"/proc/{pid}/status has no VmRSS line")


def write_key_pair(directory: Path, keypair: pki.KeyPair) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(keypair.cert_pem)
    key.write_bytes(keypair.key_pem)
    key.chmod(0o600)
    return cert, key


def chown_tree(path: Path, user: str) -> None:
    shutil.chown(path, user)
    for child in path.rglob("*"):
        shutil.chown(child, user)


# -- pgbouncer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pgbouncer:
    service: Service
    port: int


def start_pgbouncer(
    stack: contextlib.ExitStack,
    program: Path,
    work: Path,
    ca: LabCA,
    pg: PostgresServer,
    password: str,
    *,
    name: str = "pgbouncer",
    pool_mode: Literal["session", "transaction"] = "session",
    auth_type: Literal["plain", "trust"] = "plain",
    max_client_conn: int = 512,
    pool_size: int = 128,
) -> Pgbouncer:
    """pgbouncer with TLS on both legs (clients: `require`; PostgreSQL: `verify-full`),
    in front of database DB_NAME as user DB_USER (`password` in its auth file).

    As root it runs as `postgres` through runuser, whose PAM session resets the soft
    open-files limit (to 1024 here): a shell raises it again to what `max_client_conn`
    needs before it execs pgbouncer."""
    directory = work / name
    directory.mkdir()
    cert, key = write_key_pair(directory, pki.issue_server_cert(ca.keypair, ["localhost"], [HOST]))
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.keypair.cert_pem)
    userlist = directory / "userlist.txt"
    userlist.write_text(f'"{DB_USER}" "{password}"\n')
    userlist.chmod(0o600)
    port = free_port(HOST)
    pidfile = directory / "pgbouncer.pid"
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        f"""\
[databases]
{DB_NAME} = host=localhost port={pg.port} dbname={DB_NAME}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
pidfile = {pidfile}
auth_type = {auth_type}
auth_file = {userlist}
pool_mode = {pool_mode}
max_client_conn = {max_client_conn}
default_pool_size = {pool_size}
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
    cmd = [str(program), str(ini)]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        chown_tree(directory, "postgres")
        open_files = str(max(1024, max_client_conn + pool_size + 100))
        raise_limit = 'ulimit -S -n "$0" && exec "$@"'
        cmd = ["runuser", "-u", "postgres", "--", "sh", "-c", raise_limit, open_files, *cmd]
    service = Service(name, cmd, clean_env(), work / f"{name}.log")
    stack.callback(service.stop)
    service.wait_until(
        f"listening on {HOST}:{port}",
        lambda: pidfile.exists() and port_open(port),
        READY_TIMEOUT,
    )
    service.pid_override = int(pidfile.read_text().split()[0])  # runuser's child
    return Pgbouncer(service, port)


# -- rdsgate-proxy ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rdsgate:
    service: Service
    port: int
    metrics_port: int
    #: the access file's volume: a benchmark publishes new versions as the kubelet would
    access: ProjectedVolume

    def metrics(self) -> str:
        """The Prometheus text of /metrics (empty when it does not answer)."""
        return http_get(f"http://{HOST}:{self.metrics_port}/metrics") or ""

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled sample, or None when /metrics lacks it."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


def access_file(secret: str) -> dict[str, Any]:
    """One Token (`bench/pgbench`, password `secret`) allowed DB_USER on DB_NAME."""
    return {
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


def start_rdsgate(
    stack: contextlib.ExitStack,
    work: Path,
    ca: LabCA,
    secret: str,
    *,
    upstream: str,
    aws: Mapping[str, Any],
    aws_env: Mapping[str, str],
    name: str = "rdsgate",
    audit_queries: bool = True,
    pinning: bool = True,
    limits: Mapping[str, Any] | None = None,
    access_doc: Mapping[str, Any] | None = None,
) -> Rdsgate:
    """rdsgate-proxy from a config file and an access file in the kubelet's layout, as
    the operator renders them, in front of `upstream` (`host:port`, TLS verified with the
    lab CA); `aws_env` is its AWS identity, `aws` the config's `aws` section; `access_doc`
    replaces the access file of `access_file(secret)`."""
    directory = work / name
    directory.mkdir()
    cert, key = write_key_pair(directory, pki.issue_server_cert(ca.keypair, ["localhost"], [HOST]))
    access = ProjectedVolume(directory / "access")
    doc = dict(access_doc) if access_doc is not None else access_file(secret)
    access.write({"access.yaml": yaml.safe_dump(doc, sort_keys=False)})
    port, metrics_port = free_port(HOST), free_port(HOST)
    config = {
        "database": {"name": DB_NAME, "namespace": "bench", "labels": {"env": "bench"}},
        "listen": {"address": HOST, "port": port},
        "tls": {"certFile": str(cert), "keyFile": str(key)},
        "upstream": {
            "endpoint": upstream,
            "tls": {"mode": "verify-full", "caFile": str(ca.cert_file)},
        },
        "aws": dict(aws),
        "access": {"file": str(access.path("access.yaml"))},
        # Only shutdown is shortened; everything on the data path keeps its default.
        "limits": {"drainTimeout": "2s", **(limits or {})},
        "audit": {"queries": audit_queries, "pinning": pinning},
        "metrics": {"address": HOST, "port": metrics_port},
    }
    config_path = directory / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    # The audit trail (stdout) goes to a file, as a pod's stdout goes to its log.
    service = Service(
        name,
        [*proxy_command(), "--config", str(config_path)],
        clean_env() | dict(aws_env),
        log_file=work / f"{name}.log",
        stdout_file=work / f"{name}-audit.log",
    )
    stack.callback(service.stop)
    url = f"http://{HOST}:{metrics_port}/readyz"
    service.wait_until(f"ready ({url})", lambda: http_ok(url), READY_TIMEOUT)
    return Rdsgate(service, port, metrics_port, access)


# -- signals ----------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
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

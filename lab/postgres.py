"""A throwaway PostgreSQL server with TLS on, for the tests, the demo and the benchmark.

Each `PostgresServer` runs `initdb` in a temporary directory and `pg_ctl` on a free
loopback port, with its unix socket inside that directory, and removes everything on
`stop()`. PostgreSQL refuses to run as root, so as root the data directory is handed to
the `postgres` system user and the server programs run through `runuser -u postgres --`.
Settings favour start-up speed over durability (`fsync=off`, `--no-sync`): nothing here
outlives the process.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from rdsgate.operator import pki

from .lifecycle import Service

HostAuth = Literal["scram-sha-256", "trust", "md5", "password"]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in "
    "/usr/lib/postgresql/*/bin or on PATH. Install them with "
    "`sudo apt-get install postgresql postgresql-contrib` (`make test` and `make demo` "
    "do it for you), or pass bin_dir= pointing at them."
)

_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_START_ATTEMPTS = 4


@dataclass(frozen=True)
class LabCA:
    """The CA that signs every lab server certificate, and its certificate as a file."""

    keypair: pki.KeyPair
    cert_file: Path

    @classmethod
    def create(cls, directory: Path, common_name: str = "rdsgate lab CA") -> LabCA:
        keypair = pki.make_ca(common_name)
        cert_file = directory / "ca.crt"
        cert_file.write_bytes(keypair.cert_pem)
        return cls(keypair, cert_file)


class PostgresError(RuntimeError):
    """A server program failed; the message carries its output."""


class PostgresNotInstalled(PostgresError):
    """The server binaries are missing: the message says how to get them."""

    def __init__(self, message: str = INSTALL_HINT) -> None:
        super().__init__(message)


def find_bin_dir(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory of the newest installed server programs (Debian layout first, then PATH)."""
    if bin_dir is not None:
        path = Path(bin_dir)
        if all((path / p).is_file() for p in _SERVER_PROGRAMS):
            return path
        raise PostgresNotInstalled(
            f"{path} does not hold initdb, pg_ctl and postgres. {INSTALL_HINT}"
        )
    candidates = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if all((path / p).is_file() for p in _SERVER_PROGRAMS):
            version = tuple(int(n) for n in re.findall(r"\d+", path.parent.name))
            candidates.append((version, path))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb:
        path = Path(initdb).resolve().parent
        if all((path / p).is_file() for p in _SERVER_PROGRAMS):
            return path
    raise PostgresNotInstalled()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller retries if it loses the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conninfo_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _clean_env() -> dict[str, str]:
    """The environment minus libpq's PG* variables, which would redirect psql elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class PostgresServer(Service):
    """A real PostgreSQL on 127.0.0.1 with TLS, a lab CA and throwaway storage.

    `host_auth` is the method of the `hostssl` (or, with `require_ssl=False`, `host`) line
    for 127.0.0.1; `trust` serves the benchmark, where rdsgate reaches PostgreSQL directly
    and sends an IAM token as the password. Unix-socket connections are `trust`, which is
    how `execute()` administers the server.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        ca: pki.KeyPair | None = None,
        host_auth: HostAuth = "scram-sha-256",
        require_ssl: bool = True,
        max_connections: int = 400,
        settings: Mapping[str, str] | None = None,
        superuser_password: str | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.ca = ca or pki.make_ca("rdsgate lab CA")
        self.host_auth: HostAuth = host_auth
        self.require_ssl = require_ssl
        self.max_connections = max_connections
        self.extra_settings = dict(settings or {})
        self.superuser_password = superuser_password or os.urandom(12).hex()
        self._bin_dir_arg = bin_dir
        self.bin_dir: Path | None = None
        self.port = 0
        self.passwords: dict[str, str] = {}
        self._root: Path | None = None
        self._running = False
        self._as_root = os.geteuid() == 0
        self._finalizer: weakref.finalize[..., PostgresServer] | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        if self._running:
            return self
        self.bin_dir = find_bin_dir(self._bin_dir_arg)
        if self._as_root:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresNotInstalled(
                    "running as root needs the `postgres` system user to own the server. "
                    + INSTALL_HINT
                ) from exc
        self._root = Path(tempfile.mkdtemp(prefix="rdsgate-pg-"))
        self._root.chmod(0o755)
        try:
            self._init()
            self._start_on_free_port()
        except BaseException:
            self._cleanup_dir()
            raise
        self._running = True
        self._finalizer = weakref.finalize(
            self, _stop_quietly, self._pg_ctl_cmd(), self.pg_dir, self._root
        )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are closed) and remove its files."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._running:
            self._running = False
            try:
                self._run([*self._pg_ctl_cmd(), "-m", "fast", "-w", "-t", "30", "stop"])
            except PostgresError:
                self._run([*self._pg_ctl_cmd(), "-m", "immediate", "-w", "stop"], check=False)
        self._cleanup_dir()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as when the instance dies: no
        process says goodbye to its clients. `restart()` brings it back on the same port."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGSTOP)
        pids = [postmaster, *_children(postmaster)]
        # Stopped first, so no backend notices another's death and says goodbye.
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise PostgresError(f"PostgreSQL processes {pids} outlived SIGKILL")
            time.sleep(0.01)
        # A dead postmaster may linger as a zombie until init reaps it, and a new one would
        # take its lock files for a running server's.
        for lock in (
            self.data_dir / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{self.port}.lock",
        ):
            lock.unlink(missing_ok=True)

    def restart(self) -> None:
        """Start again on the same port after `kill()`: crash recovery replays the WAL."""
        self._run([*self._pg_ctl_cmd(), "-w", "-t", "60", "start"])

    @property
    def running(self) -> bool:
        return self._running

    # -- paths ----------------------------------------------------------------------

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the server is not started")
        return self._root

    @property
    def pg_dir(self) -> Path:
        """Owned by the server's user: data directory, socket, server key, log."""
        return self.root / "pg"

    @property
    def data_dir(self) -> Path:
        return self.pg_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.pg_dir

    @property
    def log_file(self) -> Path:
        return self.pg_dir / "postgres.log"

    @property
    def ca_file(self) -> Path:
        """The lab CA certificate that signs the server certificate (world-readable)."""
        return self.root / "ca.crt"

    # -- client helpers -------------------------------------------------------------

    def dsn(
        self,
        user: str,
        password: str | None = None,
        dbname: str = "postgres",
        sslmode: str = "verify-full",
        **params: str,
    ) -> str:
        """A libpq key/value connection string; the password defaults to the role's own."""
        if password is None:
            password = self.passwords.get(user)
        values = {"host": self.host, "port": str(self.port), "user": user, "dbname": dbname}
        if password is not None:
            values["password"] = password
        values["sslmode"] = sslmode
        if sslmode in ("verify-ca", "verify-full"):
            values["sslrootcert"] = str(self.ca_file)
        values.update(params)
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in values.items())

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies this server the way `sslmode=verify-full` does."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def execute(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as `postgres` over the unix socket with psql; return its unaligned output."""
        psql = self._psql()
        cmd = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        cmd += ["-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", dbname]
        cmd += ["-f", "-"]
        proc = subprocess.run(
            cmd,
            input=sql,
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd=self.root,
            timeout=120,
            check=False,
        )
        if proc.returncode:
            raise PostgresError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()

    def create_role(
        self, name: str, password: str | None = None, *, superuser: bool = False, login: bool = True
    ) -> str:
        """Create a role with a SCRAM password (random when not given) and return the password."""
        password = password if password is not None else os.urandom(12).hex()
        options = ["LOGIN" if login else "NOLOGIN", "SUPERUSER" if superuser else "NOSUPERUSER"]
        self.execute(
            f"SET password_encryption = 'scram-sha-256';\n"
            f"CREATE ROLE {quote_ident(name)} {' '.join(options)} "
            f"PASSWORD {quote_literal(password)};"
        )
        self.passwords[name] = password
        return password

    def create_database(self, name: str, owner: str | None = None) -> None:
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if owner:
            sql += f" OWNER {quote_ident(owner)}"
        self.execute(sql + ";")

    # -- internals ------------------------------------------------------------------

    def _psql(self) -> str:
        assert self.bin_dir is not None
        local = self.bin_dir / "psql"
        if local.is_file():
            return str(local)
        found = shutil.which("psql")
        if not found:
            raise PostgresNotInstalled(
                "psql was not found. Install it with `sudo apt-get install postgresql-client`."
            )
        return found

    def _server_cmd(self, program: str, *args: str) -> list[str]:
        assert self.bin_dir is not None
        cmd = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_root else cmd

    def _pg_ctl_cmd(self) -> list[str]:
        return self._server_cmd("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file))

    def _run(self, cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd=self.pg_dir,
            timeout=120,
            check=False,
        )
        if check and proc.returncode:
            program = next((Path(c).name for c in cmd if c.startswith("/")), cmd[0])
            raise PostgresError(
                f"{program} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def _init(self) -> None:
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.ca_file.chmod(0o644)
        pg_dir = self.pg_dir
        pg_dir.mkdir(mode=0o700)
        server = pki.issue_server_cert(self.ca, ["localhost"], ["127.0.0.1"], days=30)
        (pg_dir / "server.crt").write_bytes(server.cert_pem)
        key = pg_dir / "server.key"
        key.write_bytes(server.key_pem)
        key.chmod(0o600)
        pwfile = pg_dir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        if self._as_root:
            _chown_tree(pg_dir, "postgres")
        self._run(
            self._server_cmd(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth-local=trust",
                f"--auth-host={self.host_auth}",
                f"--pwfile={pwfile}",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            )
        )
        pwfile.unlink()
        hba = self.data_dir / "pg_hba.conf"
        kind = "hostssl" if self.require_ssl else "host"
        hba.write_text(
            "# written by rdsgate.lab.postgres\n"
            "local all all trust\n"
            f"{kind} all all 127.0.0.1/32 {self.host_auth}\n"
        )

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "ssl": "on",
            "ssl_cert_file": str(self.pg_dir / "server.crt"),
            "ssl_key_file": str(self.pg_dir / "server.key"),
            "ssl_min_protocol_version": "TLSv1.2",
            "password_encryption": "scram-sha-256",
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        settings.update(self.extra_settings)
        lines = [f"{k} = {quote_literal(v)}" for k, v in settings.items()]
        (self.data_dir / "rdsgate-lab.conf").write_text("\n".join(lines) + "\n")
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        include = "include 'rdsgate-lab.conf'\n"
        if include not in text:
            conf.write_text(text + "\n" + include)
        if self._as_root:
            _chown_tree(self.data_dir, "postgres")

    def _start_on_free_port(self) -> None:
        for attempt in range(_START_ATTEMPTS):
            self.port = free_port(self.host)
            self._write_settings()
            proc = self._run([*self._pg_ctl_cmd(), "-w", "-t", "60", "start"], check=False)
            if proc.returncode == 0:
                return
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            port_taken = "could not bind" in log or "already in use" in log
            if port_taken and attempt + 1 < _START_ATTEMPTS:
                self.log_file.write_text("")
                continue
            raise PostgresError(
                f"PostgreSQL did not start ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}\n--- server log ---\n{log[-4000:]}"
            )

    def _cleanup_dir(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


def _chown_tree(path: Path, user: str) -> None:
    shutil.chown(path, user)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            shutil.chown(os.path.join(dirpath, name), user)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a postmaster's backends and workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop_quietly(pg_ctl: list[str], cwd: Path, root: Path) -> None:
    """Last resort at interpreter exit for a server nobody stopped."""
    subprocess.run(
        [*pg_ctl, "-m", "immediate", "-w", "stop"],
        capture_output=True,
        cwd=cwd,
        env=_clean_env(),
        timeout=30,
        check=False,
    )
    shutil.rmtree(root, ignore_errors=True)

"""Connection latency through rdsgate against connecting to RDS Proxy directly (issue 13,
target 4): p50 from TCP connect to the first query's result through rdsgate at most 1.0x
that of an IAM log-in straight to the RDS Proxy, p99 at most 1.5x.

RDS Proxy is the lab's stand-in (`rdsgate.lab.rdsproxy`), which checks IAM auth tokens
exactly as RDS Proxy does, with `login_delay` = 20 ms standing in for what an IAM log-in
costs on AWS (a round trip, IAM authentication, the database log-in); it runs with moto in
a child process (`bench/standin.py`), so the client being timed has this interpreter to
itself. Two targets:

- `rds-proxy-direct`: the client signs an RDS IAM auth token with boto3
  (`generate_db_auth_token`, as the IAM user the stand-in's policy allows) and logs in
  with it as the password, `sslmode=verify-full` against the lab CA. Signing happens before
  the clock starts, as it happens before a driver opens its socket.
- `rdsgate`: an `rdsgate-proxy` whose upstream is the stand-in and whose AWS identity is
  that same IAM user; the client's password is a Token secret from the access file. The
  proxy's config keeps every default (with warm upstream connections, if the proxy has
  them, at their defaults), so this measures what a deployment gets.

Each sample is one new libpq connection (psycopg 3, `sslmode=verify-full`, no GSSAPI):
from starting the connect to having the result of `select 1`, then close. Samples alternate
between the targets (the order flips every round) after a few uncounted warm-up connections
each, so drift on a shared machine hits both alike. When rdsgate's /metrics has
`rdsgate_upstream_warm_total`, its counts by outcome during the measured connections are
reported too.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psycopg

from bench.rig import (
    DB_NAME,
    DB_USER,
    HOST,
    BenchError,
    Rdsgate,
    Service,
    clean_env,
    start_rdsgate,
)
from rdsgate.lab.postgres import LabCA, PostgresServer

RDSGATE = "rdsgate"
DIRECT = "rds-proxy-direct"
TARGETS = (RDSGATE, DIRECT)
LOGIN_DELAY = 0.020
WARM_UP = 10
#: moto and its EC2 (for the RDS Proxy's VPC) take a few seconds to load.
STANDIN_READY_TIMEOUT = 90.0
_WARM_SAMPLE = re.compile(r"^rdsgate_upstream_warm_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class StandInInfo:
    """What the stand-in child wrote to its ready file."""

    host: str
    port: int
    region: str
    account_id: str
    resource_id: str
    login_delay: float
    credentials: dict[str, str | None]
    env: dict[str, str]

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class StandIn:
    """The stand-in child: started early (moto takes seconds to load), waited for later."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        work: Path,
        ca: LabCA,
        pg: PostgresServer,
        *,
        login_delay: float = LOGIN_DELAY,
    ) -> None:
        directory = work / "standin"
        directory.mkdir()
        ca_key = directory / "ca.key"
        ca_key.write_bytes(ca.keypair.key_pem)
        ca_key.chmod(0o600)
        self.ready_file = directory / "ready.json"
        script = Path(__file__).resolve().parent / "standin.py"
        cmd = [sys.executable, str(script), "--ready-file", str(self.ready_file)]
        cmd += ["--pg-port", str(pg.port), "--pg-ca-file", str(pg.ca_file)]
        cmd += ["--ca-cert", str(ca.cert_file), "--ca-key", str(ca_key)]
        cmd += ["--db-user", DB_USER, "--db-password", pg.passwords.get(DB_USER, "unused")]
        cmd += ["--login-delay", repr(login_delay)]
        # Its temporary files (the stand-in's certificates) land in the work directory too.
        env = clean_env() | {"TMPDIR": str(directory)}
        self.service = Service("RDS Proxy stand-in", cmd, env, work / "standin.log")
        stack.callback(self.service.stop)
        self._info: StandInInfo | None = None

    def ready(self) -> StandInInfo:
        if self._info is None:
            self.service.wait_until(
                "listening", self.ready_file.exists, timeout=STANDIN_READY_TIMEOUT
            )
            self._info = StandInInfo(
                **{
                    k: v
                    for k, v in json.loads(self.ready_file.read_text()).items()
                    if k in StandInInfo.__dataclass_fields__
                }
            )
        return self._info


@dataclass(frozen=True)
class Latency:
    """Milliseconds from starting a connect to the first query's result."""

    samples: tuple[float, ...]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=100, method="inclusive")[98]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    def as_json(self) -> dict[str, Any]:
        return {
            "p50": round(self.p50, 2),
            "p99": round(self.p99, 2),
            "mean": round(self.mean, 2),
            "n": len(self.samples),
        }


@dataclass
class ConnectLatency:
    login_delay_ms: float
    by_target: dict[str, Latency] = field(default_factory=dict)
    #: rdsgate_upstream_warm_total during the measured connections, by outcome (None: absent)
    warm: dict[str, int] | None = None

    def ratio(self, stat: str) -> float | None:
        mine, theirs = self.by_target.get(RDSGATE), self.by_target.get(DIRECT)
        if mine is None or theirs is None:
            return None
        bottom = float(getattr(theirs, stat))
        return float(getattr(mine, stat)) / bottom if bottom else None

    def as_json(self) -> dict[str, Any]:
        out = {t: lat.as_json() for t, lat in self.by_target.items()}
        if self.warm is not None and RDSGATE in out:
            out[RDSGATE]["warm"] = dict(self.warm)
        return out


def warm_counts(metrics_text: str) -> dict[str, int] | None:
    """`rdsgate_upstream_warm_total` samples summed by the value of their outcome label
    (`hit`, `miss`, …); None when the proxy does not export the metric."""
    counts: dict[str, int] | None = None
    for line in metrics_text.splitlines():
        m = _WARM_SAMPLE.match(line)
        if m is None:
            continue
        # Both outcomes are always reported once the metric exists, a count of 0 included.
        counts = counts if counts is not None else {"hit": 0, "miss": 0}
        labels = dict(_LABEL.findall(m.group("labels")))
        outcome = next(
            (v for v in labels.values() if v in ("hit", "miss")),
            ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "total",
        )
        counts[outcome] = counts.get(outcome, 0) + int(float(m.group("value")))
    return counts


def _conninfo(port: int, ca_file: Path) -> dict[str, Any]:
    """The same libpq settings for both targets; only the port and password differ."""
    return {
        "host": "localhost",
        "hostaddr": HOST,
        "port": port,
        "user": DB_USER,
        "dbname": DB_NAME,
        "sslmode": "verify-full",
        "sslrootcert": str(ca_file),
        "gssencmode": "disable",
        "connect_timeout": 10,
        "application_name": "rdsgate-bench",
        "autocommit": True,
    }


def one_connection(params: Mapping[str, Any], password: str) -> float:
    """Milliseconds from starting the connect to the result of `select 1`; then closes."""
    started = time.perf_counter()
    conn = psycopg.connect(**params, password=password)
    try:
        row = conn.execute("select 1").fetchone()
        took = time.perf_counter() - started
    finally:
        conn.close()
    if row != (1,):
        raise BenchError(f"select 1 answered {row!r}")
    return took * 1000


def measure(
    stack: contextlib.ExitStack,
    work: Path,
    ca: LabCA,
    standin: StandIn,
    secret: str,
    connections: int,
    progress: Callable[[str, int], None],
) -> ConnectLatency:
    """Starts rdsgate in front of the stand-in, then `connections` sequential connections
    per target, alternating; `progress(text, done)` is told after each."""
    info = standin.ready()
    proxy: Rdsgate = start_rdsgate(
        stack,
        work,
        ca,
        secret,
        name="rdsgate-connect",
        upstream=info.endpoint,
        aws={
            "region": info.region,
            "accountId": info.account_id,
            "proxyResourceId": info.resource_id,
        },
        aws_env=info.env,
    )
    creds = info.credentials
    rds = boto3.Session().client(
        "rds",
        region_name=info.region,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        aws_session_token=creds.get("session_token"),
    )
    stack.callback(rds.close)

    def token() -> str:
        signed: str = rds.generate_db_auth_token(
            DBHostname=info.host, Port=info.port, DBUsername=DB_USER, Region=info.region
        )
        return signed

    params = {
        RDSGATE: _conninfo(proxy.port, ca.cert_file),
        DIRECT: _conninfo(info.port, ca.cert_file),
    }
    passwords: dict[str, Callable[[], str]] = {RDSGATE: lambda: secret, DIRECT: token}

    def sample(target: str) -> float:
        password = passwords[target]()  # before the clock: a driver signs before connecting
        try:
            return one_connection(params[target], password)
        except psycopg.Error as exc:
            detail = f"--- {proxy.service.name} log ---\n{proxy.service.log_tail()}"
            detail += f"\n--- stand-in log ---\n{standin.service.log_tail()}"
            raise BenchError(f"a connection to {target} failed: {exc}\n{detail}") from exc

    for i in range(WARM_UP):
        for target in TARGETS:
            sample(target)
        progress(f"connect latency: warm-up {i + 1}/{WARM_UP} (not counted)", 0)
    warm_before = warm_counts(proxy.metrics())
    samples: dict[str, list[float]] = {t: [] for t in TARGETS}
    for i in range(connections):
        order = TARGETS if i % 2 == 0 else TARGETS[::-1]
        for target in order:
            samples[target].append(sample(target))
        progress(f"connect latency: {i + 1}/{connections} per target", 2)
    warm_after = warm_counts(proxy.metrics())
    result = ConnectLatency(info.login_delay * 1000)
    result.by_target = {t: Latency(tuple(s)) for t, s in samples.items()}
    if warm_after is not None:
        result.warm = {k: v - (warm_before or {}).get(k, 0) for k, v in sorted(warm_after.items())}
    return result
